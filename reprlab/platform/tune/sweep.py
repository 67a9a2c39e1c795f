"""``reprlab tune``: hyperparameter sweeps with Ray Tune (Optuna TPE / random / grid, ASHA).

A sweep file names a base experiment (preset or YAML, plus ``--set``-style overrides), a search
space over dotted config keys, the searcher, the scheduler, the number of trials, the resources of
one trial and the metric. Everything is checked before Ray starts.

Each trial is a driver that builds and fits the same ``TorchTrainer`` as ``reprlab train`` (Ray
Train V2's Tune pattern) and forwards every epoch's report to Tune, so ASHA can stop it early.
In-process trials (``resources.workers: 0``) report to Tune from the training loop itself, since
Ray Train's callbacks do not run in-process. Trial runs live under ``OUTPUT/trials/<trial id>``
and keep their checkpoints, so an interrupted sweep resumed with ``--resume`` continues unfinished
trials from their last epoch and never re-runs finished ones.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reprlab.platform.core.config import (
    METRIC_KEYS,
    ExperimentConfig,
    apply_overrides,
    parse_config,
    read_yaml,
)
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.registry import METHODS
from reprlab.platform.core.storage import Location, check_writable, resolve

TUNE_DIR = "tune"
TRIALS_DIR = "trials"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Spec):
    """One searched key. ``int``/``float``/``logfloat``: ``low``..``high`` (inclusive for int);
    ``categorical``: sampled from ``values``; ``grid``: every one of ``values``."""

    type: Literal["int", "float", "logfloat", "categorical", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Param:
        if self.type in ("categorical", "grid"):
            if not self.values:
                raise ValueError(f"type {self.type} needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"type {self.type} needs 'low' < 'high'")
            if self.type == "logfloat" and self.low <= 0:
                raise ValueError("type logfloat needs 'low' > 0")
        return self

    def samples(self) -> list[Any]:
        """Values that stand for the range when checking it against the config."""
        if self.values is not None:
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class Searcher(_Spec):
    name: Literal["optuna", "random", "grid"] = "optuna"
    seed: int = 0


class Scheduler(_Spec):
    name: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1, description="epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class Resources(_Spec):
    workers: int = Field(0, ge=0, description="Ray Train workers per trial (0: in the trial process)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1, description="default: what the cluster's CPUs/GPUs allow")


class KFold(_Spec):
    folds: int = Field(3, ge=2)


class SweepSpec(_Spec):
    name: str
    base: str | None = Field(None, description="preset name or YAML path (relative to the sweep file)")
    overrides: list[str] = Field(default_factory=list)
    space: dict[str, Param]
    searcher: Searcher = Searcher()
    scheduler: Scheduler = Scheduler()
    trials: int = Field(8, ge=1, description="samples (grid: repeats of the full grid)")
    resources: Resources = Resources()
    metric: str = "val/map@r"
    mode: Literal["max", "min"] = "max"
    kfold: KFold | None = Field(None, description="Reality-Check protocol: class-disjoint folds per trial")

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if not self.space:
            raise ValueError("space: name at least one key to search")
        if self.searcher.name == "grid":
            bad = [k for k, p in self.space.items() if p.type not in ("grid", "categorical")]
            if bad:
                raise ValueError(f"space.{bad[0]}: the grid searcher needs type grid or categorical")
        if self.searcher.name == "optuna":
            bad = [k for k, p in self.space.items() if p.type == "grid"]
            if bad:
                raise ValueError(f"space.{bad[0]}: type grid needs searcher grid or random (Optuna samples)")
        split, _, key = self.metric.partition("/")
        if not (split in ("val", "test") and key) and self.metric != "train/loss":  # names: see load_sweep
            raise ValueError(f"metric: {self.metric!r} is not val/<metric>, test/<metric> or train/loss "
                             f"(retrieval metrics: {', '.join(METRIC_KEYS)})")
        if self.kfold and not self.metric.startswith("val/"):
            raise ValueError("metric: k-fold validation averages a val/ metric over the folds")
        if self.kfold and self.scheduler.name == "asha":
            raise ValueError("scheduler: ASHA cannot stop k-fold trials early (folds run one after another); "
                             "use scheduler: {name: none}")
        return self


class Sweep:
    """A checked sweep: the spec and its resolved base config (a plain dict)."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], source: Path | None) -> None:
        self.spec, self.base, self.source = spec, base, source
        self.output: str | None = None  # set by run_sweep (a path or URI); trials write under OUTPUT/trials
        self.trackers: list[str] = []  # the experiment trackers the checks passed (set by run_sweep)

    def trial_config(self, params: dict[str, Any], fold: int | None = None) -> ExperimentConfig:
        """The experiment of one trial: the base with ``params`` (dotted keys) set."""
        raw = copy.deepcopy(self.base)
        for key, value in params.items():
            *parents, leaf = key.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        if fold is not None:
            assert self.spec.kfold is not None
            raw.setdefault("data", {})["validation"] = {
                **raw.get("data", {}).get("validation", {}), "protocol": "kfold",
                "folds": self.spec.kfold.folds, "fold": fold,
            }
        return parse_config(raw)

    @property
    def epochs(self) -> int:
        return parse_config(copy.deepcopy(self.base)).train.epochs


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file; ``overrides`` (``--set``) apply to the base experiment."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep: {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep: {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: {path}: the top level must be a mapping")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"sweep: {path.name}: {where + ': ' if where else ''}{msg}") from None

    base_raw: dict[str, Any] = {}
    if spec.base:
        local = (path.parent / spec.base)
        base_raw = read_yaml(local if local.is_file() else spec.base)
    base_raw = apply_overrides(base_raw, [*spec.overrides, *(overrides or []), *experiment_overrides(spec)])
    try:
        base_cfg = parse_config(copy.deepcopy(base_raw))
    except ConfigError as exc:
        raise ConfigError(f"sweep: {path.name}: base: {exc}") from None
    _check_eval_schedule(base_cfg, spec.metric, f"sweep: {path.name}: ")
    metrics = METHODS.get(base_cfg.method.name).metric_names(base_cfg)
    if spec.metric != "train/loss" and spec.metric.partition("/")[2] not in metrics:
        raise ConfigError(f"sweep: {path.name}: metric: {base_cfg.method.name} reports no {spec.metric!r} "
                          f"(metrics: {', '.join(metrics)})")
    sweep = Sweep(spec, base_raw, path)
    for key, param in spec.space.items():  # every key and every value kind must fit the config
        for value in param.samples():
            try:
                trial_cfg = sweep.trial_config({key: value})
            except ConfigError as exc:
                raise ConfigError(f"sweep: {path.name}: space.{key}: {exc}") from None
            _check_eval_schedule(trial_cfg, spec.metric, f"sweep: {path.name}: space.{key}: ")
    if spec.kfold:
        sweep.trial_config({}, fold=0)
    return sweep


