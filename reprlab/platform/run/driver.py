"""The driver side of ``reprlab train``: check everything, then fit a TorchTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.contract.context import load_run_data
from reprlab.platform.core.errors import CheckpointError, ConfigError, NonFiniteLossError, ReprlabError, StorageError
from reprlab.platform.run.results import format_summary, make_summary, read_metrics_table, run_health, write_summary
from reprlab.platform.core.storage import Location, check_writable, resolve
from reprlab.platform.run.loop import BEST_DIR, STATE_FILE, quiet_ray_logs, say, train_worker
from reprlab.platform.run.guard import (check_output_path, check_resume, checkpoint_epochs, claim, os_error_line,
                                        stored_config)
from reprlab.platform.run.preflight import check_data, check_resources, check_tracking

RAY_RUN_NAME = "train"


def check_output_dir(output: Path | str | Location, resume: bool) -> None:
    """A run directory is either new (no --resume) or holds a run (--resume): never mixed up."""
    output = resolve(output)
    has_run = (output / "config.yaml").is_file()
    if has_run and not resume:
        raise ConfigError(
            f"output: {output} already holds a run; pass --resume to continue it, or choose another --output"
        )
    if resume and not has_run:
        raise CheckpointError(f"resume: {output} holds no run to resume (no config.yaml)")


def write_config(cfg: ExperimentConfig, target: Path | str | Location) -> None:
    """The resolved config as YAML, in run storage (what ``dump_config`` writes locally)."""
    resolve(target).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def make_trainer(
    cfg: ExperimentConfig, run_dir: Path | str | Location, callbacks: list | None = None, report: str = "train",
    trial: str = "", tracking: dict[str, Any] | None = None,
):
    """The TorchTrainer of one run (also what a Tune trial builds and fits). ``report``: how an
    in-process run reports (see ``CheckpointStore``); in a Tune trial it forwards to Tune itself,
    as Ray Train's callbacks (TuneReportCallback) do not run in-process. The workers get the run
    directory as a URI (object storage) or a path; Ray persists its checkpoints under ``RUN/ray``
    on the same storage (``storage_filesystem`` for object storage). ``tracking``: what rank 0's
    experiment trackers get (``run/tracking.py``: the trackers the checks passed, a sweep's name,
    trial and parameters)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run = resolve(run_dir)
    if run.is_local:
        storage = {"storage_path": str(run.local_path / "ray")}
    else:
        storage = {"storage_path": (run / "ray").path, "storage_filesystem": run.fs}
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})}
    return TorchTrainer(
        train_worker,
        torch_config=TorchConfig(backend=process_group_backend(cfg)),
        train_loop_config={"config": cfg.to_dict(), "run_dir": run.uri, "report": report,
                           "trial": trial, "tracking": tracking},
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker=resources if sc.num_workers else None,
        ),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            **storage,
            failure_config=FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            callbacks=callbacks,
        ),
    )


def process_group_backend(cfg: ExperimentConfig) -> str:
    """GPU workers: NCCL for CUDA tensors and gloo beside it for any CPU tensor a collective gets
    (a safety net: the platform's own collectives use the device); CPU workers: gloo."""
    return "cpu:gloo,cuda:nccl" if cfg.scaling.use_gpu else "gloo"


