"""The training loop every Ray Train worker runs, and where its checkpoints live.

Epoch 0 evaluates the untrained network; epochs 1..E train. After every epoch: validation and
test metrics (on the epochs ``eval.every`` and ``eval.test`` choose), a row in ``metrics.parquet``
(rank 0), a checkpoint with the method's whole state and the metrics history, and a
``ray.train.report`` (a barrier on every rank).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from reprlab.platform.core.config import ExperimentConfig, parse_config
from reprlab.platform.contract.context import Context
from reprlab.platform.contract.context import load_run_data
from reprlab.platform.core.errors import CheckpointError, NonFiniteLossError
from reprlab.platform.core.registry import METHODS
from reprlab.platform.run.results import make_summary, selectable, write_metrics_table
from reprlab.platform.core.storage import Location, resolve
from reprlab.platform.run.telemetry import Telemetry
from reprlab.platform.run.tracking import Tracking
from reprlab.platform.core.log import say

STATE_FILE = "state.pt"
BEST_DIR = "best"  # RUN/best/state.pt: the checkpoint of the reported (validation-selected) epoch
_EPOCH_DIR = re.compile(r"epoch_\d+")


class CheckpointStore:
    """Checkpoints under Ray Train (persisted by Ray in the run's storage, restored through
    ``get_checkpoint``) or, in-process (``num_workers=0``, where Ray keeps checkpoints only in
    memory), in ``RUN/checkpoints/epoch_NNNN`` of the run's storage (a local or mounted directory,
    or object storage: see ``storage.py``)."""

    def __init__(self, run_dir: Path | str | Location, in_process: bool, keep: int, rank: int,
                 report: str = "train") -> None:
        """``report``: where an in-process run reports each epoch: ``train`` (Ray Train), ``tune``
        (a Tune trial that runs the training itself) or ``none`` (inside a Tune trial that reports
        something else, e.g. the mean over k folds; Tune refuses ``ray.train.report`` there)."""
        self.run = resolve(run_dir)
        self.dir = self.run / "checkpoints"
        self.in_process, self.keep, self.rank, self.report = in_process, keep, rank, report

    def latest(self, cfg: ExperimentConfig | None = None) -> dict[str, Any] | None:
        """The newest readable checkpoint's state, or None for a fresh run. A corrupt or truncated
        checkpoint, or (given ``cfg``) one written by another run (its stored config differs in
        a key a resume may not change), is reported in one line and the previous one is used
        instead; when none is usable, a CheckpointError."""
        import ray.train

        # Every epoch directory on disk, newest first, whichever way it was written (in-process
        # ``checkpoints/`` or Ray Train's ``ray/train/``: a resume may switch scaling.num_workers).
        # Ray's registry can lag the disk: a run interrupted between Ray persisting a checkpoint
        # and registering it resumes from the newest readable directory, not Ray's older one.
        candidates = _epoch_dirs(self.dir) + _epoch_dirs(self.run / "ray" / "train")
        if not self.in_process:
            ckpt = ray.train.get_checkpoint()
            if ckpt is not None:  # Ray's newest (on Ray's storage), and the older ones beside it
                here = Location(ckpt.filesystem, ckpt.path, self.run.scheme, self.run.query, self.run.userinfo)
                candidates += [here] + [d for d in _epoch_dirs(here.parent) if d.name < here.name]
        seen: set[str] = set()
        candidates = [d for d in sorted(candidates, key=lambda d: d.name, reverse=True)
                      if not (d.path in seen or seen.add(d.path))]
        for i, ckpt_dir in enumerate(candidates):
            try:
                state = _load_state(ckpt_dir / STATE_FILE)
                if cfg is not None and isinstance(state, dict) and isinstance(state.get("config"), dict):
                    _check_same_run(state["config"], cfg, ckpt_dir / STATE_FILE)
                return state
            except CheckpointError as exc:
                self._fell_back(exc, candidates[i + 1 :])
        if candidates:
            raise CheckpointError("checkpoint: no readable checkpoint is left to resume from")
        return None

    def _fell_back(self, exc: CheckpointError, older: list[Location]) -> None:
        if self.rank == 0:
            say(f"[reprlab] {exc}; " + (f"falling back to {older[0].name}" if older else "no older checkpoint"))

    def save_and_report(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        import ray.train

        if self.in_process:
            if self.rank == 0:
                self._save(state)
            if self.report == "tune":
                import ray.tune

                ray.tune.report(metrics)
            elif self.report == "train":
                ray.train.report(metrics)
            return
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        tmp = Path(tempfile.mkdtemp(prefix="reprlab-ckpt-"))
        try:
            _save_file(state, tmp / STATE_FILE)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                checkpoint_dir_name=f"epoch_{state['epoch']:04d}",
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save(self, state: dict[str, Any]) -> None:
        _write_state(self.dir, f"epoch_{state['epoch']:04d}", state)
        for old in _epoch_dirs(self.dir)[self.keep :]:
            old.delete()

    def save_best(self, state: dict[str, Any]) -> None:
        """Rank 0 keeps ``state`` as ``RUN/best/state.pt``: the checkpoint of the epoch the
        summary reports (the validation-selected one), whatever ``checkpoint.keep`` removes."""
        if self.rank == 0:
            _write_state(self.run, BEST_DIR, state)


def _write_state(parent: Location, name: str, state: dict[str, Any]) -> None:
    """``state`` as ``parent/name/state.pt``, complete or absent: a local directory renamed into
    place, or (object storage) one upload that appears only once complete."""
    if parent.is_local:
        local = parent.local_path
        final, tmp, old = local / name, local / f".tmp_{name}", local / f".old_{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _save_file(state, tmp / STATE_FILE)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written copy is left behind
            raise
        if final.exists():  # swap: the previous copy stays whole until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    else:
        with tempfile.TemporaryDirectory(prefix="reprlab-ckpt-") as tmp:
            _save_file(state, Path(tmp) / STATE_FILE)
            (parent / name).upload(Path(tmp))


def _save_file(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` whose failures (a full disk: torch says only "file write failed") are one
    StorageError line naming the file and the reason."""
    from reprlab.platform.core.errors import StorageError
    from reprlab.platform.run.guard import os_error_line

    try:
        torch.save(state, path)
    except OSError as exc:
        raise StorageError(f"checkpoint: cannot write {path}: {os_error_line(exc)}") from None
    except RuntimeError as exc:  # PytorchStreamWriter: "file write failed" / "unexpected pos"
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else -1
        reason = "no space left on device" if 0 <= free < (64 << 20) else " ".join(str(exc).split())[:200]
        raise StorageError(f"checkpoint: cannot write {path}: {reason} ({free >> 20} MiB free there)") from None


