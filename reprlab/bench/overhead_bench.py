"""``reprlab bench overhead``: what the platform costs around the training steps.

Runs ``reprlab train`` (a new Python process, as a user would) and reads the per-epoch timings
its training loop writes to ``metrics.parquet``. All timestamps are wall clock (``time.time()``)
on this machine, so the driver's, Ray's and the workers' clocks are one.

- **Start-up**: from the moment this bench starts the process to ``time/first_step_at`` of epoch
  1 (when the first ``train_step``, with its optimizer step, has returned on rank 0). Split at
  ``time/started_at`` of epoch 0 (interpreter, imports, config, data, Ray and its workers, the
  method's networks: everything before the loop) and of epoch 1 (epoch 0: the untrained
  evaluation, its row and checkpoint).
- **Per epoch** (epochs 1 .. E-1, each followed by another): wall = the next epoch's
  ``time/started_at`` minus this one's; ``time/train_s`` is the training steps (the loop
  includes the data loading and logging); ``time/eval_s`` the evaluation of val and test;
  the rest is the metrics row, ``metrics.parquet``, the checkpoint (state dict, ``torch.save``,
  Ray's copy into run storage) and the report barrier. Overhead = eval + rest over the wall
  time; without evaluation = rest over the wall time.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reprlab.platform.core.errors import ReprlabError


def bench_overhead(config: str, overrides: list[str], output: Path, epochs: int = 4) -> dict[str, Any]:
    if epochs < 2:
        raise ReprlabError("bench overhead: --epochs must be at least 2 (an epoch is timed up to the next one's start)")
    run = Path(output) / "run"
    if run.exists():
        raise ReprlabError(f"bench overhead: {run} exists; choose another --output")
    cmd = [sys.executable, "-m", "reprlab.cli", "train", config, "--output", str(run)]
    for item in [*overrides, f"train.epochs={epochs}"]:
        cmd += ["--set", item]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ended = time.time()
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ReprlabError(f"bench overhead: reprlab train failed: {tail}")
    import pyarrow.parquet as pq

    rows = sorted(pq.read_table(run / "metrics.parquet").to_pylist(), key=lambda r: r["epoch"])
    first_step = rows[1]["time/first_step_at"]
    epochs_out = []
    for row, nxt in zip(rows[1:], rows[2:]):
        wall = nxt["time/started_at"] - row["time/started_at"]
        train, ev = row["time/train_s"], row["time/eval_s"]
        rest = wall - train - ev
        epochs_out.append({"epoch": int(row["epoch"]), "wall_s": wall, "train_s": train, "eval_s": ev, "rest_s": rest,
                           "overhead": (ev + rest) / wall, "overhead_without_eval": rest / wall,
                           "images_per_s": row["throughput/images_per_s"]})
    return {
        "config": config, "overrides": overrides, "epochs": epochs, "command": " ".join(cmd[1:]),
        "process_s": ended - started,
        "startup_s": rows[0]["time/started_at"] - started,
        "epoch0_s": rows[1]["time/started_at"] - rows[0]["time/started_at"],
        "epoch1_to_first_step_s": first_step - rows[1]["time/started_at"],
        "to_first_step_s": first_step - started,
        "per_epoch": epochs_out,
        "mean_overhead": statistics.mean(e["overhead"] for e in epochs_out),
        "mean_overhead_without_eval": statistics.mean(e["overhead_without_eval"] for e in epochs_out),
        # over all timed epochs together: what an evaluation schedule (eval.every, eval.test) costs
        "total_overhead": sum(e["eval_s"] + e["rest_s"] for e in epochs_out) / sum(e["wall_s"] for e in epochs_out),
    }


def format_overhead_bench(r: dict[str, Any]) -> str:
    lines = [
        f"overhead bench: {r['command']}",
        f"process start -> first optimizer step: {r['to_first_step_s']:.2f} s "
        f"(start-up before the loop {r['startup_s']:.2f} s, epoch 0 = untrained evaluation + checkpoint "
        f"{r['epoch0_s']:.2f} s, epoch 1 start -> first step {r['epoch1_to_first_step_s']:.2f} s); "
        f"whole command {r['process_s']:.1f} s",
        "| epoch | wall s | train s | eval s | checkpoint + report + table s | overhead | without eval | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in r["per_epoch"]:
        lines.append(f"| {e['epoch']} | {e['wall_s']:.2f} | {e['train_s']:.2f} | {e['eval_s']:.2f} | "
                     f"{e['rest_s']:.3f} | {100 * e['overhead']:.1f}% | {100 * e['overhead_without_eval']:.1f}% | "
                     f"{e['images_per_s']:.0f} |")
    lines.append(f"mean overhead per epoch: {100 * r['mean_overhead']:.1f}% with evaluation, "
                 f"{100 * r['mean_overhead_without_eval']:.1f}% without; over the timed epochs together: "
                 f"{100 * r['total_overhead']:.1f}%")
    return "\n".join(lines)


# ---- experiment trackers (docs/TRACKING.md) ---------------------------------------------------------

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")


def tracker_overrides(tracker: str, output: Path) -> list[str]:
    """``--set`` items turning one tracker on, writing only under ``output`` (an MLflow file
    store, W&B offline run files): the bench measures the client side, no server."""
    return {
        "none": [],
        "tensorboard": ["tracking.tensorboard.enabled=true"],
        "mlflow": ["tracking.mlflow.enabled=true", f"tracking.mlflow.tracking_uri={Path(output).resolve() / 'mlruns'}"],
        "wandb": ["tracking.wandb.enabled=true", "tracking.wandb.mode=offline"],
    }[tracker]


def bench_tracking_overhead(config: str, overrides: list[str], output: Path, trackers: list[str],
                            epochs: int = 4) -> dict[str, Any]:
    """One ``reprlab train`` per tracker (``none`` first: the baseline), each timed as above. A
    tracker's cost per epoch is its "rest" (everything after training and evaluation: row,
    checkpoint, report, and the trackers' calls) minus the baseline's."""
    names = ["none", *[t for t in dict.fromkeys(trackers) if t != "none"]]
    runs = {}
    for name in names:
        sets = [*overrides, *tracker_overrides(name, Path(output) / name)]
        runs[name] = bench_overhead(config, sets, Path(output) / name, epochs=epochs)
    base = runs["none"]
    rows = []
    for name, r in runs.items():
        wall = statistics.mean(e["wall_s"] for e in r["per_epoch"])
        rest = statistics.mean(e["rest_s"] for e in r["per_epoch"])
        base_rest = statistics.mean(e["rest_s"] for e in base["per_epoch"])
        rows.append({"tracker": name, "wall_s": wall, "rest_s": rest, "tracker_s": rest - base_rest,
                     "tracker_share": (rest - base_rest) / wall, "startup_s": r["startup_s"],
                     "startup_delta_s": r["startup_s"] - base["startup_s"], "command": r["command"]})
    return {"config": config, "overrides": overrides, "epochs": epochs, "trackers": rows}


def format_tracking_bench(r: dict[str, Any]) -> str:
    lines = [f"tracker overhead bench: {r['config']} {' '.join(r['overrides'])} ({r['epochs']} epochs, "
             f"epochs 1..{r['epochs'] - 1} timed)",
             "| tracker | wall s / epoch | rest s / epoch | tracker s / epoch | share of the epoch | start-up s (vs none) |",
             "|---|---|---|---|---|---|"]
    for t in r["trackers"]:
        lines.append(f"| {t['tracker']} | {t['wall_s']:.3f} | {t['rest_s']:.3f} | {t['tracker_s']:+.3f} | "
                     f"{100 * t['tracker_share']:+.1f}% | {t['startup_s']:.2f} ({t['startup_delta_s']:+.2f}) |")
    return "\n".join(lines)