def user_error(exc: BaseException) -> ReprlabError | None:
    """The ReprlabError that a Ray Train failure carries (from any worker), if there is one."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ReprlabError):
            return e
        if isinstance(e, OSError) and e.errno is not None:  # disk full, read-only, permission: name the path
            return StorageError(os_error_line(e))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        todo += list(getattr(e, "worker_failures", {}).values())
    return None


def check_gpu(cfg: ExperimentConfig) -> None:
    """An in-process run that asks for a GPU on a machine without one: one line, not CUDA's
    traceback from deep inside the first ``.to(device)``."""
    import torch

    if cfg.scaling.use_gpu and cfg.scaling.num_workers == 0 and not torch.cuda.is_available():
        raise ConfigError("config: scaling.use_gpu is true but this machine has no usable GPU "
                          "(torch.cuda.is_available() is False); set scaling.use_gpu=false to train on the CPU")


def wait_note_for_gpus(cfg: ExperimentConfig) -> None:
    """Ray Train workers that need GPUs wait until the cluster has them (an autoscaler may add
    GPU nodes): say so once instead of waiting silently."""
    import ray

    if cfg.scaling.use_gpu and cfg.scaling.num_workers and ray.is_initialized():
        have = ray.cluster_resources().get("GPU", 0)
        if have < cfg.scaling.num_workers:
            say(f"[reprlab] waiting for {cfg.scaling.num_workers} GPU(s): the Ray cluster has {have:g} now "
                f"(an autoscaler may add GPU nodes; on a machine without GPUs set scaling.use_gpu=false)")


def ensure_ray(cfg: ExperimentConfig) -> None:
    import ray

    if cfg.scaling.num_workers and not ray.is_initialized():
        from reprlab.platform.core.log import ray_init

        ray_init(log_to_driver=True)


def run_training(cfg: ExperimentConfig, output: Path | str | Location, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate every epoch, and write metrics.parquet, checkpoints and summary.json into
    ``output``: a local or mounted directory, or an object-storage URI (``storage.py``).

    The run directory is a transaction (``guard.py``): claimed exclusively, every check (the
    output path, a resume's config against the stored one, data, the method's build, the
    cluster's resources) made before anything is written, and a new run that fails before its
    first trained epoch is rolled back, so the corrected command can simply be run again."""
    raw = output
    output = resolve(output)
    check_output_path(raw if isinstance(raw, str) else None, output)
    check_writable(output)  # object storage: reachable, the bucket exists, writable; before Ray
    lock = claim(output)
    try:
        check_output_dir(output, resume)
        if resume:
            check_resume(stored_config(output), cfg.to_dict(), output)
            check_readable_checkpoint(output)
        check_gpu(cfg)
        check_data(cfg, load_run_data(cfg))  # data problems surface here, before Ray starts
        trackers = check_tracking(cfg, output)  # packages, servers: before Ray starts
        quiet_ray_logs()
        ensure_ray(cfg)
        check_resources(cfg)
        wait_note_for_gpus(cfg)
        output.mkdir()
        write_config(cfg, output / "config.yaml")
        try:
            make_trainer(cfg, output, tracking={"use": trackers}).fit()
        except ReprlabError:
            raise
        except Exception as exc:
            err = user_error(exc)
            if err is not None:
                raise err from None
            raise
        return finish_run(cfg, output)
    except BaseException as exc:
        # A new run rolls back when nothing worth keeping was trained: after an error, before its
        # first trained epoch (a NaN keeps its epochs for diagnosis); after Ctrl-C, before any
        # checkpoint. The directory is then as it was, and the fixed command just works.
        if not resume:
            if isinstance(exc, Exception) and not isinstance(exc, NonFiniteLossError) and trained_epochs(output) < 1:
                lock.rollback()
            elif isinstance(exc, KeyboardInterrupt) and not checkpoint_epochs(output):
                lock.rollback()
        raise
    finally:
        lock.release()
        lock.undo_mkdir()  # a directory this command created and left empty goes too


def check_readable_checkpoint(output: Location) -> None:
    """A resume of a local run whose checkpoints are all unreadable fails here, before its
    config.yaml is rewritten (memory-mapped reads: cheap). The workers read them for real."""
    import torch

    epochs = checkpoint_epochs(output) if output.is_local else []
    if not epochs:
        return
    for epoch in reversed(epochs):
        for layout in ("checkpoints", "ray/train"):
            path = output.local_path / layout / f"epoch_{epoch:04d}" / STATE_FILE
            if not path.is_file():
                continue
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                return
            except Exception:
                continue
    raise CheckpointError("checkpoint: no readable checkpoint is left to resume from")


def trained_epochs(output: Location) -> int:
    """The last epoch in the run's metrics table (-1 without one)."""
    try:
        rows = read_metrics_table(output / "metrics.parquet")
    except Exception:
        return -1
    return int(rows[-1]["epoch"]) if rows else -1


def finish_run(cfg: ExperimentConfig, output: Path | str | Location) -> dict[str, Any]:
    output = resolve(output)
    rows = read_metrics_table(output / "metrics.parquet")
    summary = make_summary(rows, cfg.to_dict(), cfg.eval.selection_metric)
    summary.update(run_health(rows, cfg))
    if (output / BEST_DIR / STATE_FILE).exists():  # the reported epoch's checkpoint, kept on disk
        summary["selected_checkpoint"] = f"{BEST_DIR}/{STATE_FILE}"
    write_summary(output / "summary.json", summary)
    print(format_summary(summary), flush=True)
    return summary