def _check_same_run(stored: dict[str, Any], cfg: ExperimentConfig, path: Location) -> None:
    from reprlab.platform.core.errors import ConfigError
    from reprlab.platform.run.guard import check_resume

    try:
        check_resume(parse_config(stored).to_dict(), cfg.to_dict(), path, what="checkpoint")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint: {path} belongs to another run ({str(exc).split(';')[0]})") from None


def _epoch_dirs(parent: Location) -> list[Location]:
    """The ``epoch_NNNN`` checkpoint directories under ``parent``, newest first."""
    return [parent / n for n in reversed(parent.listdir()) if _EPOCH_DIR.fullmatch(n)]


def _load_state(path: Location) -> dict[str, Any]:
    try:
        if path.is_local:
            return torch.load(path.path, map_location="cpu", weights_only=True)
        return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint: cannot read {path}: {type(exc).__name__}: {reason}") from None


def _worker_identity(cfg: ExperimentConfig) -> tuple[int, int, torch.device]:
    import ray.train

    if cfg.scaling.num_workers == 0:
        return 0, 1, torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    tc = ray.train.get_context()
    if cfg.scaling.use_gpu:
        from ray.train.torch import get_device

        return tc.get_world_rank(), tc.get_world_size(), get_device()
    return tc.get_world_rank(), tc.get_world_size(), torch.device("cpu")


