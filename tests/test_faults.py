"""Fault injection through the command line (issue 16): every fault and bad input ends in one line,
with the right exit status, and the run directory byte-identical to before the failed command (or
complete and correct after a resume). The kinds and their lines are tabulated in docs/FAULTS.md.

Most cases fail before anything is written and cost milliseconds; one tiny in-process run is
trained once per module and copied for the cases that need a run directory. Two Ray runs: a
2-worker run stopped with SIGTERM and resumed, and a one-trial sweep.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reprlab.cli import main

def _args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes); {} when ``root`` does not exist."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(capsys, rc: int, want_rc: int = 2, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert rc == want_rc, err
    assert len(lines) == 1, err
    assert lines[0].startswith("reprlab: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def local(tiny) -> list[str]:
    return tiny + ["scaling.num_workers=0", "train.epochs=1"]


@pytest.fixture(scope="module")
def base_run(local, tmp_path_factory) -> Path:
    """One finished tiny in-process run (epochs 0 and 1), trained once."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", "--output", str(out), *_args(local)]) == 0
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of the finished run."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


# ---- bad input before anything exists: one line, exit 2, nothing created --------------------------

BAD_TRAIN = [
    ("unknown key", ["method.bta=1"], "method.bta: unknown key"),
    ("bad value", ["train.epochs=0"], "train.epochs"),
    ("override without =", ["train.epochs"], "expected KEY=VALUE"),
    ("unknown method", ["method.name=nope"], "method.name"),
    ("unknown data set", ["data.name=nope"], "data.name"),
    ("value of the wrong type", ["optim.lr=fast"], "optim.lr"),
    ("section set as a value", ["train=3"], "train"),
    ("classes per batch above the classes", ["data.classes_per_batch=200"], "is more than the"),
    ("samples per class above every class", ["data.samples_per_class=50"], "data.samples_per_class: 50 is more than"),
    ("P not divisible by the workers", ["scaling.num_workers=3"], "data.classes_per_batch"),
    ("weights file missing", ["model.backbone=resnet18", "model.pretrained=/nonexistent/w.pth"], "no such file"),
    ("weights on small_cnn", ["model.pretrained=/nonexistent/w.pth"], "small_cnn has no pretrained weights"),
    ("more folds than classes", ["data.validation.protocol=kfold", "data.validation.folds=500"], "500"),
    ("fold out of range", ["data.validation.protocol=kfold", "data.validation.fold=9"], "fold must be"),
    ("unknown selection metric", ["eval.selection_metric=nope"], "eval.selection_metric"),
    ("micro-batches on a method without them", ["method.name=pads", "train.grad_accumulation=2"],
     "train.grad_accumulation"),
]


@pytest.mark.parametrize("kind, overrides, needle", BAD_TRAIN, ids=[k for k, _, _ in BAD_TRAIN])
def test_bad_train_input_is_one_line_and_creates_nothing(kind, overrides, needle, local, tmp_path, capsys):
    out = tmp_path / "new"
    rc = main(["train", "--output", str(out), *_args(local + overrides)])
    one_line(capsys, rc, 2, needle)
    assert not out.exists(), "nothing is created"


def test_weights_file_that_is_not_weights(local, tmp_path, capsys):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a torch file")
    out = tmp_path / "new"
    rc = main(["train", "--output", str(out), *_args(local + ["model.backbone=resnet18", f"model.pretrained={bad}"])])
    one_line(capsys, rc, 2, "cannot read weights", str(bad))
    assert not out.exists()


