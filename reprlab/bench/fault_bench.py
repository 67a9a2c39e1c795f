"""``reprlab bench faults``: what one worker failure costs, and what checkpointing costs.

Everything runs on a simulated cluster on this machine (``ray.cluster_utils.Cluster``): a head
node without CPUs (the driver connects there; the Ray Train controller needs no CPU) and one node per
training worker with exactly the worker's CPUs, so the workers always land on different nodes.
The run directory is a local path that every simulated node sees: it stands in for the shared
file system (NFS, EFS) a real cluster needs for its checkpoints.

After a warm-up run (one iteration), the same experiment is trained twice with the same seed:

1. **uninterrupted**: the reference; its per-epoch timings give the checkpoint overhead:
   ``time/started_at`` of epoch e+1 minus that of epoch e is the epoch's wall time, and what is
   left after ``time/train_s`` and ``time/eval_s`` is the checkpoint save + report (the state
   dict, ``torch.save``, Ray's copy into the run storage, the report barrier; also the few
   milliseconds of writing ``metrics.parquet``).
2. **killed**: once Ray Train has registered the checkpoint of epoch ``kill_after_epoch`` (its
   ``checkpoint_manager_snapshot.json`` names it), the training worker on the last node is killed
   with SIGKILL. With ``scaling.max_failures >= 1`` Ray Train restarts all workers, which resume
   from the last registered checkpoint.

Time lost to the failure, measured on one clock (``time.time()``, all processes on one machine):

- A, *kill -> training*: from the SIGKILL to the restarted rank 0 starting to train the first
  epoch after the checkpoint (``time/started_at`` of that epoch; network, optimizer and
  generators are loaded by then), split at the moment the new worker actors are alive (Ray's
  actor table): failure detection, teardown and new processes; then process group, data, model
  and checkpoint loading.
- B, *progress lost*: from the end of the checkpointed epoch's evaluation to the kill: the work
  (checkpoint save and the next epoch's partial training) that the restart does again.
- A + B is the time lost; the wall-time difference to the uninterrupted run measures the same
  thing across two runs (so with their run-to-run noise; the warm-up run keeps the cluster's
  cold start out of it).

``control=True`` adds a third run with the same kill and ``scaling.max_failures=0``, which must
fail: the proof that the kill is fatal without retries.

Worker placement is read from the GCS actor table (``ray._private.state.actors``: node id and pid
of every ``RayTrainWorker``; the public state API needs the dashboard, which the simulated
cluster does not start).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from reprlab.platform.core.errors import ConfigError

WORKER_CLASS = "RayTrainWorker"
POLL_S = 0.1
SNAPSHOT = "checkpoint_manager_snapshot.json"
OBJECT_STORE_MB = 100  # per simulated node; training passes no objects through it
COMPARED = ("train/loss", "val/map@r", "test/recall@1", "test/map@r", "test/nmi")


# ---- the simulated cluster ---------------------------------------------------------------------


@contextlib.contextmanager
def simulated_cluster(worker_nodes: int, cpus_per_node: int, object_store_mb: int = OBJECT_STORE_MB) -> Iterator[Any]:
    """A head without CPUs plus ``worker_nodes`` nodes of ``cpus_per_node`` CPUs, all on this
    machine, with the driver connected. Ray's files (and its "current cluster" address file) go
    to a private temp dir, so no other ``ray.init()`` on the machine joins this cluster by
    accident. Everything is shut down on the way out, also on SIGTERM."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="reprlab-ft-", dir="/tmp")  # short: Ray's socket paths live under it
    saved_env = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    saved_term, cluster = _raise_on_sigterm(), None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            **node_args(0, object_store_mb), "include_dashboard": False})
        for _ in range(worker_nodes):
            cluster.add_node(**node_args(cpus_per_node, object_store_mb))
        ray.init(address=cluster.address, log_to_driver=True)
        _raise_on_sigterm()  # again: ray.init installs its own handler, which exits at once
        yield cluster
    finally:
        try:
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            if saved_env is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = saved_env
            if saved_term is not None:
                signal.signal(signal.SIGTERM, saved_term)
            shutil.rmtree(tmp, ignore_errors=True)


def node_args(cpus: int, object_store_mb: int) -> dict[str, Any]:
    return {"num_cpus": cpus, "object_store_memory": object_store_mb * 2**20}


