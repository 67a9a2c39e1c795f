"""``eval.every`` and ``eval.test=on_improvement``: fewer evaluations, the same summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from reprlab.platform.core.config import METRIC_KEYS, load_config
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.run.results import make_summary, read_metrics_table, write_metrics_table
from reprlab.platform.run.driver import run_training
from reprlab.platform.run.loop import _evaluate, best_val, is_eval_epoch
from reprlab.platform.tune.sweep import load_sweep

TEST_KEYS = ("recall@1", "map@r", "nmi")


def _has(row: dict, split: str, metric: str = "map@r") -> bool:
    v = row.get(f"{split}/{metric}")
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _improved_epochs(rows: list[dict], metric: str = "map@r", lower: bool = False) -> list[int]:
    """Epochs where test must be evaluated under on_improvement: epoch 0, and every trained epoch
    whose val metric strictly beats every earlier trained epoch's."""
    out, best = [], None
    for r in rows:
        if r["epoch"] == 0:
            out.append(0)
            continue
        if not _has(r, "val", metric):
            continue
        v = r[f"val/{metric}"]
        if best is None or (v < best if lower else v > best):
            best = v
            out.append(int(r["epoch"]))
    return out


# ---- the schedule in the epoch loop, with a scripted method ----------------------------------------


class _Scripted:
    """A method whose val metric follows a script; it records which splits were evaluated."""

    def __init__(self, values: dict[int, float], metric: str) -> None:
        self.values, self.metric, self.calls, self.epoch = values, metric, [], 0

    def evaluate(self, split: str) -> dict[str, float]:
        self.calls.append((self.epoch, split))
        return {self.metric: self.values[self.epoch] if split == "val" else 1.0 + self.epoch}


def _schedule(sets: list[str], values: dict[int, float], splits=("val", "test"), start_history=None):
    cfg = load_config(None, sets)
    method = _Scripted(values, cfg.eval.selection_metric)
    ctx = SimpleNamespace(cfg=cfg, data=SimpleNamespace(eval_splits={s: None for s in splits}))
    history = list(start_history or [])
    for epoch in range(len(history), cfg.train.epochs + 1):
        method.epoch = epoch
        history.append({"epoch": float(epoch), **_evaluate(method, ctx, epoch, history)})
    return history, method.calls


def test_every_evaluates_epoch_zero_the_multiples_and_the_last_epoch():
    cfg = load_config(None, ["eval.every=3", "train.epochs=7"])
    assert [e for e in range(8) if is_eval_epoch(e, cfg)] == [0, 3, 6, 7]
    rows, calls = _schedule(["eval.every=3", "train.epochs=7"], {e: 0.1 * e for e in range(8)})
    assert sorted({e for e, _ in calls}) == [0, 3, 6, 7]
    assert [int(r["epoch"]) for r in rows if "val/map@r" in r] == [0, 3, 6, 7]
    assert all(set(r) == {"epoch"} for r in rows if r["epoch"] in (1, 2, 4, 5))
    assert load_config(None, []).eval.every == 1 and load_config(None, []).eval.test == "every"
    with pytest.raises(ConfigError, match="eval.every"):
        load_config(None, ["eval.every=0"])
    with pytest.raises(ConfigError, match="eval.test"):
        load_config(None, ["eval.test=sometimes"])


def test_on_improvement_evaluates_test_only_when_val_strictly_improves():
    values = {0: 0.9, 1: 0.5, 2: 0.3, 3: 0.6, 4: 0.6, 5: 0.2, 6: 0.7}  # epoch 0 is no bar to beat
    rows, calls = _schedule(["eval.test=on_improvement", "train.epochs=6"], values)
    assert [e for e, s in calls if s == "test"] == [0, 1, 3, 6]  # 4 ties 3: no improvement
    assert [e for e, s in calls if s == "val"] == list(range(7))
    assert all(calls.index((e, "val")) < calls.index((e, "test")) for e in (1, 3, 6))  # val first
    assert [int(r["epoch"]) for r in rows if "test/map@r" in r] == _improved_epochs(rows) == [0, 1, 3, 6]


def test_on_improvement_respects_lower_is_better_and_every():
    values = {0: 0.1, 1: 0.5, 2: 0.6, 3: 0.4, 4: 0.45, 5: 0.4, 6: 0.3, 7: 0.35, 8: 0.2}
    sets = ["method.name=autoencoder", "eval.test=on_improvement", "eval.every=2", "train.epochs=7"]
    rows, calls = _schedule(sets, values)  # mse: lower is better; evaluated epochs 0, 2, 4, 6, 7
    assert sorted({e for e, _ in calls}) == [0, 2, 4, 6, 7]
    assert [e for e, s in calls if s == "test"] == [0, 2, 4, 6]
    assert _improved_epochs(rows, "mse", lower=True) == [0, 2, 4, 6]
    summary = make_summary(rows, load_config(None, sets).to_dict(), "mse")
    assert summary["selected_epoch"] == 6 and summary["test"] == {"mse": 7.0}


