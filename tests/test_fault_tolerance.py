"""Fault tolerance and multi-node placement on a simulated two-node cluster.

One subprocess (``reprlab bench faults``, tiny settings) starts a ``ray.cluster_utils.Cluster``
(head without CPUs, two 1-CPU worker nodes: 2 training workers must use one node each; the run
directory is a local path both simulated nodes see, standing in for NFS) and trains three runs
with the same seed: uninterrupted; killed (SIGKILL of the worker on the second node once Ray
Train has registered the checkpoint of epoch 1, ``scaling.max_failures=1``); and the same kill
with ``scaling.max_failures=0``. A Cluster needs its own Ray instance, hence the subprocess (the
session's ``ray_session`` lives in this process). The tests read its ``faults.json`` and output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

EPOCHS, KILL_AFTER = 3, 1
TIMEOUT_S = 300
# The checkpoint holds every generator and batches are a function of (seed, epoch), so a run
# resumed at an epoch boundary repeats the uninterrupted run's arithmetic: on CPU with one thread
# per worker the numbers agree exactly (measured difference 0.0, here and with the glyphs preset
# in `reprlab bench faults`); 1e-6, as in the in-process resume test, only absorbs float32
# round-off should an operation's order ever differ. A real resume bug (a wrong epoch, a lost
# optimizer or generator state) moves the loss by orders of magnitude more.
TOLERANCE = 1e-6
LINE = re.compile(r"\(RayTrainWorker pid=(\d+)[^)]*\)\S*\s+\[reprlab\] (.*)")


@pytest.fixture(scope="module")
def faults(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "bench"
    # 16 iterations per epoch (the tiny runs have 4): the kill, sent once Ray has registered the
    # checkpoint of epoch 1, must land while later epochs are still training.
    sets = [x for s in tiny + ["data.iterations_per_epoch=16"] for x in ("--set", s)]
    cmd = [sys.executable, "-m", "reprlab.cli", "bench", "faults", *sets, "--epochs", str(EPOCHS),
           "--kill-after-epoch", str(KILL_AFTER), "--control", "--no-warmup", "--output", str(out)]
    # A shorter health-check interval than Ray Train's 2 s keeps the test short: the controller
    # notices the dead worker sooner and takes each epoch's report sooner.
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        printed, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench shuts its cluster down
        try:
            printed, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the bench and its Ray processes share the group
            printed, _ = proc.communicate()
        pytest.fail(f"the fault scenario did not finish in {TIMEOUT_S} s:\n{printed[-4000:]}")
    assert proc.returncode == 0, printed[-4000:]
    result = json.loads((out / "faults.json").read_text())
    lines = defaultdict(list)  # pid -> the [reprlab] lines that worker printed
    for m in LINE.finditer(printed):
        lines[int(m.group(1))].append(m.group(2))
    return result, lines


def _printed(lines, attempt) -> list[str]:
    return [line for w in attempt["workers"] for line in lines[w["pid"]]]


def _epoch_lines(printed: list[str]) -> list[int]:
    return [int(m.group(1)) for line in printed if (m := re.match(rf"epoch (\d+)/{EPOCHS} \|", line))]


def test_killed_worker_restarts_from_the_last_checkpoint_and_completes(faults):
    result, lines = faults
    killed = result["runs"]["killed"]
    assert killed["error"] is None, killed["error"]
    kill = killed["kill"]
    assert kill and kill["pids"] and kill["registered_epoch"] >= KILL_AFTER, kill
    assert len(killed["attempts"]) == 2, "Ray Train started a second worker group after the kill"
    first, restart = killed["attempts"]
    assert set(kill["pids"]) <= {w["pid"] for w in first["workers"]}

    epochs = pq.read_table(f"{killed['run_dir']}/metrics.parquet").column("epoch").to_pylist()
    assert epochs == list(range(EPOCHS + 1)), "each epoch once"
    resumed = result["recovery"]["resumed_from"]
    assert kill["registered_epoch"] <= resumed < EPOCHS, result["recovery"]
    # the table after the restart is the checkpoint's history plus what the restart trained: the
    # epochs up to the checkpoint started before the kill, every later one after it
    for row in killed["rows"]:
        assert (row["time/started_at"] < kill["t"]) == (row["epoch"] <= resumed), row["epoch"]

    before, after = _printed(lines, first), _printed(lines, restart)
    assert after.count(f"resumed from the checkpoint of epoch {resumed}") == 1
    assert not any("resumed from" in line for line in before)
    assert _epoch_lines(after) == list(range(resumed + 1, EPOCHS + 1)), "no epoch up to the checkpoint again"


def test_resumed_run_matches_the_uninterrupted_one(faults):
    result, _ = faults
    straight, killed = result["runs"]["uninterrupted"]["rows"], result["runs"]["killed"]["rows"]
    assert len(straight) == len(killed) == EPOCHS + 1
    for s, k in zip(straight, killed):
        for key in s:
            if key.startswith(("train/", "val/", "test/")):
                assert k[key] == pytest.approx(s[key], abs=TOLERANCE), (s["epoch"], key)


def test_without_retries_the_same_kill_ends_the_run(faults):
    result, lines = faults
    control = result["runs"]["control"]
    assert control["kill"] and control["kill"]["pids"]
    assert control["error"] and control["error"].startswith("WorkerGroupError"), control["error"]
    assert len(control["attempts"]) == 1, "no second worker group"
    assert not any("resumed from" in line for a in control["attempts"] for line in _printed(lines, a))


def test_workers_spread_over_both_nodes_and_share_the_run_storage(faults):
    result, _ = faults
    nodes = result["nodes"]
    attempts = [a for run in result["runs"].values() for a in run["attempts"]]
    assert len(attempts) == 4  # uninterrupted, killed + its restart, control
    for attempt in attempts:
        placed = [w["node_id"] for w in attempt["workers"]]
        assert len(placed) == 2 and set(placed) == set(nodes["workers"]), "one worker per node"
        assert nodes["head"] not in placed
    # Ray Train persisted the checkpoints into the run directory both nodes see, and the restarted
    # group read the one written before the kill (test above); its last one is there too
    killed = result["runs"]["killed"]
    ckpts = sorted(os.listdir(os.path.join(killed["run_dir"], "ray", "train")))
    assert f"epoch_{EPOCHS:04d}" in ckpts


def test_time_lost_and_checkpoint_share_from_the_epoch_timestamps():
    from reprlab.bench.fault_bench import checkpoint_overhead, recovery

    def row(epoch, start, train, ev):
        return {"epoch": epoch, "time/started_at": start, "time/train_s": train, "time/eval_s": ev}

    # epochs of 10 s train + 2 s eval + 0.5 s checkpoint; the kill 3 s after epoch 1's evaluation
    # ended; the restarted rank 0 trains epoch 2 from t = 120
    rows = [row(0, 100.0, 0.0, 2.0), row(1, 102.5, 10.0, 2.0), row(2, 120.0, 10.0, 2.0)]
    killed = {"kill": {"t": 117.5, "registered_epoch": 1}, "rows": rows,
              "attempts": [{"t_alive": 90.0}, {"t_alive": 118.5}]}
    assert recovery(killed) == pytest.approx({
        "registered_at_kill": 1, "resumed_from": 1, "progress_lost_s": 3.0, "kill_to_training_s": 2.5,
        "kill_to_new_workers_s": 1.0, "new_workers_to_training_s": 1.5, "time_lost_s": 5.5})
    straight = [row(0, 100.0, 0.0, 2.0), row(1, 102.5, 10.0, 2.0), row(2, 115.0, 10.0, 2.0)]
    per_epoch = checkpoint_overhead(straight)
    assert [o["checkpoint_s"] for o in per_epoch] == pytest.approx([0.5, 0.5])
    assert per_epoch[1]["fraction"] == pytest.approx(0.5 / 12.5)


def test_bench_faults_refuses_a_kill_that_cannot_land_before_the_end(tmp_path, capsys):
    from reprlab.cli import main

    assert main(["bench", "faults", "--epochs", "3", "--kill-after-epoch", "2", "--output", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == (
        "reprlab: error: bench faults: --kill-after-epoch must be in [0, 1] (the failure must land before the last epoch)")
    assert not (tmp_path / "b").exists()