def _raise_on_sigterm():
    """SIGTERM (e.g. a test's timeout) raises SystemExit, so the cluster's ``finally`` runs."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def train_workers() -> list[dict[str, Any]]:
    """The live Ray Train workers: node id and pid of each."""
    from ray._private.state import actors

    return [
        {"node_id": a["Address"]["NodeID"], "pid": int(a["Pid"])}
        for a in actors().values()
        if a.get("ActorClassName") == WORKER_CLASS and a.get("State") == "ALIVE"
    ]


def registered_checkpoint(run_dir: Path) -> int | None:
    """The epoch of the newest checkpoint Ray Train has registered (what a restart resumes from)."""
    from reprlab.platform.run.driver import RAY_RUN_NAME

    try:
        snap = json.loads((run_dir / "ray" / RAY_RUN_NAME / SNAPSHOT).read_text())
        return int(snap["latest_checkpoint_result"]["checkpoint_dir_name"].rsplit("_", 1)[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # not there yet, or half written
        return None


# ---- one run, watched --------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Records where the workers of each attempt run; optionally kills the worker on the last node
    once the checkpoint of ``kill_after_epoch`` is registered."""

    def __init__(self, cluster, run_dir: Path, num_workers: int, seen_pids: set[int],
                 kill_after_epoch: int | None = None) -> None:
        super().__init__(daemon=True)
        self.cluster, self.run_dir, self.num_workers = cluster, run_dir, num_workers
        self.seen_pids = seen_pids  # workers of earlier runs (their actors may linger in the table)
        self.kill_after_epoch = kill_after_epoch
        self.attempts: list[dict[str, Any]] = []  # per attempt: t_alive, workers [{node_id, pid}]
        self.kill: dict[str, Any] | None = None
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            try:
                self._step()
            except Exception as exc:  # keep watching; report what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _step(self) -> None:
        workers = [w for w in train_workers() if w["pid"] not in self.seen_pids]
        if len(workers) >= self.num_workers:
            self.seen_pids.update(w["pid"] for w in workers)
            self.attempts.append({"t_alive": time.time(), "workers": workers})
        if self.kill_after_epoch is None or self.kill is not None or len(self.attempts) != 1:
            return
        epoch = registered_checkpoint(self.run_dir)
        if epoch is None or epoch < self.kill_after_epoch:
            return
        last_node = sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)[-1]
        victims = [w for w in self.attempts[0]["workers"] if w["node_id"] == last_node.node_id]
        self.kill = {"registered_epoch": epoch, "node_id": last_node.node_id,
                     "pids": [w["pid"] for w in victims], "t": time.time()}
        for w in victims:
            os.kill(w["pid"], signal.SIGKILL)