def quiet_ray_logs() -> None:
    """Keep run output to our progress lines: no INFO dump of every report (driver and workers;
    the report logger of Ray 2.60 is named after its file)."""
    import ray.train.v2._internal.execution.context as train_context

    from reprlab.platform.core.log import verbose

    if verbose():
        return
    from reprlab.platform.core.log import quiet_ray

    quiet_ray()
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every training worker (``train_loop_per_worker`` of the TorchTrainer)."""
    quiet_ray_logs()
    cfg = parse_config(loop_config["config"])
    run_dir = resolve(loop_config["run_dir"])  # a local path or a URI: workers may be on other nodes
    rank, world, device = _worker_identity(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # object collectives (broadcast_object_list, ...) use the current device
    torch.manual_seed(cfg.experiment.seed)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    ctx = Context(cfg, load_run_data(cfg), device, rank, world, run_dir)
    method = METHODS.get(cfg.method.name)(ctx)
    method.build()
    store = CheckpointStore(run_dir, cfg.scaling.num_workers == 0, cfg.checkpoint.keep, rank,
                            loop_config.get("report", "train"))

    telemetry = Telemetry(cfg.experiment.name, loop_config.get("trial") or run_dir.name, cfg.method.name,
                          enabled=rank == 0)
    history: list[dict[str, float]] = []
    start = 0
    state = store.latest(cfg)
    if state is not None:
        method.load_state_dict(state["method"])
        history, start = state["history"], state["epoch"] + 1
        if rank == 0:
            say(f"[reprlab] resumed from the checkpoint of epoch {state['epoch']}")

    # rank 0 alone talks to the experiment trackers (run/tracking.py); others get one that does nothing
    tracking = Tracking.open(cfg, run_dir, rank, loop_config.get("tracking"))
    status = "FAILED"
    try:
        for epoch in range(start, cfg.train.epochs + 1):
            t0, started_at = time.perf_counter(), time.time()
            train_logs = _train_epoch(method, ctx, epoch, telemetry) if epoch > 0 else {}
            iterations = int(train_logs.pop("_iterations", 0))
            first_step_at = train_logs.pop("_first_step_at", None)
            t_train = time.perf_counter() - t0
            evals = _evaluate(method, ctx, epoch, history)
            row = {
                "epoch": float(epoch),
                **{f"train/{k}": v for k, v in train_logs.items()},
                **{f"method/{k}": float(v) for k, v in method.epoch_metrics().items()},
                **evals,
                "time/train_s": t_train,
                "time/eval_s": time.perf_counter() - t0 - t_train,
                # wall clock (Unix seconds) at the epoch's start: the time between two epochs' starts
                # minus train and eval is the checkpoint save + report (see `reprlab bench faults`)
                "time/started_at": started_at,
                "throughput/images_per_s": (iterations * method.images_per_step() * world / t_train) if epoch else 0.0,
            }
            if first_step_at is not None:  # wall clock when the epoch's first train_step returned (`bench overhead`)
                row["time/first_step_at"] = first_step_at
            steps = method.step_records()
            if steps:
                row["steps"] = steps
            history.append(row)
            if rank == 0:
                write_metrics_table(run_dir / "metrics.parquet", history)
                say(_epoch_line(row, cfg))
                telemetry.epoch(row)
                tracking.epoch(row)
            state = {"epoch": epoch, "method": method.state_dict(), "history": history, "config": cfg.to_dict()}
            if selected_epoch(history, cfg) == epoch:  # the epoch the summary reports: kept as best/
                store.save_best(state)
            store.save_and_report(state, {k: v for k, v in row.items() if k != "steps"})
        tracking.finish(history)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.close(status)


def selected_epoch(history: list[dict[str, Any]], cfg: ExperimentConfig) -> int:
    """The epoch the summary reports under the rows so far (``results.make_summary``'s rule)."""
    return make_summary(history, cfg.to_dict(), cfg.eval.selection_metric)["selected_epoch"]


def is_eval_epoch(epoch: int, cfg: ExperimentConfig) -> bool:
    """``eval.every``: epoch 0, every multiple of ``every`` and always the last epoch."""
    return epoch == 0 or epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs


def best_val(history: list[dict[str, Any]], metric: str, lower_is_better: bool) -> float | None:
    """The best ``val/<metric>`` over the trained, selectable epochs (>= 1) of ``history`` (None
    before any)."""
    values = [float(r[f"val/{metric}"]) for r in history
              if r["epoch"] > 0 and selectable(r) and r.get(f"val/{metric}") is not None
              and not math.isnan(r[f"val/{metric}"])]
    if not values:
        return None
    return min(values) if lower_is_better else max(values)


def _evaluate(method, ctx: Context, epoch: int, history: list[dict[str, Any]]) -> dict[str, float]:
    """The epoch's ``split/metric`` values under ``eval.every`` and ``eval.test`` (empty on epochs
    that skip evaluation). With ``eval.test=on_improvement`` val is evaluated first and test only
    at epoch 0 or when the val selection metric strictly improves on the best of the earlier
    trained epochs (recomputed from ``history``, so it survives a resume): the epoch the summary
    selects (the first best) always has its test metrics. Without a val split, test every time."""
    cfg = ctx.cfg
    if not is_eval_epoch(epoch, cfg):
        return {}
    splits = list(ctx.data.eval_splits)
    evals: dict[str, float] = {}
    if cfg.eval.test == "on_improvement" and "val" in splits and "test" in splits and epoch > 0:
        splits.remove("val")
        evals.update({f"val/{k}": float(v) for k, v in method.evaluate("val").items()})
        metric = cfg.eval.selection_metric
        lower = metric in METHODS.get(cfg.method.name).lower_is_better
        best, now = best_val(history, metric, lower), evals.get(f"val/{metric}")
        improved = best is None or (now is not None and (now < best if lower else now > best))
        if not improved:
            splits.remove("test")
    for s in splits:
        evals.update({f"{s}/{k}": float(v) for k, v in method.evaluate(s).items()})
    return evals


def _train_epoch(method, ctx: Context, epoch: int, telemetry: Telemetry) -> dict[str, float]:
    method.on_epoch_start(epoch)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)  # a log may be missing on some steps (e.g. MIC's shared task)
    total = method.steps_per_epoch()
    every = ctx.cfg.train.log_every
    n, start, first_step_at = 0, time.perf_counter(), None
    for n, batch in enumerate(method.batches(epoch), start=1):
        logs = method.train_step(batch)
        if first_step_at is None:
            first_step_at = time.time()
        loss = logs["loss"]
        if ctx.any_rank(not math.isfinite(loss)):
            raise NonFiniteLossError(
                f"training: the loss became {loss} at epoch {epoch}, iteration {n}; "
                f"checkpoints and metrics up to epoch {epoch - 1} are kept in {ctx.run_dir}"
            )
        for k, v in logs.items():
            sums[k] += float(v)
            counts[k] += 1
        method.on_iteration_end((epoch - 1) * total + n)
        if ctx.is_main and (n % every == 0 or n == total):
            rate = n * method.images_per_step() * ctx.world_size / (time.perf_counter() - start)
            telemetry.progress(sums["loss"] / n, rate)
            say(f"[reprlab] epoch {epoch}/{ctx.cfg.train.epochs} iteration {n}/{total} "
                f"loss {sums['loss'] / n:.4f} {rate:.0f} img/s")
    method.on_epoch_end(epoch)
    means = ctx.rank_mean({k: v / counts[k] for k, v in sums.items()})  # a per-rank term -> the global value
    return {**means, "_iterations": n, "_first_step_at": first_step_at}


def _epoch_line(row: dict[str, float], cfg: ExperimentConfig) -> str:
    parts = [f"epoch {int(row['epoch'])}/{cfg.train.epochs}"]
    if "train/loss" in row:
        parts.append(f"loss {row['train/loss']:.4f}")
    for split in ("val", "test"):
        if f"{split}/recall@1" in row:
            parts.append(f"{split} R@1 {100 * row[f'{split}/recall@1']:.1f} MAP@R {100 * row[f'{split}/map@r']:.1f}")
        elif f"{split}/{cfg.eval.selection_metric}" in row:  # methods other than retrieval
            parts.append(f"{split} {cfg.eval.selection_metric} {row[f'{split}/{cfg.eval.selection_metric}']:.4g}")
    if row["throughput/images_per_s"]:
        parts.append(f"{row['throughput/images_per_s']:.0f} img/s")
    return "[reprlab] " + " | ".join(parts)
