"""Run results: the per-epoch Parquet table, ``summary.json`` and the printed table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reprlab.platform.core.config import METRIC_KEYS
from reprlab.platform.core.storage import Location, resolve


def write_parquet(target: Path | str | Location, table: pa.Table) -> None:
    """``table`` as one Parquet file in run storage (replaced whole: readers never see half)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    resolve(target).write_bytes(sink.getvalue().to_pybytes())


def write_metrics_table(path: Path | str | Location, rows: list[dict[str, float]]) -> None:
    """All epochs so far as one Parquet table (rewritten atomically: readers never see half)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    epochs = pa.array([int(r["epoch"]) for r in rows], pa.int64())
    table = table.set_column(table.schema.get_field_index("epoch"), "epoch", epochs)
    write_parquet(path, table)


def read_metrics_table(path: Path | str | Location) -> list[dict[str, Any]]:
    """The table's rows; a file that is not a readable Parquet table is one StorageError line."""
    from reprlab.platform.core.errors import StorageError

    loc = resolve(path)
    # The whole file through one handle, then parsed: a path handed to Parquet is stat-ed and then
    # opened, and a writer's rename in between makes the size it expects disagree with the file.
    data = loc.read_bytes()
    try:
        return pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        reason = (" ".join(str(exc).split()) or type(exc).__name__)[:200]
        raise StorageError(f"storage: cannot read {loc}: {reason}") from None


def _split_metrics(row: dict[str, Any], split: str) -> dict[str, float]:
    """The split's metrics in the order the method reported them (retrieval: METRIC_KEYS)."""
    prefix = f"{split}/"
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v is not None}


def _value(row: dict[str, Any], key: str) -> float | None:
    """``row[key]`` as a float, or None when the row lacks it: an epoch that skipped evaluation
    (``eval.every``, ``eval.test``) has no key in memory and a null (or NaN) once read back from
    Parquet, where ``write_metrics_table`` fills missing columns."""
    v = row.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


SELECTABLE = "method/selectable"


def selectable(row: dict[str, Any]) -> bool:
    """Whether an epoch may be the reported one: a method marks epochs that must not be by
    reporting ``selectable: 0`` among its ``epoch_metrics`` (e.g. the dense-correspondence
    method's epochs before its flow net trains); rows without the key are selectable."""
    return _value(row, SELECTABLE) != 0.0


def make_summary(rows: list[dict[str, Any]], config: dict[str, Any], selection_metric: str) -> dict[str, Any]:
    """``initial`` (epoch 0), ``test`` at the best validation epoch, ``best_test`` (the epoch with
    the best test headline metric of the method, R@1 for DML, as the papers report), and the
    resolved ``config``. Metrics the method minimizes (losses, distances) count lower as better.
    Only epochs that evaluated the split take part (``eval.every``, ``eval.test``), and only
    :func:`selectable` ones while there are any; of equal values the first epoch wins
    (``eval.test=on_improvement`` evaluates test exactly there)."""
    from reprlab.platform.core.registry import METHODS

    method = METHODS.get(config["method"]["name"])
    sign = {m: -1.0 if m in method.lower_is_better else 1.0 for m in (selection_metric, method.headline_metric)}
    first = rows[0]
    trained = ([r for r in rows if r["epoch"] > 0 and selectable(r)] or [r for r in rows if r["epoch"] > 0]
               or rows)

    def having(key: str) -> list[dict[str, Any]]:  # trained rows with the metric, else any row with it
        return ([r for r in trained if _value(r, key) is not None]
                or [r for r in rows if _value(r, key) is not None])

    val_key, test_key = f"val/{selection_metric}", f"test/{method.headline_metric}"
    with_val, with_test = having(val_key), having(test_key)
    has_val = bool(with_val)
    if has_val:
        chosen = max(with_val, key=lambda r: sign[selection_metric] * _value(r, val_key))
    else:  # the last epoch that evaluated test
        chosen = with_test[-1] if with_test else trained[-1]
    best = max(with_test, key=lambda r: sign[method.headline_metric] * _value(r, test_key)) if with_test else chosen
    return {
        "initial": _split_metrics(first, "test"),
        "test": _split_metrics(chosen, "test"),
        "selected_epoch": int(chosen["epoch"]),
        "selection": f"val/{selection_metric}" if has_val else "last epoch (no validation split)",
        "val": _split_metrics(chosen, "val") if has_val else {},
        "best_test": _split_metrics(best, "test"),
        "best_test_epoch": int(best["epoch"]),
        "epochs_completed": int(rows[-1]["epoch"]),
        "config": config,
    }