def watched_run(cluster, cfg, run_dir: Path, seen_pids: set[int], kill_after_epoch: int | None = None
                ) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` on the cluster while a Watcher looks on; never raises for a
    failed run (the error is recorded)."""
    from reprlab.platform.run.results import read_metrics_table
    from reprlab.platform.run.driver import run_training

    watcher = Watcher(cluster, run_dir, cfg.scaling.num_workers, seen_pids, kill_after_epoch)
    watcher.start()
    start, error = time.time(), None
    try:
        run_training(cfg, run_dir)
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        error = f"{type(exc).__name__}: {lines[0][:300]}"
    wall = time.time() - start
    watcher.done.set()
    watcher.join()
    table = run_dir / "metrics.parquet"
    rows = read_metrics_table(table) if table.is_file() else []
    return {
        "run_dir": str(run_dir), "wall_s": wall, "t_start": start, "error": error,
        "attempts": watcher.attempts, "kill": watcher.kill, "watch_errors": watcher.errors,
        "rows": [{k: v for k, v in r.items() if k != "steps"} for r in rows],
    }


# ---- the analysis ------------------------------------------------------------------------------


def checkpoint_overhead(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per epoch e that has a successor: wall = start(e+1) - start(e); checkpoint = wall - train
    - eval (the save + report, and writing the metrics row)."""
    out = []
    for a, b in zip(rows, rows[1:]):
        wall = b["time/started_at"] - a["time/started_at"]
        ckpt = wall - a["time/train_s"] - a["time/eval_s"]
        out.append({"epoch": int(a["epoch"]), "wall_s": wall, "train_s": a["time/train_s"],
                    "eval_s": a["time/eval_s"], "checkpoint_s": ckpt, "fraction": ckpt / wall})
    return out


def recovery(killed: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint the restart resumed from (the last epoch that started before the kill: the
    table after a restart is the checkpoint's history plus what the restart trained), and the time
    lost: the way back to training, and the progress since that checkpoint (redone)."""
    kill, rows = killed["kill"], killed["rows"]
    if kill is None:
        return {}
    t = kill["t"]
    before = [r for r in rows if r["time/started_at"] < t]
    after = [r for r in rows if r["time/started_at"] > t]
    out: dict[str, Any] = {"registered_at_kill": kill["registered_epoch"],
                           "resumed_from": int(before[-1]["epoch"]) if before else None}
    if before:
        last = before[-1]  # its state was complete when its evaluation ended; later work is redone
        out["progress_lost_s"] = t - (last["time/started_at"] + last["time/train_s"] + last["time/eval_s"])
    if after:
        out["kill_to_training_s"] = after[0]["time/started_at"] - t
    if len(killed["attempts"]) > 1:
        alive = killed["attempts"][1]["t_alive"]
        out["kill_to_new_workers_s"] = alive - t
        if after:
            out["new_workers_to_training_s"] = after[0]["time/started_at"] - alive
    if before and after:
        out["time_lost_s"] = out["kill_to_training_s"] + out["progress_lost_s"]
    return out


def max_differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    """Largest absolute per-epoch difference of each compared metric (over the common epochs)."""
    out = {}
    for key in COMPARED:
        diffs = [abs(ra[key] - rb[key]) for ra, rb in zip(a, b)
                 if ra.get(key) is not None and rb.get(key) is not None]
        if diffs:
            out[key] = max(diffs)
    return out


def checkpoint_bytes(run_dir: Path) -> int | None:
    from reprlab.platform.run.loop import STATE_FILE

    sizes = [p.stat().st_size for p in (run_dir / "ray").rglob(STATE_FILE)]
    return max(sizes) if sizes else None


# ---- the benchmark -----------------------------------------------------------------------------


def bench_faults(source: str, overrides: list[str], output: Path, epochs: int = 6, kill_after_epoch: int = 3,
                 control: bool = False, warmup: bool = True) -> dict[str, Any]:
    """The uninterrupted and the killed run (and the control) on one simulated cluster. ``warmup``:
    a one-iteration run first, so the cluster's cold start is charged to neither run."""
    from reprlab.platform.core.config import load_config

    base = ["scaling.num_workers=2", "scaling.max_failures=1", *overrides, f"train.epochs={epochs}"]
    cfg = load_config(source, base)
    sc = cfg.scaling
    if sc.num_workers < 1 or sc.use_gpu:
        raise ConfigError("bench faults: needs Ray Train workers on CPU (scaling.num_workers >= 1, use_gpu false)")
    if sc.max_failures == 0:
        raise ConfigError("bench faults: scaling.max_failures must be >= 1 (or -1) for the killed run")
    if not 0 <= kill_after_epoch <= cfg.train.epochs - 2:
        raise ConfigError(f"bench faults: --kill-after-epoch must be in [0, {cfg.train.epochs - 2}] "
                          f"(the failure must land before the last epoch)")
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"bench faults: {output} is not empty; choose another --output")
    plan = [("uninterrupted", cfg, None), ("killed", cfg, kill_after_epoch)]
    if warmup:
        plan.insert(0, ("warmup", load_config(source, [*base, "train.epochs=1", "data.iterations_per_epoch=1"]), None))
    if control:
        plan.append(("control", load_config(source, [*base, "scaling.max_failures=0"]), kill_after_epoch))
    output.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    with simulated_cluster(sc.num_workers, max(1, math.ceil(sc.cpus_per_worker))) as cluster:
        nodes = {"head": cluster.head_node.node_id, "workers": sorted(n.node_id for n in cluster.worker_nodes)}
        for name, run_cfg, kill_at in plan:
            print(f"[reprlab] bench faults: {name} run -> {output / name}", flush=True)
            runs[name] = watched_run(cluster, run_cfg, output / name, seen, kill_at)

    straight, killed = runs["uninterrupted"], runs["killed"]
    overhead = checkpoint_overhead(straight["rows"])
    trained = [o for o in overhead if o["epoch"] > 0]
    return {
        "config_source": source, "overrides": base, "epochs": cfg.train.epochs,
        "kill_after_epoch": kill_after_epoch, "num_workers": sc.num_workers,
        "max_failures": sc.max_failures, "nodes": nodes, "runs": runs,
        "recovery": recovery(killed),
        "extra_wall_s": killed["wall_s"] - straight["wall_s"],
        "max_abs_diff": max_differences(straight["rows"], killed["rows"]),
        "checkpoint": {
            "per_epoch": overhead,
            "mean_s": _mean([o["checkpoint_s"] for o in trained]),
            "mean_epoch_s": _mean([o["wall_s"] for o in trained]),
            "fraction": (sum(o["checkpoint_s"] for o in trained) / sum(o["wall_s"] for o in trained))
            if trained else None,
            "bytes": checkpoint_bytes(output / "uninterrupted"),
        },
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def format_fault_bench(r: dict[str, Any]) -> str:
    """Markdown tables: the runs, the cost of the failure, the checkpoint overhead."""
    runs, rec, ck = r["runs"], r["recovery"], r["checkpoint"]
    lines = [f"fault bench: {r['config_source']}, {r['epochs']} epochs, {r['num_workers']} workers on "
             f"{r['num_workers']} simulated nodes, one worker killed after the checkpoint of "
             f"epoch {r['kill_after_epoch']}", "",
             "| run | max_failures | outcome | epochs | wall s | resumed from | test R@1 | test MAP@R |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        rows = run["rows"]
        last = rows[-1] if rows else {}
        mf = 0 if name == "control" else r["max_failures"]  # the warmup and uninterrupted runs never fail
        outcome = "completed" if run["error"] is None else "failed (" + run["error"].split(":")[0] + ")"
        resumed = _f(rec.get("resumed_from"), "d") if name == "killed" else "-"
        lines.append(f"| {name} | {mf} | {outcome} | {_f(last.get('epoch'), '.0f')} | {run['wall_s']:.1f} | "
                     f"{resumed} | {_f(100 * last['test/recall@1'] if last else None)} | "
                     f"{_f(100 * last['test/map@r'] if last else None)} |")
    lines += ["", "| kill -> new workers alive | new workers -> training | kill -> training (A) | "
              "progress since the checkpoint, redone (B) | time lost A + B | extra wall vs uninterrupted |",
              "|---|---|---|---|---|---|",
              f"| {_f(rec.get('kill_to_new_workers_s'))} s | {_f(rec.get('new_workers_to_training_s'))} s | "
              f"{_f(rec.get('kill_to_training_s'))} s | {_f(rec.get('progress_lost_s'))} s | "
              f"{_f(rec.get('time_lost_s'))} s | {r['extra_wall_s']:.2f} s |"]
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items())
    lines += ["", f"killed vs uninterrupted, largest per-epoch |difference|: {diffs}"]
    lines += ["", "| epoch | wall s | train s | eval s | checkpoint + report s | share of the epoch |",
              "|---|---|---|---|---|---|"]
    for o in ck["per_epoch"]:
        lines.append(f"| {o['epoch']} | {o['wall_s']:.2f} | {o['train_s']:.2f} | {o['eval_s']:.2f} | "
                     f"{o['checkpoint_s']:.3f} | {100 * o['fraction']:.1f}% |")
    size = f"{ck['bytes'] / 2**20:.2f} MiB" if ck["bytes"] else "-"
    lines += ["", f"checkpoint per trained epoch: {_f(ck['mean_s'], '.3f')} s of {_f(ck['mean_epoch_s'])} s "
              f"({_f(100 * ck['fraction'] if ck['fraction'] is not None else None, '.1f')}%), state.pt {size}"]
    return "\n".join(lines)


def write_results(result: dict[str, Any], output: Path) -> tuple[Path, Path]:
    js, md = output / "faults.json", output / "faults.md"
    js.write_text(json.dumps(result, indent=2, default=float))
    md.write_text(format_fault_bench(result) + "\n")
    return js, md