def _check_eval_schedule(cfg: ExperimentConfig, metric: str, where: str) -> None:
    """Tune's schedulers (ASHA) and searchers (Optuna) need the sweep metric in every epoch's
    report: a sweep evaluates every epoch (test only on improvement is fine for a val/ metric)."""
    if cfg.eval.every != 1:
        raise ConfigError(f"{where}eval.every must be 1 in a sweep (Tune needs {metric} every epoch), "
                          f"not {cfg.eval.every}")
    if cfg.eval.test != "every" and not metric.startswith("val/"):
        raise ConfigError(f"{where}eval.test must be every in a sweep (Tune needs {metric} every epoch), "
                          f"not {cfg.eval.test}")


# ---- Tune objects ------------------------------------------------------------------------------


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, p in spec.space.items():
        if p.type == "int":
            space[key] = tune.randint(int(p.low), int(p.high) + 1)
        elif p.type == "float":
            space[key] = tune.uniform(p.low, p.high)
        elif p.type == "logfloat":
            space[key] = tune.loguniform(p.low, p.high)
        elif p.type == "categorical" and spec.searcher.name != "grid":
            space[key] = tune.choice(p.values)
        else:
            space[key] = tune.grid_search(p.values)
    return space


def search_algorithm(spec: SweepSpec):
    if spec.searcher.name == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=spec.metric, mode=spec.mode, sampler=TPESampler(seed=spec.searcher.seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.searcher.seed)