def test_on_improvement_without_a_val_split_evaluates_test_at_every_evaluation_epoch():
    rows, calls = _schedule(["eval.test=on_improvement", "eval.every=2", "train.epochs=5"], {},
                            splits=("test",))
    assert [e for e, s in calls if s == "test"] == [0, 2, 4, 5]


def test_best_so_far_is_recomputed_from_the_history_on_resume():
    values = {0: 0.9, 1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6}
    sets = ["eval.test=on_improvement", "train.epochs=4"]
    straight, _ = _schedule(sets, values)
    # a resume after epoch 2: the history (from the checkpoint) is all it knows
    assert best_val(straight[:3], "map@r", False) == 0.5  # epoch 0 does not count
    resumed, calls = _schedule(sets, values, start_history=straight[:3])
    assert [e for e, s in calls if s == "test"] == [4]  # 3 (0.4) does not beat epoch 1 (0.5)
    assert resumed == straight
    # read back from Parquet: the skipped epochs hold nulls
    assert best_val([{"epoch": 1.0, "val/map@r": None}, {"epoch": 2.0, "val/map@r": float("nan")},
                     {"epoch": 3.0, "val/map@r": 0.2}], "map@r", True) == 0.2


# ---- make_summary on rows with missing or null splits ----------------------------------------------


def _row(epoch: int, val: float | None = None, test: float | None = None) -> dict:
    row = {"epoch": float(epoch), "time/eval_s": 0.0}
    if val is not None:
        row.update({"val/recall@1": val, "val/map@r": val, "val/nmi": val})
    if test is not None:
        row.update({"test/recall@1": test, "test/map@r": test, "test/nmi": test})
    return row


MARGIN = {"method": {"name": "margin"}}


def test_summary_skips_epochs_without_val_or_test(tmp_path):
    rows = [_row(0, 0.1, 0.1), _row(1), _row(2, 0.5, 0.4), _row(3), _row(4, 0.5, 0.9), _row(5, 0.3, 0.2)]
    expected = {
        "initial": dict.fromkeys(TEST_KEYS, 0.1), "test": dict.fromkeys(TEST_KEYS, 0.4), "selected_epoch": 2,
        "val": dict.fromkeys(TEST_KEYS, 0.5), "best_test": dict.fromkeys(TEST_KEYS, 0.9), "best_test_epoch": 4,
        "epochs_completed": 5, "selection": "val/map@r",
    }
    in_memory = make_summary(rows, MARGIN, "map@r")
    assert {k: in_memory[k] for k in expected} == expected
    # read back from Parquet the missing keys are nulls (and a NaN counts as missing too)
    write_metrics_table(tmp_path / "m.parquet", rows)
    back = read_metrics_table(tmp_path / "m.parquet")
    assert back[1]["val/map@r"] is None and back[3]["test/recall@1"] is None
    from_disk = make_summary(back, MARGIN, "map@r")
    assert {k: from_disk[k] for k in expected} == expected
    back[3]["val/map@r"] = float("nan")
    assert make_summary(back, MARGIN, "map@r")["selected_epoch"] == 2


def test_summary_on_improvement_rows_selects_an_epoch_with_test_metrics():
    # val at every epoch, test only where val improved: the first best (epoch 2) has test
    rows = [_row(0, 0.1, 0.1), _row(1, 0.2, 0.3), _row(2, 0.6, 0.5), _row(3, 0.6), _row(4, 0.4)]
    s = make_summary(rows, MARGIN, "map@r")
    assert s["selected_epoch"] == 2 and s["test"] == dict.fromkeys(TEST_KEYS, 0.5)
    assert s["best_test_epoch"] == 2 and s["epochs_completed"] == 4


def test_summary_fallbacks_only_epoch_zero_and_no_val_split():
    s = make_summary([_row(0, 0.2, 0.3)], MARGIN, "map@r")
    assert s["selected_epoch"] == 0 and s["test"] == s["initial"] == dict.fromkeys(TEST_KEYS, 0.3)
    # an interrupted every=2 run: epoch 1 trained but evaluated nothing; epoch 0 is what there is
    s = make_summary([_row(0, 0.2, 0.3), _row(1)], MARGIN, "map@r")
    assert (s["selected_epoch"], s["best_test_epoch"], s["epochs_completed"]) == (0, 0, 1)
    # no val split: the last epoch that evaluated test
    s = make_summary([_row(0, None, 0.3), _row(1, None, 0.6), _row(2, None, 0.4), _row(3)], MARGIN, "map@r")
    assert s["selection"] == "last epoch (no validation split)" and s["val"] == {}
    assert (s["selected_epoch"], s["best_test_epoch"]) == (2, 1)


# ---- end to end: tiny glyphs runs in-process -------------------------------------------------------


def _run(tiny, out: Path, extra: list[str], resume: bool = False) -> tuple[dict, list[dict]]:
    cfg = load_config(None, tiny + ["scaling.num_workers=0", *extra])
    summary = run_training(cfg, out, resume=resume)
    return summary, read_metrics_table(out / "metrics.parquet")


