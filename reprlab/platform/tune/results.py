"""What a sweep leaves behind: ``trials.parquet`` (one row per trial and reported epoch, with its
parameters and status), ``best.yaml`` (the best trial's experiment, ready for ``reprlab train``),
a printed leaderboard and ``params.png`` (the metric against each swept parameter)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from reprlab.platform.core.storage import Location, resolve

if TYPE_CHECKING:
    from reprlab.platform.tune.sweep import Sweep

REPORTED = ("epoch", "train/loss")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _trial_id(path: str) -> str:
    """Tune's trial directories are named ``<trainable>_<trial id>_<n>_<params>_<time>``."""
    match = re.match(r"[A-Za-z_]*?_([0-9a-f]{5,})_\d+", Path(path).name)
    return match.group(1) if match else Path(path).name


def _error_line(exc: BaseException) -> str:
    from reprlab.platform.run.driver import user_error

    err = user_error(exc)
    return str(err) if err is not None else f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"


def trial_rows(sweep: Sweep, grid, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per (trial, report): trial id, status, parameters, epoch and metrics; a failed
    trial's one-line error goes into ``errors``."""
    errors = {} if errors is None else errors
    spec = sweep.spec
    epochs = sweep.epochs
    rows: list[dict[str, Any]] = []
    for result in grid:
        df = result.metrics_dataframe
        reports = [] if df is None else df.to_dict("records")
        trial_id = (reports[-1].get("trial_id") if reports else None) or _trial_id(result.path)
        trained = [r for r in reports if r.get("epoch", 0) > 0]
        if result.error is not None:
            status = "error"
            errors.setdefault(trial_id, _error_line(result.error))
        elif len(trained) < epochs:
            status = "stopped early"
        else:
            status = "completed"
        params = {f"param/{k}": result.config.get(k) for k in spec.space}
        for r in reports or [{}]:
            row = {"trial": trial_id, "status": status, **params}
            row.update({k: float(v) for k, v in r.items() if ("/" in k or k == "epoch") and _number(v)})
            rows.append(row)
    return rows


def leaderboard(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Per trial: its best metric value, the epoch of it, epochs trained, status, parameters."""
    sign = 1 if mode == "max" else -1
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if not _number(r.get(metric)) or r.get("epoch", 0) < 1:
            continue
        t = best.setdefault(r["trial"], {"trial": r["trial"], "status": r["status"], "value": -math.inf * sign,
                                         "epochs": 0, **{k: v for k, v in r.items() if k.startswith("param/")}})
        t["epochs"] = max(t["epochs"], int(r["epoch"]))
        if sign * r[metric] > sign * t["value"]:
            t["value"], t["epoch"] = r[metric], int(r["epoch"])
    return sorted(best.values(), key=lambda t: -sign * t["value"])


def format_leaderboard(board: list[dict[str, Any]], metric: str, top: int = 10) -> str:
    if not board:
        return "no trial reported " + metric
    params = [k for k in board[0] if k.startswith("param/")]
    head = ["rank", "trial", metric, "epoch", "epochs", "status", *(p.removeprefix("param/") for p in params)]
    lines = [head]
    for i, t in enumerate(board[:top], 1):
        lines.append([str(i), t["trial"], f"{t['value']:.4f}", str(t.get("epoch", "")), str(t["epochs"]),
                      t["status"], *(_fmt(t[p]) for p in params)])
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_parameters(board: list[dict[str, Any]], sweep: Sweep, path: Path | str | Location) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep.spec.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [t[f"param/{key}"] for t in board]
        numeric = all(_number(x) for x in values)
        labels = sorted({str(x) for x in values})
        for status, filled in (("completed", True), ("stopped early", False), ("error", False)):
            mine = [t for t in board if t["status"] == status]
            if not mine:
                continue
            xs = [t[f"param/{key}"] if numeric else labels.index(str(t[f"param/{key}"])) for t in mine]
            ax.scatter(xs, [t["value"] for t in mine], label=status,
                       facecolors="C0" if filled else "none", edgecolors="C0" if filled else "C3")
        if numeric and sweep.spec.space[key].type == "logfloat":
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {sweep.spec.metric}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.spec.name}: {len(board)} trials")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    resolve(path).write_bytes(png.getvalue())


def collect_results(sweep: Sweep, output: Path | str | Location, grid) -> dict[str, Any]:
    """Write the sweep's results into ``output`` (a local directory or object storage)."""
    import pyarrow as pa

    from reprlab.platform.run.results import write_parquet

    output = resolve(output)
    spec = sweep.spec
    errors: dict[str, str] = {}
    rows = trial_rows(sweep, grid, errors)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # union: epoch 0 has no train/loss
    write_parquet(output / "trials.parquet", pa.table({c: [row.get(c) for row in rows] for c in columns}))
    board = leaderboard(rows, spec.metric, spec.mode)
    summary: dict[str, Any] = {
        "trials": len({r["trial"] for r in rows}),
        "trial_epochs": sum(t["epochs"] for t in board) * (spec.kfold.folds if spec.kfold else 1),
        "errors": errors,
    }
    print(format_leaderboard(board, spec.metric), flush=True)
    if board:
        best = board[0]
        params = {k.removeprefix("param/"): v for k, v in best.items() if k.startswith("param/")}
        cfg = sweep.trial_config(params)
        (output / "best.yaml").write_text(
            f"# best trial {best['trial']} of sweep {spec.name}: {spec.metric} = {best['value']:.4f} "
            f"at epoch {best.get('epoch')}; run it with: reprlab train {output / 'best.yaml'}\n"
            + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        )
        plot_parameters(board, sweep, output / "params.png")
        summary.update(best_trial=best["trial"], best_value=best["value"], best_params=params)
    (output / "sweep_summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    print(f"[reprlab] {summary['trials']} trials, {summary['trial_epochs']} trial-epochs; wrote "
          f"{output / 'trials.parquet'}, best.yaml, params.png", flush=True)
    return summary