def scheduler(spec: SweepSpec, epochs: int):
    if spec.scheduler.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # one report per epoch, epoch 0 (untrained) included
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1,
                         grace_period=spec.scheduler.grace_period + 1,
                         reduction_factor=spec.scheduler.reduction_factor)


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What the trial process itself holds: all of the training in-process, else a sliver (its
    Ray Train workers ask for their own CPUs/GPUs)."""
    r = spec.resources
    if r.workers == 0:
        return {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
    return {"CPU": 0.01}


def max_concurrent(spec: SweepSpec, cluster: dict[str, float]) -> int:
    r = spec.resources
    if r.max_concurrent:
        return r.max_concurrent
    n = max(1, r.workers)
    limits = [int(cluster.get("CPU", 1) // (n * r.cpus_per_worker))]
    if r.gpus_per_worker:
        limits.append(int(cluster.get("GPU", 0) // (n * r.gpus_per_worker)))
    return max(1, min(limits))


def experiment_overrides(spec: SweepSpec) -> list[str]:
    r = spec.resources
    return [f"scaling.num_workers={r.workers}", f"scaling.cpus_per_worker={r.cpus_per_worker}",
            f"scaling.use_gpu={'true' if r.gpus_per_worker else 'false'}"]


# ---- the trial ------------------------------------------------------------------------------------


def run_trial(params: dict[str, Any], sweep: Sweep) -> None:
    """One trial: fit the experiment (each fold in turn for k-fold) and report every epoch."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from reprlab.platform.run.results import make_summary, read_metrics_table, write_summary
    from reprlab.platform.run.driver import make_trainer, write_config

    trial_id = ray.tune.get_context().get_trial_id()
    run_root = resolve(sweep.output) / TRIALS_DIR / trial_id  # a path, or a URI in object storage
    run_root.mkdir()
    (run_root / "attempts.log").append_text(f"{time.time():.3f}\n")  # one line per (re)start of this trial
    (run_root / "params.json").write_text(json.dumps(params, default=str))
    folds = [None] if sweep.spec.kfold is None else list(range(sweep.spec.kfold.folds))
    for fold in folds:
        cfg = sweep.trial_config(params, fold)
        run_dir = run_root if fold is None else run_root / f"fold{fold}"
        run_dir.mkdir()
        write_config(cfg, run_dir / "config.yaml")
        forward = fold is None
        in_process = cfg.scaling.num_workers == 0
        if forward:
            replay_reports(run_dir)
        callbacks = [TuneReportCallback()] if forward and not in_process else None
        # each trial (each fold) one tracker run under the sweep's experiment / group, with its parameters
        tracking = {"use": sweep.trackers, "sweep": sweep.spec.name, "trial": trial_id, "params": params,
                    "name": trial_id if fold is None else f"{trial_id}-fold{fold}"}
        make_trainer(cfg, run_dir, callbacks, report="tune" if forward else "none", trial=trial_id,
                     tracking=tracking).fit()
        rows = read_metrics_table(run_dir / "metrics.parquet")
        write_summary(run_dir / "summary.json", make_summary(rows, cfg.to_dict(), cfg.eval.selection_metric))
    if sweep.spec.kfold is not None:  # the trial's metric per epoch: the mean over folds
        tables = [read_metrics_table(run_root / f"fold{f}" / "metrics.parquet") for f in folds]
        for rows in zip(*tables):
            keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float)) for r in rows)]
            ray.tune.report({k: sum(r[k] for r in rows) / len(rows) for k in keys})


def replay_reports(run_dir: Path | str | Location) -> None:
    """A restarted trial resumes its run from the last checkpoint; Tune, which restarts the trial
    function from scratch, first hears again the epochs that checkpoint covers."""
    import ray.tune

    from reprlab.platform.run.results import read_metrics_table

    run_dir = resolve(run_dir)
    states = [f.split("/")[-2:] for f in run_dir.walk()]  # (in-process or Ray's) epoch_NNNN/state.pt
    epochs = [int(d.removeprefix("epoch_")) for d, name in (s for s in states if len(s) == 2)
              if name == "state.pt" and re.fullmatch(r"epoch_\d+", d)]
    if not epochs or not (run_dir / "metrics.parquet").is_file():
        return
    for row in read_metrics_table(run_dir / "metrics.parquet"):
        if row["epoch"] <= max(epochs):
            ray.tune.report({k: v for k, v in row.items() if v is not None})


# ---- driver --------------------------------------------------------------------------------------