def run_health(rows: list[dict[str, Any]], cfg) -> dict[str, str]:
    """``status`` of a finished run and why: ``diverged`` when the last evaluated epoch has a
    non-finite metric that was not already non-finite before training (epoch 0: a metric the run
    does not compute, such as SSIM against experts a split has not got), ``collapsed`` when its
    test headline metric (R@1 for metric learning; only metrics that are maximized) fell below
    half of the untrained epoch 0's (an embedding that lost its spread retrieves at chance), else
    ``completed``. The CLI exits with status 3 on the first two, after printing the summary."""
    from reprlab.platform.core.registry import METHODS

    method = METHODS.get(cfg.method.name)
    evaluated = [r for r in rows if any(k.startswith("test/") and r.get(k) is not None for k in r)]
    if not evaluated:
        return {"status": "completed", "status_reason": ""}
    last = evaluated[-1]

    def finite(v: Any) -> bool:
        return not isinstance(v, float) or math.isfinite(v)

    untrained = rows[0] if rows[0].get("epoch") == 0 else {}
    undefined = {k for k, v in untrained.items() if not finite(v)}
    bad = [k for k, v in last.items() if "/" in k and k.split("/")[0] in ("train", "val", "test")
           and not finite(v) and k not in undefined]
    if bad:
        return {"status": "diverged", "status_reason": f"{bad[0]} is {last[bad[0]]} at epoch {int(last['epoch'])}"}
    key = f"test/{method.headline_metric}"
    first = _value(rows[0], key)
    now = _value(last, key)
    if (method.headline_metric not in method.lower_is_better and last["epoch"] > 0 and first and now is not None
            and now < 0.5 * first):
        shown = (lambda v: f"{100 * v:.1f}") if method.headline_metric in METRIC_KEYS else (lambda v: f"{v:.4g}")
        return {"status": "collapsed",
                "status_reason": f"{key} fell from {shown(first)} (untrained, epoch 0) to {shown(now)} at epoch "
                                 f"{int(last['epoch'])}, below half: the model lost what it could tell apart "
                                 f"(e.g. optim.lr={cfg.optim.lr:g} too large)"}
    return {"status": "completed", "status_reason": ""}


def write_summary(path: Path | str | Location, summary: dict[str, Any]) -> None:
    resolve(path).write_text(json.dumps(summary, indent=2))


def format_summary(summary: dict[str, Any]) -> str:
    """A small table: initial / selected / best-test metrics, in percent."""
    rows = [
        ("initial (epoch 0)", summary["initial"]),
        (f"test @ epoch {summary['selected_epoch']} (by {summary['selection']})", summary["test"]),
        (f"best test (epoch {summary['best_test_epoch']})", summary["best_test"]),
    ]
    keys = list(summary["test"])
    cols = [max(8, len(k)) for k in keys]

    def cell(k: str, m: dict[str, float], w: int) -> str:  # retrieval metrics in percent, others as they are
        v = m.get(k, float("nan"))
        return f"{100 * v:{w}.2f}" if k in METRIC_KEYS else f"{v:{w}.4g}"

    width = max(len(name) for name, _ in rows)
    head = " " * width + "  " + "  ".join(f"{k:>{w}}" for k, w in zip(keys, cols))
    lines = [head] + [f"{name:<{width}}  " + "  ".join(cell(k, m, w) for k, w in zip(keys, cols)) for name, m in rows]
    return "\n".join(lines)
