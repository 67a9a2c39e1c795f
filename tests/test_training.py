"""End-to-end training on the platform: in-process and on Ray Train, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reprlab.cli import main
from reprlab.platform.core.config import METRIC_KEYS, load_config
from reprlab.platform.run.driver import run_training
from reprlab.platform.run.results import read_metrics_table

pytestmark = pytest.mark.slow


def _epochs(out: Path) -> list[int]:
    # read_metrics_table, not pq.read_table: the run rewrites the file while the test polls it
    return [row["epoch"] for row in read_metrics_table(out / "metrics.parquet")]


def test_in_process_run_writes_metrics_checkpoints_and_summary(tiny, tmp_path):
    out = tmp_path / "run"
    summary = run_training(load_config(None, tiny + ["scaling.num_workers=0", "train.epochs=3"]), out)
    assert _epochs(out) == [0, 1, 2, 3]
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    assert table[0]["throughput/images_per_s"] == 0 and table[1]["train/loss"] > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("initial", "test", "best_test"):
        assert set(on_disk[key]) == set(METRIC_KEYS)
        assert all(0.0 <= v <= 1.0 for v in on_disk[key].values())
    assert on_disk["initial"]["recall@1"] == table[0]["test/recall@1"]
    best = max(table[1:], key=lambda r: r["test/recall@1"])
    assert on_disk["best_test"]["recall@1"] == best["test/recall@1"]
    chosen = max(table[1:], key=lambda r: r["val/map@r"])
    assert on_disk["test"]["map@r"] == chosen["test/map@r"]
    assert on_disk["config"]["scaling"]["num_workers"] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0002", "epoch_0003"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reprlab.cli", *args]


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tiny, tmp_path):
    sets = [x for s in tiny + ["scaling.num_workers=0", "train.epochs=6", "data.iterations_per_epoch=12"]
            for x in ("--set", s)]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *sets, "--output", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.parquet").exists() and len(_epochs(out)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = _epochs(out)
    assert 3 <= len(done_before_kill) < 7, "the run was killed mid-way"
    res = subprocess.run(_cli("train", "--output", str(out), "--resume"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from the checkpoint of epoch" in res.stdout and "epoch 0 " not in res.stdout
    assert _epochs(out) == list(range(7))

    ref = tmp_path / "straight"
    # the CLI without a config file uses the margin/glyphs preset: so does the reference
    run_training(load_config("margin/glyphs", tiny + ["scaling.num_workers=0", "train.epochs=6",
                                                      "data.iterations_per_epoch=12"]), ref)
    resumed = pq.read_table(out / "metrics.parquet").to_pylist()
    straight = pq.read_table(ref / "metrics.parquet").to_pylist()
    for r, s in zip(resumed, straight):
        for key in ("train/loss", "test/recall@1", "test/map@r", "val/map@r"):
            if key in s:
                assert r[key] == pytest.approx(s[key], abs=1e-6), (r["epoch"], key)


def test_nan_loss_stops_with_one_line_and_keeps_what_was_written(tiny, tmp_path, monkeypatch, capsys):
    from reprlab.methods.margin import Margin

    real_step, real_start = Margin.train_step, Margin.on_epoch_start

    def start(self, epoch):
        self.test_epoch = epoch
        real_start(self, epoch)

    def step(self, batch):
        logs = real_step(self, batch)
        return {**logs, "loss": float("nan")} if self.test_epoch == 2 else logs

    monkeypatch.setattr(Margin, "on_epoch_start", start)
    monkeypatch.setattr(Margin, "train_step", step)
    out = tmp_path / "nan"
    sets = [x for s in tiny + ["scaling.num_workers=0", "train.epochs=3"] for x in ("--set", s)]
    code = main(["train", *sets, "--output", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and "loss became nan at epoch 2" in errors[0]
    assert errors[0].startswith("reprlab: error: training:")
    assert _epochs(out) == [0, 1]
    assert (out / "checkpoints" / "epoch_0001" / "state.pt").is_file()


def test_missing_data_directory_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--set", "data.name=cub", "--set", f"data.root={tmp_path / 'nope'}",
                 "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "directory not found" in err and "\n" not in err
    assert not out.exists()


def test_unreadable_image_is_one_line_naming_the_file(tmp_path, capsys):
    from test_readers import make_cub

    root = tmp_path / "cub"
    bad = sorted((make_cub(root) / "images").glob("101.*/*.jpg"))[0]  # a test image: read at epoch 0
    bad.write_bytes(b"not a jpeg")
    sets = ["data.name=cub", f"data.root={root}", "data.image_size=16", "data.classes_per_batch=2",
            "data.samples_per_class=2", "data.validation.protocol=none", "model.width=4",
            "model.embed_dim=8", "train.epochs=1", "scaling.num_workers=0", "eval.kmeans_niter=2"]
    code = main(["train", *[x for s in sets for x in ("--set", s)], "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read image" in err and bad.name in err and "\n" not in err


def test_query_gallery_benchmark_trains_and_evaluates_query_against_gallery(tmp_path):
    from test_readers import make_inshop

    root = make_inshop(tmp_path / "inshop")
    sets = ["data.name=inshop", f"data.root={root}", "data.image_size=16", "data.classes_per_batch=2",
            "data.samples_per_class=2", "data.validation.protocol=none", "model.width=4",
            "model.embed_dim=8", "train.epochs=1", "scaling.num_workers=0", "eval.kmeans_niter=2"]
    summary = run_training(load_config(None, sets), tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    assert "val/recall@1" not in rows[0] and summary["selection"].startswith("last epoch")
    # 3 queries, each with a same-item gallery image: recall@4 over a 3-image gallery is 1
    assert summary["test"]["recall@4"] == 1.0
