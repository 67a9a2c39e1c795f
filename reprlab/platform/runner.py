"""The driver side of ``reprlab train``: check everything, then fit a TorchTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reprlab.platform.config import ExperimentConfig, dump_config
from reprlab.platform.data import load_bundle
from reprlab.platform.errors import CheckpointError, ConfigError, ReprlabError
from reprlab.platform.results import format_summary, make_summary, read_metrics_table, write_summary
from reprlab.platform.training import quiet_ray_logs, train_worker

RAY_RUN_NAME = "train"


def check_output_dir(output: Path, resume: bool) -> None:
    """A run directory is either new (no --resume) or holds a run (--resume): never mixed up."""
    has_run = (output / "config.yaml").is_file()
    if has_run and not resume:
        raise ConfigError(
            f"output: {output} already holds a run; pass --resume to continue it, or choose another --output"
        )
    if resume and not has_run:
        raise CheckpointError(f"resume: {output} holds no run to resume (no config.yaml)")


def make_trainer(
    cfg: ExperimentConfig, run_dir: Path, callbacks: list | None = None, report: str = "train", trial: str = ""
):
    """The TorchTrainer of one run (also what a Tune trial builds and fits). ``report``: how an
    in-process run reports (see ``CheckpointStore``); in a Tune trial it forwards to Tune itself,
    as Ray Train's callbacks (TuneReportCallback) do not run in-process."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})}
    return TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "report": report,
                           "trial": trial},
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker=resources if sc.num_workers else None,
        ),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            callbacks=callbacks,
        ),
    )


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
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        todo += list(getattr(e, "worker_failures", {}).values())
    return None


def ensure_ray(cfg: ExperimentConfig) -> None:
    import ray

    if cfg.scaling.num_workers and not ray.is_initialized():
        ray.init(log_to_driver=True)


def run_training(cfg: ExperimentConfig, output: Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate every epoch, and write metrics.parquet, checkpoints and summary.json."""
    output = output.expanduser().resolve()
    check_output_dir(output, resume)
    load_bundle(cfg.data, cfg.experiment.seed)  # data problems surface here, before Ray starts
    output.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, output / "config.yaml")
    quiet_ray_logs()
    ensure_ray(cfg)
    try:
        make_trainer(cfg, output).fit()
    except ReprlabError:
        raise
    except Exception as exc:
        err = user_error(exc)
        if err is not None:
            raise err from None
        raise
    return finish_run(cfg, output)


def finish_run(cfg: ExperimentConfig, output: Path) -> dict[str, Any]:
    rows = read_metrics_table(output / "metrics.parquet")
    summary = make_summary(rows, cfg.to_dict(), cfg.eval.selection_metric)
    write_summary(output / "summary.json", summary)
    print(format_summary(summary), flush=True)
    return summary
