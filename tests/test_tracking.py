"""Experiment tracking (issue 23) against the trackers' own parts: an MLflow file store queried
through MLflow's client, W&B offline run files read back record by record, TensorBoard event
files read with TensorBoard's own loader. Tiny in-process runs; one tiny sweep on Ray Tune."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from reprlab.cli import main
from reprlab.platform.core.config import load_config
from reprlab.platform.run.driver import run_training

pytestmark = pytest.mark.slow


def _all_three(tmp_path: Path) -> list[str]:
    return ["tracking.tensorboard.enabled=true", "tracking.mlflow.enabled=true",
            f"tracking.mlflow.tracking_uri={tmp_path / 'mlruns'}", "tracking.wandb.enabled=true",
            "tracking.wandb.mode=offline", "tracking.wandb.project=reprlab-tests"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No tracker may reach the network; MLflow 3 opens a file store only when allowed."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient((tmp_path / "mlruns").resolve().as_uri())


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---- readers of the trackers' files --------------------------------------------------------------


def _tb_events(logdir: Path) -> list[tuple[str, int, object]]:
    """(tag, step, value) of every summary value in every event file under ``logdir``, read with
    TensorBoard's own loader (scalars as floats, images as their encoded bytes)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:  # the loader hands every summary over as a tensor
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    out.append((value.tag, event.step, value.tensor.float_val[0]))
                elif plugin == "images":  # width, height, encoded image
                    out.append((value.tag, event.step, value.tensor.string_val[2]))
    return out


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-ID.wandb``): a LevelDB-style log of 32 KiB blocks,
    each record a protobuf ``Record`` of W&B's own schema, after a 7-byte ``:W&B`` header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _wandb_runs(directory: Path) -> list[dict]:
    """Each offline run directory's run id, group, tags, config, history rows and summary."""
    runs = []
    for run_file in sorted(directory.glob("wandb/offline-run-*/run-*.wandb")):
        run: dict = {"history": [], "summary": {}, "config": {}}
        for record in _wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, group=record.run.run_group, project=record.run.project,
                           tags=list(record.run.tags),
                           config={_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                run["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                run["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        runs.append(run)
    return runs


# ---- config and checks before Ray starts ------------------------------------------------------------


def test_tracking_is_off_by_default_and_a_bad_value_is_one_line(tiny, tmp_path, capsys):
    from reprlab.platform.run.tracking import enabled

    assert enabled(load_config(None)) == []
    assert enabled(load_config(None, ["tracking.mlflow.enabled=true", "tracking.tensorboard.enabled=true"])) == [
        "tensorboard", "mlflow"]
    for bad, line in (("tracking.wandb.mode=sometimes", "config: tracking.wandb.mode: Input should be 'online' or "
                                                         "'offline', got 'sometimes'"),
                      ("tracking.mlflw.enabled=true", "config: tracking.mlflw: unknown key")):
        sets = [x for s in [*tiny, "scaling.num_workers=0", "train.epochs=1", bad] for x in ("--set", s)]
        assert main(["train", *sets, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert line in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_package_or_unreachable_server_is_one_line_or_with_warn_a_run_without_it(
        tiny, tmp_path, capsys, monkeypatch):
    from reprlab.platform.run import driver

    started = []
    monkeypatch.setattr(driver, "ensure_ray", lambda cfg: started.append(cfg))  # what would start Ray
    sets = [x for s in tiny + ["scaling.num_workers=0", "train.epochs=1"] for x in ("--set", s)]
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: the import fails
    assert main(["train", *sets, "--set", "tracking.wandb.enabled=true", "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "tracking.wandb.enabled: the wandb package is not installed" in err and err.count("\n") == 1
    dead = f"http://127.0.0.1:{_free_port()}"
    mlflow_on = ["--set", "tracking.mlflow.enabled=true", "--set", f"tracking.mlflow.tracking_uri={dead}"]
    assert main(["train", *sets, *mlflow_on, "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"tracking.mlflow.tracking_uri: cannot reach the MLflow server at {dead}" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not started, "refused before Ray starts"

    assert main(["train", *sets, *mlflow_on, "--set", "tracking.on_error=warn", "--output", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "warning: tracking.mlflow.tracking_uri: cannot reach" in out and "training without mlflow" in out
    assert pq.read_table(tmp_path / "c" / "metrics.parquet").column("epoch").to_pylist() == [0, 1]
    assert not (tmp_path / "c" / "tracking.json").exists(), "no tracker ran"


def test_only_rank_zero_talks_to_the_trackers(tmp_path):
    from reprlab.platform.run.tracking import Tracking

    cfg = load_config(None, ["tracking.tensorboard.enabled=true", "tracking.mlflow.enabled=true",
                             f"tracking.mlflow.tracking_uri={tmp_path / 'mlruns'}"])
    other = Tracking.open(cfg, tmp_path / "run", rank=1)
    other.epoch({"epoch": 0.0, "val/map@r": 0.5})
    other.close()
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()
    (tmp_path / "run").mkdir()
    zero = Tracking.open(cfg, tmp_path / "run", rank=0)
    zero.epoch({"epoch": 0.0, "val/map@r": 0.5})
    zero.close()
    assert [(t, s, v) for t, s, v in _tb_events(tmp_path / "run" / "tensorboard") if t == "val/map_at_r"] == [
        ("val/map_at_r", 0, 0.5)]
    (run,) = _client(tmp_path).search_runs([_client(tmp_path).get_experiment_by_name("glyphs-margin").experiment_id])
    assert _history(_client(tmp_path), run.info.run_id, "val/map_at_r") == [(0, 0.5)]


# ---- a run, and its resume ------------------------------------------------------------------------------


def test_run_logs_to_all_three_and_a_resume_continues_the_same_runs_logging_each_epoch_once(tiny, tmp_path):
    out = tmp_path / "run"
    common = tiny + ["scaling.num_workers=0", "checkpoint.keep=3", "experiment.name=track-resume",
                     *_all_three(tmp_path)]
    run_training(load_config(None, common + ["train.epochs=2"]), out)
    first_state = json.loads((out / "tracking.json").read_text())
    # killed after the trackers logged epoch 2 but before its checkpoint: the resume redoes epoch 2
    shutil.rmtree(out / "checkpoints" / "epoch_0002")
    summary = run_training(load_config(None, common + ["train.epochs=3"]), out, resume=True)
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    state = json.loads((out / "tracking.json").read_text())
    assert state["mlflow"]["run_id"] == first_state["mlflow"]["run_id"]
    assert state["wandb"]["run_id"] == first_state["wandb"]["run_id"]

    # MLflow: one run, the resolved config as params, tags, every epoch once, the summary's test numbers
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("track-resume")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == state["mlflow"]["run_id"] and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.003" and params["method.name"] == "margin" and params["data.name"] == "glyphs"
    assert params["train.epochs"] == "2", "a param keeps its first value"
    assert run.data.tags["dataset"] == "glyphs" and run.data.tags["method"] == "margin"
    assert _history(client, run.info.run_id, "train/loss") == [(e, pytest.approx(rows[e]["train/loss"]))
                                                                for e in (1, 2, 3)]
    assert [s for s, _ in _history(client, run.info.run_id, "val/map_at_r")] == [0, 1, 2, 3]
    assert run.data.metrics["summary/test/recall_at_1"] == pytest.approx(summary["test"]["recall@1"])

    # TensorBoard: both event files (run and resume) together hold each epoch once
    events = _tb_events(out / "tensorboard")
    counts = Counter((t, s) for t, s, _ in events)
    assert sorted(s for t, s in counts if t == "train/loss") == [1, 2, 3]
    assert sorted(s for t, s in counts if t == "test/recall_at_1") == [0, 1, 2, 3]
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    losses = {s: v for t, s, v in events if t == "train/loss"}
    assert losses == {e: pytest.approx(rows[e]["train/loss"], rel=1e-6) for e in (1, 2, 3)}  # float32
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2

    # W&B offline: two run directories (run, resume) of one run id; epochs once; config, tags, summary
    runs = _wandb_runs(out)
    assert len(runs) == 2 and {r["id"] for r in runs} == {state["wandb"]["run_id"]}
    assert all(r["group"] == "track-resume" and r["project"] == "reprlab-tests" for r in runs)
    assert {"dataset:glyphs", "method:margin"} <= set(runs[0]["tags"])
    assert runs[0]["config"]["optim"]["lr"] == 0.003 and runs[0]["config"]["method"]["name"] == "margin"
    logged = [h for r in runs for h in r["history"] if "epoch" in h]
    assert sorted(h["epoch"] for h in logged) == [0, 1, 2, 3]
    assert {h["epoch"]: h["train/loss"] for h in logged if "train/loss" in h} == {
        e: pytest.approx(rows[e]["train/loss"]) for e in (1, 2, 3)}
    assert runs[-1]["summary"]["summary/test/recall@1"] == pytest.approx(summary["test"]["recall@1"])


def test_pads_teacher_steps_and_figures_reach_the_trackers(tiny, tmp_path):
    from reprlab.methods.pads import PLOT_FILE

    out = tmp_path / "pads"
    run_training(load_config(None, tiny + ["method.name=pads", "scaling.num_workers=0", "method.iterations_per_step=3",
                                           "train.epochs=1", "experiment.name=track-pads",
                                           "tracking.tensorboard.enabled=true", "tracking.mlflow.enabled=true",
                                           f"tracking.mlflow.tracking_uri={tmp_path / 'mlruns'}"]), out)
    steps = [s for r in pq.read_table(out / "metrics.parquet").to_pylist()[1:] for s in r["steps"]]
    assert len(steps) == 2  # 4 iterations: teacher steps of 3 and 1
    expected = [(int(s["iteration"]), pytest.approx(s["reward"])) for s in steps]

    client = _client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("track-pads").experiment_id])
    assert _history(client, run.info.run_id, "steps/reward") == expected
    assert _history(client, run.info.run_id, "steps/entropy") != []
    figures = [f.path for f in client.list_artifacts(run.info.run_id, "figures/epoch_0001")]
    assert figures == [f"figures/epoch_0001/{PLOT_FILE}"]
    local = client.download_artifacts(run.info.run_id, figures[0], str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (out / PLOT_FILE).read_bytes()

    events = _tb_events(out / "tensorboard")
    assert sorted((s, v) for t, s, v in events if t == "steps/reward") == [
        (i, pytest.approx(r, rel=1e-6)) for i, r in ((int(s["iteration"]), s["reward"]) for s in steps)]
    (image,) = [(s, v) for t, s, v in events if t == f"figures/{Path(PLOT_FILE).stem}"]
    assert image[0] == 1 and image[1][:8] == b"\x89PNG\r\n\x1a\n"


# ---- a sweep ------------------------------------------------------------------------------------------------


def test_sweep_trials_are_runs_of_one_experiment_with_their_params_and_the_best_marked(ray_session, tiny, tmp_path):
    spec = {
        "name": "track-sweep", "base": "margin/glyphs", "overrides": tiny + ["train.epochs=1", *_all_three(tmp_path)],
        "space": {"optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}},
        "searcher": {"name": "random", "seed": 0}, "scheduler": {"name": "none"}, "trials": 2,
        "resources": {"workers": 0, "max_concurrent": 1},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    assert main(["tune", str(tmp_path / "s.yaml"), "--output", str(out)]) == 0
    best = yaml.safe_load((out / "sweep_summary.yaml").read_text())["best_trial"]
    trials = {p.name: json.loads((p / "params.json").read_text()) for p in (out / "trials").iterdir()}
    assert len(trials) == 2

    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("track-sweep").experiment_id])
    assert sorted(r.data.tags["trial"] for r in runs) == sorted(trials)
    for r in runs:
        assert float(r.data.params["optim.lr"]) == pytest.approx(trials[r.data.tags["trial"]]["optim.lr"])
        assert r.data.tags["sweep"] == "track-sweep"
    assert [r.data.tags["trial"] for r in runs if r.data.tags.get("best_trial") == "true"] == [best]

    for trial, params in trials.items():
        wb = _wandb_runs(out / "trials" / trial)
        assert wb and all(r["group"] == "track-sweep" for r in wb)
        assert wb[0]["config"]["sweep_params"] == params
        assert ("best" in wb[-1]["tags"]) == (trial == best)
        assert {t for t, _, _ in _tb_events(out / "trials" / trial / "tensorboard")} >= {"train/loss", "val/map_at_r"}