def test_gpu_requested_in_process_without_one(local, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "new"
    one_line(capsys, main(["train", "--output", str(out), *_args(local + ["scaling.use_gpu=true"])]), 2,
             "scaling.use_gpu")
    assert not out.exists()


CONFIG_FILES = [
    ("missing config file", None, "no such file"),
    ("invalid YAML", "train: {epochs: [1\n", "not valid YAML"),
    ("empty config file", "\n# nothing\n", "the file is empty"),
    ("binary config file", b"\xff\xfe\x00\x01", "not a text file"),
    ("top level not a mapping", "- 1\n- 2\n", "top level must be a mapping"),
]


@pytest.mark.parametrize("kind, content, needle", CONFIG_FILES, ids=[k for k, _, _ in CONFIG_FILES])
def test_bad_config_file_is_one_line(kind, content, needle, local, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        cfg.write_bytes(content)
    elif content is not None:
        cfg.write_text(content)
    out = tmp_path / "new"
    one_line(capsys, main(["train", str(cfg), "--output", str(out), *_args(local)]), 2, needle)
    assert not out.exists()


def test_config_path_that_is_a_directory(local, tmp_path, capsys):
    d = tmp_path / "dir.yaml"
    d.mkdir()
    one_line(capsys, main(["train", str(d), "--output", str(tmp_path / "new"), *_args(local)]), 2, "a directory")


def test_unknown_preset(local, tmp_path, capsys):
    one_line(capsys, main(["train", "nope/nothing", "--output", str(tmp_path / "n"), *_args(local)]), 2,
             "no such file or preset")


# ---- the output path ---------------------------------------------------------------------------------


def test_output_empty_string(local, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line(capsys, main(["train", "--output", "", *_args(local)]), 2, "--output is empty")
    assert list(tmp_path.iterdir()) == [], "nothing written into the current directory"


def test_output_that_is_a_file(local, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    one_line(capsys, main(["train", "--output", str(f), *_args(local)]), 2, "is a file, not a directory")
    assert f.read_text() == "keep me"


def test_output_below_a_file(local, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    one_line(capsys, main(["train", "--output", str(f / "run"), *_args(local)]), 2, "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_without_write_permission(local, tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        one_line(capsys, main(["train", "--output", str(d / "run"), *_args(local)]), 2, "no permission to write")
    finally:
        d.chmod(0o755)


def test_read_only_file_system_is_named(tmp_path, monkeypatch):
    from reprlab.platform.core.errors import StorageError
    from reprlab.platform.core.storage import resolve
    from reprlab.platform.run import guard

    monkeypatch.setattr(guard, "_read_only_fs", lambda p: True)
    with pytest.raises(StorageError, match="read-only file system"):
        guard.check_output_path(str(tmp_path / "x"), resolve(tmp_path / "x"))


# ---- an existing run: refused changes leave it byte-identical -----------------------------------------


def test_new_run_into_a_finished_run_is_refused(run, local, capsys):
    before = snapshot(run)
    one_line(capsys, main(["train", "--output", str(run), *_args(local)]), 2, "already holds a run")
    assert snapshot(run) == before


RESUME_CONFLICTS = [
    ("another method", ["method.name=mic"], "method.name is 'mic' here but 'margin'"),
    ("changed embedding shape", ["model.embed_dim=32"], "model.embed_dim is 32 here but 16"),
    ("changed backbone width", ["model.width=16"], "model.width"),
    ("changed batch composition", ["data.classes_per_batch=8"], "data.classes_per_batch"),
    ("another seed", ["experiment.seed=3"], "experiment.seed"),
    ("another data set", ["data.name=colored_digits"], "data.name"),
    ("another optimizer", ["optim.name=sgd"], "optim.name"),
]


@pytest.mark.parametrize("kind, overrides, needle", RESUME_CONFLICTS, ids=[k for k, _, _ in RESUME_CONFLICTS])
def test_resume_with_conflicting_settings_is_one_line_and_untouched(kind, overrides, needle, run, capsys):
    before = snapshot(run)
    rc = main(["train", "--output", str(run), "--resume", *_args(overrides + ["train.epochs=2"])])
    one_line(capsys, rc, 2, needle, str(run))
    assert snapshot(run) == before
    # and a plain --resume still works on the untouched run (checked cheaply: its config parses)
    from reprlab.platform.core.storage import resolve
    from reprlab.platform.run.guard import stored_config

    assert stored_config(resolve(run))["method"]["name"] == "margin"


def test_resume_with_a_named_config_that_differs(run, local, capsys):
    before = snapshot(run)
    rc = main(["train", "mic/glyphs", "--output", str(run), "--resume", *_args(local)])
    one_line(capsys, rc, 2, "method.name")
    assert snapshot(run) == before


def test_resume_without_a_run(local, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(capsys, main(["train", "--output", str(empty), "--resume", *_args(local)]), 2, "holds no run to resume")
    assert list(empty.iterdir()) == []
    one_line(capsys, main(["train", "--output", str(tmp_path / "none"), "--resume", *_args(local)]), 2,
             "holds no run to resume")
    assert not (tmp_path / "none").exists()


def test_resume_with_a_damaged_config(run, capsys):
    (run / "config.yaml").write_bytes(b"\x00\xff garbage")
    before = snapshot(run)
    one_line(capsys, main(["train", "--output", str(run), "--resume"]), 2, "config.yaml")
    assert snapshot(run) == before


def test_resume_with_no_readable_checkpoint(run, capsys):
    for state in (run / "checkpoints").glob("epoch_*/state.pt"):
        state.write_bytes(b"not a checkpoint")
    before = snapshot(run)
    rc = main(["train", "--output", str(run), "--resume", "--set", "train.epochs=2"])
    one_line(capsys, rc, 2, "no readable checkpoint")
    assert snapshot(run) == before


def test_checkpoint_of_another_run_falls_back_to_the_older_one(run, capsys):
    import torch

    newest = run / "checkpoints" / "epoch_0001" / "state.pt"
    state = torch.load(newest, weights_only=True)
    state["config"]["model"]["embed_dim"] = 32  # as if copied in from another run
    torch.save(state, newest)
    assert main(["train", "--output", str(run), "--resume", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "epoch_0001/state.pt belongs to another run" in out and "falling back to epoch_0000" in out
    assert "resumed from the checkpoint of epoch 0" in out
    assert pq.read_table(run / "metrics.parquet").column("epoch").to_pylist() == [0, 1, 2]


def test_output_in_use_by_another_command(run, capsys):
    from reprlab.platform.run.guard import LOCK_FILE

    (run / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "since": time.time()}))
    before = snapshot(run)
    one_line(capsys, main(["train", "--output", str(run), "--resume", "--set", "train.epochs=2"]), 2,
             "is in use by another reprlab command", f"pid {os.getpid()}")
    assert snapshot(run) == before


def test_stale_lock_of_a_dead_process_is_taken_over(run, capsys):
    from reprlab.platform.run.guard import LOCK_FILE

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0}))
    rc = main(["train", "--output", str(run), "--resume", "--set", "method.name=mic"])
    one_line(capsys, rc, 2, "method.name")  # got past the lock to the real check
    assert not (run / LOCK_FILE).exists()


def test_two_commands_never_share_a_new_directory(tmp_path):
    """The claim is an exclusive create: of many racing claimers exactly one wins."""
    from reprlab.platform.core.errors import ConfigError
    from reprlab.platform.core.storage import resolve
    from reprlab.platform.run.guard import claim

    out = resolve(tmp_path / "race")
    first = claim(out)
    with pytest.raises(ConfigError, match="in use by another reprlab command"):
        claim(out)
    first.release()
    claim(out).release()


def test_a_failed_new_run_leaves_a_preexisting_directory_as_it_was(local, tmp_path, capsys):
    out = tmp_path / "pre"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    one_line(capsys, main(["train", "--output", str(out), *_args(local + ["data.samples_per_class=50"])]), 2)
    assert snapshot(out) == before


# ---- OS errors, numerics -----------------------------------------------------------------------------


def test_disk_full_while_checkpointing_is_one_line_and_rolled_back(local, tmp_path, capsys, monkeypatch):
    import reprlab.platform.run.loop as loop

    def full(state, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop.torch, "save", full)
    out = tmp_path / "full"
    one_line(capsys, main(["train", "--output", str(out), *_args(local)]), 2, "no space left on device", "state.pt")
    assert not out.exists(), "nothing trained: rolled back"


def test_torch_write_failure_names_the_disk(tmp_path, monkeypatch):
    import reprlab.platform.run.loop as loop
    from reprlab.platform.core.errors import StorageError

    def failing(state, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 123 vs 456")

    monkeypatch.setattr(loop.torch, "save", failing)
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(StorageError, match="no space left on device"):
        loop._save_file({}, tmp_path / "state.pt")


def test_os_error_from_a_worker_is_one_line_naming_the_path():
    from reprlab.platform.run.driver import user_error

    inner = PermissionError(errno.EACCES, "Permission denied", "/runs/x/metrics.parquet")
    try:
        raise RuntimeError("worker failed") from inner
    except RuntimeError as exc:
        err = user_error(exc)
    assert str(err) == "permission denied: /runs/x/metrics.parquet"


def test_damaged_metrics_table_is_one_line(tmp_path):
    from reprlab.platform.core.errors import StorageError
    from reprlab.platform.run.results import read_metrics_table

    bad = tmp_path / "metrics.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(StorageError, match="cannot read .*metrics.parquet"):
        read_metrics_table(bad)


def test_metrics_read_while_the_run_rewrites_them_are_always_whole(tmp_path):
    """A run rewrites metrics.parquet every epoch while tests, sweeps and the fault bench poll it.
    Handing the path to Parquet stats the file and opens it separately, so a rename in between
    reads the new file at the old size ("Page was smaller than expected"; about a third of such
    reads failed here). Catches reading by path instead of through one handle."""
    import threading

    from reprlab.platform.run.results import read_metrics_table, write_metrics_table

    path = tmp_path / "metrics.parquet"
    write_metrics_table(path, [{"epoch": 0, "loss": 0.0}])
    stop, errors = threading.Event(), []

    def rewrite():
        n = 0
        while not stop.is_set():
            n += 1
            write_metrics_table(path, [{"epoch": e, "loss": float(e)} for e in range(1 + n % 40)])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(400):
            try:
                rows = read_metrics_table(path)
                assert [r["epoch"] for r in rows] == list(range(len(rows)))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(repr(exc))
    finally:
        stop.set()
        writer.join()
    assert not errors, f"{len(errors)} of 400 reads failed, first: {errors[0]}"


def test_diverged_loss_is_one_line_and_keeps_epoch_0(local, tmp_path, capsys):
    out = tmp_path / "nan"
    rc = main(["train", "--output", str(out), *_args(local + ["optim.lr=1e38", "optim.name=sgd"])])
    one_line(capsys, rc, 2, "the loss became")
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "epoch_0000").is_dir()


def test_collapse_rule():
    from reprlab.platform.core.config import load_config
    from reprlab.platform.run.results import run_health

    cfg = load_config(None, [])
    rows = [{"epoch": 0.0, "test/recall@1": 0.30}, {"epoch": 1.0, "train/loss": 0.2, "test/recall@1": 0.29}]
    assert run_health(rows, cfg)["status"] == "completed"
    rows[1]["test/recall@1"] = 0.01
    health = run_health(rows, cfg)
    assert health["status"] == "collapsed" and "30.0" in health["status_reason"] and "1.0" in health["status_reason"]
    rows[1]["test/nmi"] = float("nan")
    assert run_health(rows, cfg)["status"] == "diverged"
    # a metric the run never computes (NaN before training too) is not a divergence
    rows[1]["test/recall@1"], rows[1]["test/nmi"] = 0.29, 0.5
    rows[0]["val/ssim/expert_a"] = rows[1]["val/ssim/expert_a"] = float("nan")
    assert run_health(rows, cfg)["status"] == "completed"
    rows[1]["test/nmi"] = float("inf")
    assert run_health(rows, cfg)["status"] == "diverged"


def test_collapsed_run_exits_3_with_one_line(run, capsys, monkeypatch):
    import reprlab.platform.run.driver as driver

    monkeypatch.setattr(driver, "run_health", lambda rows, cfg: {"status": "collapsed", "status_reason": "test"})
    rc = main(["train", "--output", str(run), "--resume", "--set", "train.epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and err == [err[0]] and err[0].startswith("reprlab: error: training collapsed: test")
    assert json.loads((run / "summary.json").read_text())["status"] == "collapsed"


# ---- checkpoints: the newest readable one on disk -------------------------------------------------------


def test_resume_prefers_the_newest_checkpoint_on_disk_over_rays_registry(tmp_path, monkeypatch):
    import ray.train
    import torch

    from reprlab.platform.run.loop import CheckpointStore

    run = tmp_path / "run"
    for epoch in (0, 1, 2):
        d = run / "ray" / "train" / f"epoch_{epoch:04d}"
        d.mkdir(parents=True)
        torch.save({"epoch": epoch}, d / "state.pt")

    class Registered:  # Ray's registry lags: it knows epoch 0 only
        filesystem = __import__("pyarrow.fs").fs.LocalFileSystem()
        path = str(run / "ray" / "train" / "epoch_0000")

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Registered())
    store = CheckpointStore(run, in_process=False, keep=2, rank=0)
    assert store.latest()["epoch"] == 2
    (run / "ray" / "train" / "epoch_0002" / "state.pt").write_bytes(b"half a write")
    assert store.latest()["epoch"] == 1, "an unreadable newest falls back to the next one"
    # an in-process run resumed on Ray workers (or back) finds the other layout's checkpoints
    assert CheckpointStore(run, in_process=True, keep=2, rank=0).latest()["epoch"] == 1


# ---- data commands, bench ---------------------------------------------------------------------------


def test_data_info_of_an_embedded_set_needs_no_root(capsys):
    assert main(["data", "info", "colored_digits"]) == 0
    assert "colored_digits" in capsys.readouterr().out


def test_data_info_of_a_benchmark_without_root(capsys, tmp_path):
    one_line(capsys, main(["data", "info", "cub", "--root", str(tmp_path / "nothing")]), 2, "directory not found")


def test_data_unknown_set(capsys):
    one_line(capsys, main(["data", "info", "nope"]), 2, "data.name")


def test_bench_loss_tiny_batch(capsys):
    one_line(capsys, main(["bench", "loss", "--batch", "1", "--repeats", "1"]), 2, "--batch")


# ---- sweeps ------------------------------------------------------------------------------------------


def _sweep(tmp_path: Path, name: str = "s", **extra) -> Path:
    import yaml

    spec = {"name": name, "base": "margin/glyphs", "space": {"optim.lr": {"type": "logfloat", "low": 1e-3, "high": 1e-2}},
            "searcher": {"name": "random", "seed": 0}, "scheduler": {"name": "none"}, "trials": 3,
            "resources": {"workers": 0, "cpus_per_worker": 1}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_file_missing(capsys, tmp_path):
    one_line(capsys, main(["tune", str(tmp_path / "none.yaml")]), 2, "no such file")


def test_sweep_kfold_with_asha(capsys, tmp_path):
    one_line(capsys, main(["tune", str(_sweep(tmp_path, kfold={"folds": 3}, scheduler={"name": "asha"}))]), 2, "ASHA")


def test_sweep_trials_zero(capsys, tmp_path):
    one_line(capsys, main(["tune", str(_sweep(tmp_path)), "--trials", "0"]), 2, "--trials")


def test_sweep_output_is_a_file(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    one_line(capsys, main(["tune", str(_sweep(tmp_path)), "--output", str(f)]), 2, "is a file")
    one_line(capsys, main(["tune", str(_sweep(tmp_path)), "--output", ""]), 2, "--output is empty")


def test_sweep_resume_without_a_sweep(capsys, tmp_path, tiny):
    one_line(capsys, main(["tune", str(_sweep(tmp_path)), "--output", str(tmp_path / "none"), "--resume",
                           *_args(tiny)]), 2, "holds no sweep to resume")
    assert not (tmp_path / "none").exists()


def test_readme_sample_sweep_is_valid():
    """The sample in tune_configs/README.md is accepted by reprlab tune's checks."""
    import re

    import yaml

    from reprlab.platform.tune.sweep import SweepSpec

    text = (Path(__file__).parents[1] / "tune_configs" / "README.md").read_text()
    sample = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    SweepSpec.model_validate(yaml.safe_load(sample))


# ---- the cluster: requests it cannot satisfy (no training) -------------------------------------------------

CLUSTER = [
    ("more workers than CPUs", ["scaling.num_workers=4", "data.classes_per_batch=16"], "4 worker(s) x 1 CPU(s)"),
    ("more CPUs per worker than the cluster", ["scaling.num_workers=2", "scaling.cpus_per_worker=100"], "= 200 CPU(s)"),
    ("GPUs on a cluster without", ["scaling.num_workers=2", "scaling.use_gpu=true"], "GPU(s), the cluster has 0"),
]


@pytest.mark.parametrize("kind, overrides, needle", CLUSTER, ids=[k for k, _, _ in CLUSTER])
def test_request_the_cluster_cannot_satisfy_is_one_line(kind, overrides, needle, ray_session, tiny, tmp_path, capsys):
    out = tmp_path / "new"
    rc = main(["train", "--output", str(out), *_args(tiny + overrides)])
    one_line(capsys, rc, 2, needle, "fixed-size cluster")
    assert not out.exists()


def test_autoscaling_cluster_waits_with_notices_then_gives_up(ray_session, tiny, capsys, monkeypatch):
    from reprlab.platform.core.config import load_config
    from reprlab.platform.core.errors import ConfigError
    from reprlab.platform.run.preflight import check_resources

    monkeypatch.setenv("REPRLAB_AUTOSCALING", "1")
    cfg = load_config(None, tiny + ["scaling.num_workers=2", "scaling.cpus_per_worker=100", "scaling.wait_timeout_s=0.3"])
    with pytest.raises(ConfigError, match=r"gave up after 0.3 s \(scaling.wait_timeout_s\)"):
        check_resources(cfg, poll_s=0.05, notice_s=0.1)
    out = capsys.readouterr().out
    assert "waiting for the cluster to grow" in out and "still waiting" in out


# ---- interrupts and the Ray runs -------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reprlab.cli", *args]


def _wait_for(path_glob: tuple[Path, str], proc, timeout: float = 240) -> None:
    root, pattern = path_glob
    start = time.time()
    while not list(root.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.2)


def test_ctrl_c_in_process_then_resume_from_the_newest(local, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--output", str(out), *_args(local + ["train.epochs=40"])]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for((out, "checkpoints/epoch_0002/state.pt"), proc)
    # meanwhile another command cannot use the same directory
    assert main(["train", "--output", str(out), *_args(local)]) == 2
    assert "in use by another reprlab command" in capsys.readouterr().err
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 15
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err
    assert lines == [lines[0]] and lines[0].startswith("reprlab: interrupted (SIGINT): ")
    assert f"continue with: reprlab train --output {out} --resume" in lines[0]
    # complete checkpoints only: a signal during a save may leave the save's .tmp_epoch_N staging
    # directory (never read; the next save clears it)
    newest = max(int(p.name[6:]) for p in (out / "checkpoints").glob("epoch_*") if (p / "state.pt").is_file())
    assert f"newest: {newest}" in lines[0]
    assert not (out / ".reprlab.lock").exists()
    assert main(["train", "--output", str(out), "--resume", "--set", f"train.epochs={newest + 1}"]) == 0
    printed = capsys.readouterr().out
    assert f"resumed from the checkpoint of epoch {newest}" in printed
    assert pq.read_table(out / "metrics.parquet").column("epoch").to_pylist() == list(range(newest + 2))


def test_sigterm_of_a_ray_run_then_resume_from_the_newest_on_disk(tiny, tmp_path):
    out = tmp_path / "ray"
    common = tiny + ["scaling.num_workers=2", "train.epochs=40"]
    proc = subprocess.Popen(_cli("train", "--output", str(out), *_args(common)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for((out, "ray/train/epoch_0002/state.pt"), proc, timeout=400)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=90)
    stopped = time.time() - sent
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err
    assert lines == [lines[0]] and lines[0].startswith("reprlab: interrupted (SIGTERM): "), err
    assert "continue with: reprlab train --output" in lines[0]
    assert stopped < 20, stopped
    assert "PreemptionWatcher" not in stdout + err and "Token authentication" not in stdout + err
    on_disk = sorted(int(p.name[6:]) for p in (out / "ray" / "train").glob("epoch_*") if (p / "state.pt").is_file())
    time.sleep(2)
    assert sorted(int(p.name[6:]) for p in (out / "ray" / "train").glob("epoch_*")
                  if (p / "state.pt").is_file()) == on_disk, "the workers stopped"
    newest = on_disk[-1]
    res = subprocess.run(_cli("train", "--output", str(out), "--resume", "--set", f"train.epochs={newest + 1}",
                              "--set", "scaling.num_workers=0"), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    assert f"resumed from the checkpoint of epoch {newest}" in res.stdout
    assert pq.read_table(out / "metrics.parquet").column("epoch").to_pylist() == list(range(newest + 2))


def test_sweep_trials_from_the_command_line_and_a_conflicting_resume(ray_session, tiny, tmp_path, capsys):
    sweep = _sweep(tmp_path, trials=5)
    out = tmp_path / "sweep"
    args = ["tune", str(sweep), "--output", str(out), "--trials", "1", *_args(tiny + ["train.epochs=1"])]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "+----" not in printed.out, "no Tune result tables without --verbose"
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len({r["trial"] for r in trials}) == 1
    before = snapshot(out)
    other = _sweep(tmp_path, name="other", space={"optim.lr": {"type": "float", "low": 1e-3, "high": 2e-3}})
    rc = main(["tune", str(other), "--output", str(out), "--resume", *_args(tiny + ["train.epochs=1"])])
    one_line(capsys, rc, 2, "--resume with another sweep")
    rc = main(["tune", str(sweep), "--output", str(out), "--resume", *_args(tiny + ["train.epochs=1", "model.embed_dim=8"])])
    one_line(capsys, rc, 2, "model.embed_dim")
    assert snapshot(out) == before
