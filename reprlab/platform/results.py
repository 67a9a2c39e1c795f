"""Run results: the per-epoch Parquet table, ``summary.json`` and the printed table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reprlab.platform.config import METRIC_KEYS


def write_metrics_table(path: Path, rows: list[dict[str, float]]) -> None:
    """All epochs so far as one Parquet table (rewritten atomically: readers never see half)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    epochs = pa.array([int(r["epoch"]) for r in rows], pa.int64())
    table = table.set_column(table.schema.get_field_index("epoch"), "epoch", epochs)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_metrics_table(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _split_metrics(row: dict[str, Any], split: str) -> dict[str, float]:
    return {k: row[f"{split}/{k}"] for k in METRIC_KEYS if row.get(f"{split}/{k}") is not None}


def make_summary(rows: list[dict[str, Any]], config: dict[str, Any], selection_metric: str) -> dict[str, Any]:
    """``initial`` (epoch 0), ``test`` at the best validation epoch, ``best_test`` (best test
    R@1 epoch, as the papers report), and the resolved ``config``."""
    first, trained = rows[0], [r for r in rows if r["epoch"] > 0] or rows
    has_val = f"val/{selection_metric}" in first
    chosen = max(trained, key=lambda r: r[f"val/{selection_metric}"]) if has_val else trained[-1]
    best = max(trained, key=lambda r: r["test/recall@1"])
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


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def format_summary(summary: dict[str, Any]) -> str:
    """A small table: initial / selected / best-test metrics, in percent."""
    rows = [
        ("initial (epoch 0)", summary["initial"]),
        (f"test @ epoch {summary['selected_epoch']} (by {summary['selection']})", summary["test"]),
        (f"best test (epoch {summary['best_test_epoch']})", summary["best_test"]),
    ]
    keys = [k for k in METRIC_KEYS if k in summary["test"]]
    width = max(len(name) for name, _ in rows)
    head = " " * width + "  " + "  ".join(f"{k:>8}" for k in keys)
    lines = [head] + [
        f"{name:<{width}}  " + "  ".join(f"{100 * m.get(k, float('nan')):8.2f}" for k in keys) for name, m in rows
    ]
    return "\n".join(lines)
