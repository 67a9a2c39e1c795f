"""``reprlab bench train`` (ours vs PML's trainer) and ``reprlab bench overhead`` on tiny runs.
Only what they measure and how they report it; no timing is asserted."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq

from reprlab.cli import main


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_bench_train_times_both_trainers_after_the_warm_up(tiny, tmp_path, capsys):
    out = tmp_path / "train.json"
    args = ["bench", "train", *_sets(tiny), "--iterations", "3", "--warmup", "2", "--rounds", "2",
            "--threads", "1", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["batch"] == 32 and result["threads"] == 1 and len(result["runs"]) == 2
    for run in result["runs"]:
        assert run["ours_images_per_s"] > 0 and run["pml_images_per_s"] > 0
        assert math.isclose(run["ratio"], run["ours_images_per_s"] / run["pml_images_per_s"])
        assert 0 < run["ours_loss"] < 2 and 0 < run["pml_loss"] < 2  # margin 0.2, beta 1.2: both train
    printed = capsys.readouterr().out
    assert "median ours / PML" in printed and "| 2 |" in printed


def test_bench_train_refuses_other_methods(tiny, capsys):
    assert main(["bench", "train", *_sets(tiny + ["method.name=mic"])]) == 2
    assert "bench train: compares the margin method" in capsys.readouterr().err


def test_bench_overhead_splits_the_time_to_the_first_step_and_each_epoch(tiny, tmp_path, capsys):
    out = tmp_path / "oh"
    args = ["bench", "overhead", *_sets(tiny + ["scaling.num_workers=0"]), "--epochs", "3", "--output", str(out),
            "--json", str(tmp_path / "oh.json")]
    assert main(args) == 0
    r = json.loads((tmp_path / "oh.json").read_text())
    rows = pq.read_table(out / "run" / "metrics.parquet").to_pylist()
    assert rows[0].get("time/first_step_at") is None  # epoch 0 trains nothing
    for row in rows[1:]:
        assert row["time/started_at"] < row["time/first_step_at"] < row["time/started_at"] + row["time/train_s"]
    assert 0 < r["startup_s"] < r["to_first_step_s"] < r["process_s"]
    assert math.isclose(r["to_first_step_s"], r["startup_s"] + r["epoch0_s"] + r["epoch1_to_first_step_s"])
    assert [e["epoch"] for e in r["per_epoch"]] == [1, 2]
    for e in r["per_epoch"]:
        assert math.isclose(e["wall_s"], e["train_s"] + e["eval_s"] + e["rest_s"])
        assert e["rest_s"] > 0 and 0 < e["overhead_without_eval"] < e["overhead"] < 1
    assert "process start -> first optimizer step" in capsys.readouterr().out
