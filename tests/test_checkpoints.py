"""Checkpoints are read safely: a corrupt or truncated one is one line, and the run falls back."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from reprlab.cli import main
from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.run.driver import run_training

pytestmark = pytest.mark.slow


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_truncated_checkpoint_falls_back_to_the_previous_one(tiny, tmp_path, capfd):
    out = tmp_path / "run"
    common = tiny + ["scaling.num_workers=0"]
    run_training(load_config(None, common + ["train.epochs=3"]), out)
    _truncate(out / "checkpoints" / "epoch_0003" / "state.pt")
    capfd.readouterr()
    run_training(load_config(None, common + ["train.epochs=4"]), out, resume=True)
    printed = capfd.readouterr().out
    line = next(l for l in printed.splitlines() if "cannot read" in l)
    assert "epoch_0003/state.pt" in line and line.endswith("falling back to epoch_0002")
    assert "resumed from the checkpoint of epoch 2" in printed
    assert pq.read_table(out / "metrics.parquet").column("epoch").to_pylist() == [0, 1, 2, 3, 4]


def test_no_readable_checkpoint_is_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--output", str(out), *[a for o in tiny + ["scaling.num_workers=0", "train.epochs=2"] for a in ("--set", o)]]
    assert main(args) == 0
    for state in (out / "checkpoints").glob("epoch_*/state.pt"):
        state.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reprlab: error: checkpoint: no readable checkpoint is left to resume from"]
    assert pq.read_table(out / "metrics.parquet").column("epoch").to_pylist() == [0, 1, 2], "nothing lost"


def test_corrupt_ray_checkpoint_falls_back(ray_session, tiny, tmp_path, capfd):
    out = tmp_path / "run"
    common = tiny + ["scaling.num_workers=2"]
    # one trained epoch: Ray registers epoch_0001 as its latest checkpoint, epoch_0000 beside it
    run_training(load_config(None, common + ["train.epochs=1"]), out)
    first = pq.read_table(out / "metrics.parquet").to_pylist()
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(load_config(None, common), out)  # without resume
    newest = sorted((out / "ray").rglob("epoch_0001/state.pt"))
    assert newest, "Ray persisted epoch 1"
    assert sorted((out / "ray").rglob("epoch_0000/state.pt")), "and kept epoch 0"
    _truncate(newest[0])
    capfd.readouterr()
    run_training(load_config(None, common + ["train.epochs=2"]), out, resume=True)
    printed = capfd.readouterr().out
    assert "falling back to epoch_0000" in printed and "resumed from the checkpoint of epoch 0" in printed
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0] == first[0], "the epoch before the checkpoint is not repeated"