def _close(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


@pytest.mark.slow
def test_every_2_run_evaluates_epochs_0_2_3_and_summarizes_them(tiny, tmp_path):
    out = tmp_path / "run"
    summary, rows = _run(tiny, out, ["eval.every=2", "train.epochs=3"])
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [int(r["epoch"]) for r in rows if _has(r, "val")] == [0, 2, 3]
    assert [int(r["epoch"]) for r in rows if _has(r, "test")] == [0, 2, 3]
    assert all(v is None for k, v in rows[1].items() if k.startswith(("val/", "test/")))
    assert all(r["time/eval_s"] is not None for r in rows) and rows[1]["train/loss"] > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    chosen = max([rows[2], rows[3]], key=lambda r: r["val/map@r"])
    assert on_disk["selected_epoch"] == chosen["epoch"] and on_disk["test"]["map@r"] == chosen["test/map@r"]
    best = max([rows[2], rows[3]], key=lambda r: r["test/recall@1"])
    assert on_disk["best_test_epoch"] == best["epoch"]
    assert set(on_disk["test"]) == set(on_disk["initial"]) == set(METRIC_KEYS)


@pytest.mark.slow
def test_on_improvement_run_reports_the_same_summary_and_survives_resume(tiny, tmp_path):
    sets = ["train.epochs=4", "optim.lr=0.03"]  # a high rate: val need not rise every epoch
    every, every_rows = _run(tiny, tmp_path / "every", sets)
    lazy, lazy_rows = _run(tiny, tmp_path / "lazy", sets + ["eval.test=on_improvement"])
    # the same training and validation; test exactly where val improved
    for a, b in zip(every_rows, lazy_rows):
        assert b["val/map@r"] == pytest.approx(a["val/map@r"], abs=1e-6)
        if a["epoch"] > 0:
            assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-6)
    assert [int(r["epoch"]) for r in lazy_rows if _has(r, "test")] == _improved_epochs(lazy_rows)
    assert lazy["selected_epoch"] == every["selected_epoch"]
    for key in ("test", "initial", "val"):
        assert _close(lazy[key], every[key]), key

    # stopped after epoch 2, resumed to epoch 4: the best-so-far comes back with the history
    out = tmp_path / "resumed"
    _run(tiny, out, ["train.epochs=2", "optim.lr=0.03", "eval.test=on_improvement"])
    resumed, resumed_rows = _run(tiny, out, sets + ["eval.test=on_improvement"], resume=True)
    assert [int(r["epoch"]) for r in resumed_rows] == [0, 1, 2, 3, 4]
    assert [_has(r, "test") for r in resumed_rows] == [_has(r, "test") for r in lazy_rows]
    assert resumed["selected_epoch"] == lazy["selected_epoch"] and _close(resumed["test"], lazy["test"])


# ---- sweeps refuse a schedule that leaves epochs without the metric --------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"overrides": ["eval.every=2"]}, "eval.every"),
        ({"overrides": ["eval.test=on_improvement"], "metric": "test/recall@1"}, "eval.test"),
        ({"space": {"eval.every": {"type": "categorical", "values": [1, 3]}}}, "eval.every"),
    ],
)
def test_sweep_refuses_a_sparse_evaluation_schedule(tmp_path, change, key):
    spec = {"name": "s", "base": "margin/glyphs", "space": {"optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}}}
    spec.update(change)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert msg.startswith("sweep: s.yaml: ") and f"{key} must be" in msg and "in a sweep" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="eval.every must be 1 in a sweep"):
        load_sweep(_spec_file(tmp_path), ["eval.every=2"])  # also from --set


def test_sweep_on_a_val_metric_accepts_test_on_improvement(tmp_path):
    sweep = load_sweep(_spec_file(tmp_path), ["eval.test=on_improvement"])  # the metric is val/map@r
    assert sweep.trial_config({}).eval.test == "on_improvement"


def _spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "base": "margin/glyphs",
                                    "space": {"optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}}}))
    return path


def test_epochs_a_method_marks_unselectable_are_not_reported_nor_count_as_the_best_val():
    # epochs 1-2 carry a better val than the selectable epochs 3-4 (the dense-correspondence
    # method's feature epochs, before its flow net trains): the summary reports epoch 4, and
    # best_val (which decides eval.test=on_improvement) ignores them. Catches the flag ignored.
    rows = [_row(0, 0.1, 0.1), _row(1, 0.9, 0.9), _row(2, 0.8, 0.8), _row(3, 0.3, 0.3), _row(4, 0.4, 0.5)]
    for r in rows[1:3]:
        r["method/selectable"] = 0.0
    for r in rows[3:]:
        r["method/selectable"] = 1.0
    s = make_summary(rows, MARGIN, "map@r")
    assert (s["selected_epoch"], s["best_test_epoch"]) == (4, 4) and s["test"] == dict.fromkeys(TEST_KEYS, 0.5)
    assert best_val(rows, "map@r", False) == 0.4
    # a run stopped before any selectable epoch still reports its best trained one
    assert make_summary(rows[:3], MARGIN, "map@r")["selected_epoch"] == 1
