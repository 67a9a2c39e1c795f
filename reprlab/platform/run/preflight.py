"""Checks that need the data or the cluster, made on the driver before anything is written.

``run_training`` calls :func:`check_data` with the run's loaded data, :func:`check_tracking` (the
experiment trackers: packages, servers) and :func:`check_resources` once Ray is up. Everything here raises one ``ConfigError``/``DataError`` line; nothing writes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.core.errors import ConfigError, DataError, ReprlabError
from reprlab.platform.core.log import say
from reprlab.platform.core.storage import Location, resolve
from reprlab.platform.run.tracking import PACKAGES, PIP_NAMES, enabled, mlflow_uri


def check_data(cfg: ExperimentConfig, data) -> None:
    """What the workers would otherwise find out after ``config.yaml`` and epoch 0 are written:
    the class-balanced sampler's demands on the training classes (P classes, M images, P split over
    the workers), an empty validation split, and the method's own build (a weights file, a first
    stage): the method is built once on the CPU, without a run directory, and discarded."""
    from reprlab.platform.core.registry import METHODS

    method_cls = METHODS.get(cfg.method.name)
    d = cfg.data
    if d.validation.protocol != "none" and "val" not in data.eval_splits:
        raise DataError(f"data: data.validation.protocol={d.validation.protocol} (fraction {d.validation.fraction}) "
                        f"leaves no validation image (every training class keeps at least 2); raise "
                        f"data.validation.fraction or set data.validation.protocol=none")
    if method_cls.batching == "class_balanced" and len(data.targets):
        from reprlab.platform.dml.samplers import ClassBalancedSampler

        ClassBalancedSampler(data.targets, d.classes_per_batch, d.samples_per_class, 1,
                             world_size=max(1, cfg.scaling.num_workers), seed=cfg.experiment.seed)
    dry_build(cfg, data)


def dry_build(cfg: ExperimentConfig, data) -> None:
    """Build the method on the CPU (rank 0 of 1, no run directory): its user errors (a missing or
    unfitting weights file, a bad first-stage run) surface as one line before anything is
    written. Anything else it raises is left to the real run, which reports it in context."""
    import torch

    from reprlab.platform.contract.context import Context
    from reprlab.platform.core.registry import METHODS

    cpu = cfg.model_copy(deep=True)
    cpu.scaling.use_gpu = False
    cpu.train.compile = False
    state = torch.random.get_rng_state()
    try:
        METHODS.get(cfg.method.name)(Context(cpu, data, torch.device("cpu"), 0, 1, None)).build()
    except ReprlabError:
        raise
    except Exception:  # not a user error we can name: the run itself reports it
        pass
    finally:
        torch.random.set_rng_state(state)


# ---- the cluster -----------------------------------------------------------------------------------


def requested(cfg: ExperimentConfig) -> dict[str, float]:
    sc = cfg.scaling
    if sc.num_workers == 0:
        return {}
    need = {"CPU": sc.num_workers * sc.cpus_per_worker}
    if sc.use_gpu:
        need["GPU"] = float(sc.num_workers)
    return need


def _shortfall(need: dict[str, float], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}


def _describe(cfg: ExperimentConfig, short: dict[str, tuple[float, float]]) -> str:
    sc = cfg.scaling
    parts = []
    for k, (want, have) in short.items():
        per = f"{sc.cpus_per_worker:g} CPU(s)" if k == "CPU" else "1 GPU"
        parts.append(f"{sc.num_workers} worker(s) x {per} = {want:g} {k}(s), the cluster has {have:g}")
    return "; ".join(parts)


def fixed_size() -> bool:
    """Whether the Ray cluster cannot grow: one node and no autoscaler (a cluster reprlab started
    itself, or any single-node cluster without ``RAY_ADDRESS``/``REPRLAB_AUTOSCALING`` saying
    otherwise). ``REPRLAB_AUTOSCALING=1`` declares that nodes may be added."""
    import ray

    if os.environ.get("REPRLAB_AUTOSCALING", "").lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("REPRLAB_AUTOSCALING", "").lower() in ("0", "false", "no"):
        return True
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) <= 1 and not os.environ.get("RAY_ADDRESS")


def check_resources(cfg: ExperimentConfig, poll_s: float = 2.0, notice_s: float = 30.0) -> None:
    """A request the cluster cannot satisfy: one line at once on a fixed-size cluster; on one that
    may grow, a one-line notice every ``notice_s`` seconds until the nodes are there, and one line
    after ``scaling.wait_timeout_s``. Compares totals, not what other jobs use at the moment."""
    import ray

    need = requested(cfg)
    if not need or not ray.is_initialized():
        return
    short = _shortfall(need, ray.cluster_resources())
    if not short:
        return
    hint = ("lower scaling.num_workers or scaling.cpus_per_worker" if "CPU" in short else
            "set scaling.use_gpu=false or fewer workers")
    if fixed_size():
        raise ConfigError(f"scaling: the request cannot be met: {_describe(cfg, short)} (a fixed-size cluster); {hint}")
    timeout = cfg.scaling.wait_timeout_s
    start = last = time.monotonic()
    say(f"[reprlab] waiting for the cluster to grow: {_describe(cfg, short)}"
        + (f" (giving up after {timeout:g} s: scaling.wait_timeout_s)" if timeout else ""))
    while short:
        now = time.monotonic()
        if timeout and now - start >= timeout:
            raise ConfigError(f"scaling: gave up after {timeout:g} s (scaling.wait_timeout_s) waiting for the cluster: "
                              f"{_describe(cfg, short)}; {hint}")
        if now - last >= notice_s:
            say(f"[reprlab] still waiting ({now - start:.0f} s): {_describe(cfg, short)}")
            last = now
        time.sleep(poll_s)
        short = _shortfall(need, ray.cluster_resources())
    sys.stdout.flush()


# ---- experiment trackers ------------------------------------------------------------------------


def check_tracking(cfg: ExperimentConfig, run_dir: Location | str | Path | None) -> list[str]:
    """The trackers this run will use. A missing package, an unreachable MLflow server or W&B
    service, or a local directory that cannot be had is one ConfigError line
    (``tracking.on_error=fail``) or one warning line, and the run goes on without that tracker."""
    run = resolve(run_dir) if run_dir is not None else None
    use = []
    for name in enabled(cfg):
        problem = _problem(name, cfg, run)
        if problem is None:
            use.append(name)
        elif cfg.tracking.on_error == "fail":
            raise ConfigError(f"config: {problem} (or tracking.on_error=warn to train without it)")
        else:
            say(f"[reprlab] warning: {problem}; training without {name} (tracking.on_error=warn)")
    return use


def _problem(name: str, cfg: ExperimentConfig, run: Location | None) -> str | None:
    import importlib

    try:
        importlib.import_module(PACKAGES[name])
    except ImportError:
        return (f"tracking.{name}.enabled: the {PIP_NAMES[name]} package is not installed "
                f"(pip install 'reprlab[tracking]'), or set tracking.{name}.enabled=false")
    if name in ("tensorboard", "wandb"):
        section = getattr(cfg.tracking, name)
        if name == "wandb" and section.mode == "online":
            problem = _wandb_online_problem()
            if problem:
                return problem
        if run is not None and section.dir is None and not run.is_local:
            return (f"tracking.{name}.dir: the run directory {run} is object storage and {name} writes local "
                    f"files; set tracking.{name}.dir to a local or mounted directory")
        return None
    return _mlflow_problem(cfg.tracking.mlflow.tracking_uri)


def _mlflow_problem(setting: str | None) -> str | None:
    import urllib.error
    import urllib.request

    uri = mlflow_uri(setting)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                return f"tracking.mlflow.tracking_uri: the MLflow server at {uri} answers HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return f"tracking.mlflow.tracking_uri: cannot reach the MLflow server at {uri} ({reason})"
    elif uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path))
        parent = next((p for p in (path, *path.parents) if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK) or (path.exists() and not path.is_dir()):
            return f"tracking.mlflow.tracking_uri: cannot write an MLflow file store at {path}"
    return None


def _wandb_online_problem() -> str | None:
    """Online W&B needs an API key and the service: one line for either, before Ray starts."""
    import netrc
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    host = urlparse(base).hostname or base
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return (f"tracking.wandb.mode=online: no W&B API key for {host} (set WANDB_API_KEY or run `wandb login`); "
                f"or use tracking.wandb.mode=offline")
    try:
        with urllib.request.urlopen(base, timeout=5) as response:
            response.read(64)
    except urllib.error.HTTPError:
        pass  # the service answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"tracking.wandb.mode=online: cannot reach {base} ({reason}); or use tracking.wandb.mode=offline"
    return None