def run_sweep(sweep: Sweep, output: Path | str | Location, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep; write trials.parquet, best.yaml, the leaderboard and the plot.
    The sweep directory is claimed and checked like a run's (``run/guard.py``); a --resume must
    continue the same sweep (``check_sweep_resume``); nothing is rewritten before that."""
    from reprlab.platform.run.guard import check_output_path, claim

    output = resolve(output)  # a local or mounted directory, or s3://bucket/prefix?options
    check_output_path(None, output, "tune")
    check_writable(output)  # object storage: reachable, the bucket exists, writable; before Ray
    lock = claim(output, "tune")  # one sweep command per directory at a time
    try:
        return _run_sweep(sweep, output, resume, lock)
    except BaseException as exc:
        if not resume and isinstance(exc, Exception) and not (output / TUNE_DIR).exists():
            lock.rollback()  # failed before Tune started: the directory is as it was
        raise
    finally:
        lock.release()
        lock.undo_mkdir()


SWEEP_STATE = "sweep_state.json"  # the checked sweep (spec and resolved base) a --resume must match


def check_sweep_resume(sweep: Sweep, output: Location) -> None:
    """A resume continues the same sweep: the same spec (trials aside) and a base experiment that
    differs only in keys a run's resume may change. One line naming the first difference."""
    from reprlab.platform.run.guard import check_resume, flatten

    state = output / SWEEP_STATE
    if state.is_file():
        try:
            stored = json.loads(state.read_text())
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"tune: cannot read {state}: not JSON; the sweep's record is damaged") from None
    elif (output / "sweep.yaml").is_file():  # sweeps from before sweep_state.json: the spec only
        try:
            stored = {"spec": SweepSpec.model_validate(yaml.safe_load((output / "sweep.yaml").read_text())).model_dump()}
        except Exception:
            return
    else:
        return
    old, new = dict(flatten(stored.get("spec", {}))), dict(flatten(sweep.spec.model_dump()))
    diff = [k for k in dict.fromkeys([*old, *new]) if k != "trials" and old.get(k) != new.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError(f"tune: --resume with another sweep: {k} is {new.get(k)!r} here but {old.get(k)!r} in the "
                          f"sweep in {output}; resume with its own sweep file ({output / 'sweep.yaml'}) or choose "
                          f"another --output")
    if "base" in stored:
        check_resume(parse_config(copy.deepcopy(stored["base"])).to_dict(),
                     parse_config(copy.deepcopy(sweep.base)).to_dict(), output, what="tune: --resume: base")


def _run_sweep(sweep: Sweep, output: Location, resume: bool, lock) -> dict[str, Any]:
    import ray
    from ray import tune

    from reprlab.platform.contract.context import load_run_data
    from reprlab.platform.core.log import verbose
    from reprlab.platform.run.loop import quiet_ray_logs
    from reprlab.platform.run.preflight import check_data, check_resources, check_tracking

    exp_dir = output / TUNE_DIR
    if resume and not exp_dir.is_dir():
        raise ConfigError(f"tune: {output} holds no sweep to resume")
    if not resume and exp_dir.exists():
        raise ConfigError(f"tune: {output} already holds a sweep; pass --resume to continue it, or choose another --output")
    if resume:
        check_sweep_resume(sweep, output)
    first = sweep.trial_config({}, 0 if sweep.spec.kfold else None)
    check_data(first, load_run_data(first))  # data problems surface here, before Ray starts
    sweep.trackers = check_tracking(first, output)  # trackers' packages and servers, before Ray starts
    spec = sweep.spec
    quiet_ray_logs()
    if not ray.is_initialized():
        from reprlab.platform.core.log import ray_init

        ray_init(log_to_driver=True)
    check_resources(first)
    if spec.resources.workers == 0:  # the trial process trains: one trial must fit the cluster
        from reprlab.platform.run.preflight import fixed_size

        have = ray.cluster_resources()
        for key, want in trial_resources(spec).items():
            if want and have.get(key, 0.0) + 1e-9 < want and fixed_size():
                raise ConfigError(f"tune: resources: one trial needs {want:g} {key}(s), the cluster has "
                                  f"{have.get(key, 0.0):g} (a fixed-size cluster); lower resources.cpus_per_worker / "
                                  f"gpus_per_worker")
    output.mkdir()
    if sweep.source is not None and not resume:
        (output / "sweep.yaml").write_text(sweep.source.read_text())
    if not resume:
        (output / SWEEP_STATE).write_text(json.dumps({"spec": spec.model_dump(), "base": sweep.base}, default=str))
    sweep.output = output.uri
    # Tune's experiment state on the same storage (object storage: through its filesystem)
    fs = None if output.is_local else output.fs

    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), trial_resources(spec))
    if resume:
        tuner = tune.Tuner.restore(exp_dir.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        epochs = sweep.epochs
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.trials,
                search_alg=search_algorithm(spec), scheduler=scheduler(spec, epochs),
                max_concurrent_trials=max_concurrent(spec, ray.cluster_resources()),
            ),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=output.path, storage_filesystem=fs,
                                      verbose=1 if verbose() else 0),
        )
    grid = tuner.fit()
    from reprlab.platform.tune.results import collect_results

    summary = collect_results(sweep, output, grid)
    if sweep.trackers and summary.get("best_trial"):  # the best trial marked in the trackers
        from reprlab.platform.run.tracking import mark_best_trial

        best = output / TRIALS_DIR / summary["best_trial"]
        runs = [best] if spec.kfold is None else [best / f"fold{f}" for f in range(spec.kfold.folds)]
        mark_best_trial(first, sweep.trackers, runs, spec.name)
    return summary
