"""Experiment tracking: TensorBoard, MLflow and Weights & Biases (the ``tracking`` config section).

Rank 0 of a run alone talks to the trackers (``Tracking.open`` returns a tracker that does nothing
on every other rank). What each run sends (docs/TRACKING.md says where it appears):

- at the start: the resolved config as parameters (flattened dotted keys), tags for the data set
  and the method (and, in a sweep, the sweep and the trial);
- after every epoch: every number of the epoch's row in ``metrics.parquet`` (``train/*``,
  ``val/*``, ``test/*``, ``method/*``, timings, throughput) against the epoch; the method's
  per-step records (PADS' teacher steps: ``steps/*`` against ``steps/iteration``); the figures
  the method wrote into the run directory since the previous epoch (PNG), as images / artifacts;
- at the end: the summary's test numbers (``summary/test/*``, ``summary/best_test/*``,
  ``summary/initial/*``) and the selected epoch.

MLflow and W&B are opened with Ray's Train setup helpers (``ray.air.integrations.mlflow.setup_mlflow``,
``ray.air.integrations.wandb.setup_wandb``); TensorBoard event files are written with tensorboardX,
the writer of Ray Tune's own TensorBoard logger. ``RUN/tracking.json`` keeps each tracker's run id
and the last epoch it has logged: a resumed run (or a restarted sweep trial) continues the same
tracker run and logs each epoch exactly once.

MLflow metric names cannot hold ``@`` (and TensorBoard's writer would make it ``_``): in both,
``val/recall@1`` is logged as ``val/recall_at_1``; W&B keeps the name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.core.errors import ReprlabError
from reprlab.platform.core.log import say
from reprlab.platform.core.storage import Location, resolve

TRACKERS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}  # module to import
PIP_NAMES = {"tensorboard": "tensorboardX", "mlflow": "mlflow-skinny", "wandb": "wandb"}
STATE_FILE = "tracking.json"
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg")
# wall-clock stamps (Unix seconds) of the row: not curves anyone compares
NOT_METRICS = frozenset({"epoch", "steps", "time/started_at", "time/first_step_at"})


class TrackingError(ReprlabError):
    """A tracker failed during the run (``tracking.on_error=fail``)."""


def enabled(cfg: ExperimentConfig) -> list[str]:
    return [name for name in TRACKERS if getattr(cfg.tracking, name).enabled]


def flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as flat ``section.key`` parameters (values as strings), tracking aside."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, (list, dict)) else str(node)

    walk("", {k: v for k, v in cfg.to_dict().items() if k != "tracking"})
    return out


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _safe_key(key: str) -> str:
    """MLflow refuses ``@`` in a metric name and TensorBoard would turn it into ``_``."""
    return key.replace("@", "_at_")


def local_dir(setting: str | None, run_dir: Location, default: str) -> Path | None:
    """A tracker's local directory: the setting, else ``RUN/<default>`` (None: the run directory
    is object storage and nothing was set)."""
    if setting:
        return Path(setting).expanduser()
    if run_dir.is_local:
        return run_dir.local_path / default if default else run_dir.local_path
    return None


def tensorboard_dir(cfg: ExperimentConfig, run: Location, trial: str | None = None) -> Path:
    """``RUN/tensorboard``, or ``tracking.tensorboard.dir`` (one subdirectory per sweep trial)."""
    setting = cfg.tracking.tensorboard.dir
    if setting and trial:
        return Path(setting).expanduser() / trial
    return local_dir(setting, run, "tensorboard")


def mlflow_uri(setting: str | None) -> str:
    """The tracking URI a run uses; a file store (a directory) is allowed explicitly
    (MLflow 3 refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set)."""
    import mlflow

    uri = setting or mlflow.get_tracking_uri()
    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if "://" not in uri:
            uri = Path(uri).expanduser().resolve().as_uri()
    return uri


# ---- in the training worker -------------------------------------------------------------------------


class _Backend:
    name = ""

    def __init__(self, cfg: ExperimentConfig, run: Location, state: dict[str, Any], info: dict[str, Any]) -> None:
        self.cfg, self.run, self.state, self.info = cfg, run, state, info

    @property
    def resumed(self) -> bool:
        return "epoch" in self.state

    def tags(self) -> dict[str, str]:
        tags = {"dataset": self.cfg.data.name, "method": self.cfg.method.name,
                "experiment": self.cfg.experiment.name, "run_dir": self.run.uri}
        if self.info.get("sweep"):
            tags.update(sweep=self.info["sweep"], trial=self.info.get("trial", ""))
        return tags

    def run_name(self) -> str:
        return self.info.get("name") or self.run.name

    def start(self) -> None: ...
    def epoch(self, epoch: int, metrics: dict[str, float], steps: list[dict[str, float]],
              figures: dict[str, Path]) -> None: ...
    def finish(self, summary: dict[str, float], selected_epoch: int) -> None: ...
    def close(self, status: str) -> None: ...


class _TensorBoard(_Backend):
    name = "tensorboard"

    def start(self) -> None:
        from tensorboardX import SummaryWriter

        self.dir = tensorboard_dir(self.cfg, self.run, self.info.get("name") if self.info.get("sweep") else None)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state["dir"] = str(self.dir)
        self.writer = SummaryWriter(str(self.dir), flush_secs=30)
        if not self.resumed:
            tags = self.tags()
            self.writer.add_text("run/tags", "  \n".join(f"**{k}**: {v}" for k, v in tags.items()), 0)
            self.writer.add_text("run/config", "  \n".join(f"{k} = {v}" for k, v in flat_params(self.cfg).items()), 0)

    def epoch(self, epoch, metrics, steps, figures) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(_safe_key(key), value, epoch)
        for record in steps:
            it = int(record["steps/iteration"])
            for key, value in record.items():
                if key != "steps/iteration":
                    self.writer.add_scalar(_safe_key(key), value, it)
        for key, path in figures.items():
            self.writer.add_image(key, _pixels(path), epoch, dataformats="HWC")
        self.writer.flush()

    def finish(self, summary, selected_epoch) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(_safe_key(key), value, selected_epoch)
        hparams = self.info.get("params") or {k: v for k, v in flat_params(self.cfg).items()}
        test = {k: v for k, v in summary.items() if k.startswith("summary/test/")}
        if test:
            self.writer.add_hparams({k: _hparam(v) for k, v in hparams.items()},
                                    {_safe_key(f"hparams/{k.removeprefix('summary/')}"): v for k, v in test.items()},
                                    name="hparams", global_step=selected_epoch)

    def close(self, status) -> None:
        self.writer.close()


class _MLflow(_Backend):
    name = "mlflow"

    def start(self) -> None:
        import mlflow
        from ray.air.integrations.mlflow import setup_mlflow

        uri = mlflow_uri(self.cfg.tracking.mlflow.tracking_uri)
        experiment = self.info.get("sweep") or self.cfg.tracking.mlflow.experiment_name or self.cfg.experiment.name
        mlflow.set_tracking_uri(uri)
        if mlflow.active_run() is not None:  # left by an earlier run in this process
            mlflow.end_run("KILLED")
        if "run_id" in self.state:  # a resume: the same MLflow run (setup_mlflow keeps an active run)
            mlflow.start_run(run_id=self.state["run_id"])
        self.mlflow = setup_mlflow(tracking_uri=uri, experiment_name=experiment, run_name=self.run_name(),
                                   tags=self.tags(), create_experiment_if_not_exists=True)
        run = self.mlflow.active_run()
        self.state["run_id"] = run.info.run_id
        self.state["experiment_id"] = run.info.experiment_id
        params = flat_params(self.cfg)
        logged = self.mlflow.get_run(run.info.run_id).data.params
        # a param keeps its first value (MLflow refuses a change): a resume adds only new keys
        new = {k: v[:6000] for k, v in params.items() if k not in logged}
        if new:
            self.mlflow.log_params(new)

    def epoch(self, epoch, metrics, steps, figures) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_safe_key(k), v, now, epoch) for k, v in metrics.items()]
        for record in steps:
            it = int(record["steps/iteration"])
            batch += [Metric(_safe_key(k), v, now, it) for k, v in record.items() if k != "steps/iteration"]
        client = self.mlflow.MlflowClient()
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            client.log_batch(self.state["run_id"], metrics=batch[i : i + 1000], synchronous=True)
        for key, path in figures.items():
            self.mlflow.log_artifact(str(path), artifact_path=f"figures/epoch_{epoch:04d}")

    def finish(self, summary, selected_epoch) -> None:
        self.mlflow.log_metrics({_safe_key(k): v for k, v in summary.items()}, step=selected_epoch)
        self.mlflow.set_tag("selected_epoch", str(selected_epoch))

    def close(self, status) -> None:
        self.mlflow.end_run(status)


class _Wandb(_Backend):
    name = "wandb"

    def start(self) -> None:
        import wandb
        from ray.air.integrations.wandb import setup_wandb

        section = self.cfg.tracking.wandb
        self.state.setdefault("run_id", uuid.uuid4().hex[:12])
        directory = local_dir(section.dir, self.run, "")
        directory.mkdir(parents=True, exist_ok=True)
        tags = self.tags()
        config = {k: v for k, v in self.cfg.to_dict().items() if k != "tracking"}
        if self.info.get("params"):
            config["sweep_params"] = self.info["params"]
        # Ray's helper asks for an API key unless WANDB_MODE says offline: say it for this call only
        before = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = section.mode
        try:
            self.wb = self._init(setup_wandb, wandb, config, section, directory, tags)
        finally:
            if before is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = before
        self.wb.define_metric("epoch")
        self.wb.define_metric("steps/iteration")
        self.wb.define_metric("steps/*", step_metric="steps/iteration")
        self.defined: set[str] = set()

    def _init(self, setup_wandb, wandb, config, section, directory, tags):
        return setup_wandb(
            config=config, trial_id=self.state["run_id"], trial_name=self.run_name(),
            group=self.info.get("sweep") or self.cfg.experiment.name, project=section.project, entity=section.entity,
            mode=section.mode, dir=str(directory), resume="allow", reinit="create_new",
            tags=[f"dataset:{tags['dataset']}", f"method:{tags['method']}"]
            + ([f"sweep:{tags['sweep']}"] if "sweep" in tags else []),
            job_type="trial" if self.info.get("sweep") else "train",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def epoch(self, epoch, metrics, steps, figures) -> None:
        import wandb

        for prefix in {k.split("/")[0] for k in [*metrics, *figures]} - self.defined:
            self.wb.define_metric(f"{prefix}/*", step_metric="epoch")
            self.defined.add(prefix)
        self.wb.log({"epoch": epoch, **metrics, **{k: wandb.Image(str(p)) for k, p in figures.items()}})
        for record in steps:
            self.wb.log(record)

    def finish(self, summary, selected_epoch) -> None:
        self.wb.summary.update({**summary, "selected_epoch": selected_epoch})

    def close(self, status) -> None:
        self.wb.finish(exit_code=0 if status == "FINISHED" else 1)


BACKENDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _hparam(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class Tracking:
    """The run's trackers on rank 0 (nothing on other ranks, nothing when none is on).

    ``epoch(row)`` after each epoch's row, ``finish(history)`` after the last epoch,
    ``close(status)`` always (``FINISHED``, ``FAILED`` or ``KILLED``)."""

    def __init__(self, cfg: ExperimentConfig, run: Location | None, backends: list[_Backend],
                 state: dict[str, Any]) -> None:
        self.cfg, self.run, self.backends, self.state = cfg, run, backends, state
        self.figures: dict[str, str] = dict(state.get("_figures", {}))  # name -> digest already logged

    @classmethod
    def open(cls, cfg: ExperimentConfig, run_dir: Location | str | Path, rank: int,
             spec: dict[str, Any] | None = None) -> Tracking:
        """``spec`` (from the driver): ``use`` (the trackers its checks passed; default: every
        enabled one), and in a sweep ``sweep`` (its name), ``trial`` and ``params``."""
        spec = dict(spec or {})
        names = [n for n in spec.get("use", enabled(cfg)) if n in enabled(cfg)]
        if rank != 0 or not names:
            return cls(cfg, None, [], {})
        run = resolve(run_dir)
        state = _read_state(run)
        info = {k: spec.get(k) for k in ("sweep", "trial", "params")}
        if spec.get("sweep"):
            info["name"] = spec.get("name") or spec.get("trial")
        tracking = cls(cfg, run, [], state)
        for name in names:
            backend = BACKENDS[name](cfg, run, state.setdefault(name, {}), info)
            if tracking._call(backend, "start"):
                tracking.backends.append(backend)
        tracking._save()
        return tracking

    def _call(self, backend: _Backend, method: str, *args: Any) -> bool:
        """One tracker call; a failure is one line (``on_error=fail``) or a warning, after which
        the run goes on without that tracker."""
        try:
            getattr(backend, method)(*args)
            return True
        except ReprlabError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            if self.cfg.tracking.on_error == "fail":
                raise TrackingError(f"tracking: {backend.name} failed ({method}): {type(exc).__name__}: {reason}") from None
            say(f"[reprlab] warning: tracking: {backend.name} failed ({method}): {reason}; "
                f"training on without it (tracking.on_error=warn)")
            if backend in self.backends:
                self.backends.remove(backend)
                try:
                    backend.close("FAILED")
                except Exception:
                    pass
            return False

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.backends:
            return
        epoch = int(row["epoch"])
        metrics = _numbers(row)
        steps = [s for s in (_step_record(r) for r in row.get("steps") or []) if s]
        with tempfile.TemporaryDirectory(prefix="reprlab-figures-") as tmp:
            figures = self._new_figures(Path(tmp))
            for backend in list(self.backends):
                if epoch <= backend.state.get("epoch", -1):
                    continue  # logged before a resume: each epoch once
                if self._call(backend, "epoch", epoch, metrics, steps, figures):
                    backend.state["epoch"] = epoch
        self._save()

    def _new_figures(self, tmp: Path) -> dict[str, Path]:
        """The figures (PNG/JPEG in the run directory) that are new or changed since the last epoch."""
        out: dict[str, Path] = {}
        for name in sorted(self.run.listdir()):
            if not name.lower().endswith(FIGURE_SUFFIXES):
                continue
            data = (self.run / name).read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            if self.figures.get(name) == digest:
                continue
            self.figures[name] = digest
            path = tmp / name
            path.write_bytes(data)
            out[f"figures/{Path(name).stem}"] = path
        return out

    def finish(self, history: list[dict[str, Any]]) -> None:
        if not self.backends:
            return
        from reprlab.platform.run.results import make_summary

        summary = make_summary(history, self.cfg.to_dict(), self.cfg.eval.selection_metric)
        numbers = {f"summary/{part}/{k}": float(v) for part in ("test", "best_test", "initial")
                   for k, v in (summary.get(part) or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for backend in list(self.backends):
            self._call(backend, "finish", numbers, int(summary["selected_epoch"]))

    def close(self, status: str = "FINISHED") -> None:
        """End every tracker run; never raises (it runs while another error may be on its way)."""
        for backend in self.backends:
            try:
                backend.close(status)
            except Exception as exc:
                say(f"[reprlab] warning: tracking: {backend.name} failed (close): "
                    f"{' '.join(str(exc).split())[:300] or type(exc).__name__}")
        self.backends = []

    def _save(self) -> None:
        if self.run is None:
            return
        self.state["_figures"] = self.figures
        (self.run / STATE_FILE).write_text(json.dumps(self.state, indent=1))


def _step_record(record: dict[str, Any]) -> dict[str, float]:
    """A method's step record as ``steps/*`` scalars with ``steps/iteration`` (lists are left out)."""
    scalars = {f"steps/{k}": float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if "steps/iteration" not in scalars:
        return {}
    return scalars


def _read_state(run: Location) -> dict[str, Any]:
    path = run / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError, OSError):
        return {}


# ---- after a sweep -----------------------------------------------------------------------------------


def mark_best_trial(cfg: ExperimentConfig, use: list[str], trial_dirs: list[Location], sweep: str) -> None:
    """Mark the best trial's tracker runs: MLflow tag ``best_trial=true`` on the run (and the
    experiment's tag ``best_run_id``), W&B tag ``best`` and ``summary.best_trial``, and a TensorBoard
    text ``sweep/best_trial`` in the trial's event files."""
    for run in trial_dirs:
        state = _read_state(run)
        try:
            if "mlflow" in use and state.get("mlflow", {}).get("run_id"):
                from mlflow.tracking import MlflowClient

                client = MlflowClient(mlflow_uri(cfg.tracking.mlflow.tracking_uri))
                client.set_tag(state["mlflow"]["run_id"], "best_trial", "true")
                client.set_experiment_tag(state["mlflow"]["experiment_id"], "best_run_id", state["mlflow"]["run_id"])
            if "wandb" in use and state.get("wandb", {}).get("run_id"):
                import wandb

                section = cfg.tracking.wandb
                directory = local_dir(section.dir, run, "")
                wb = wandb.init(id=state["wandb"]["run_id"], project=section.project, entity=section.entity,
                                mode=section.mode, dir=str(directory), resume="allow", reinit="create_new",
                                group=sweep, settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
                wb.tags = tuple(dict.fromkeys([*wb.tags, "best"]))
                wb.summary["best_trial"] = True
                wb.finish()
            if "tensorboard" in use and state.get("tensorboard", {}).get("dir"):
                from tensorboardX import SummaryWriter

                with SummaryWriter(state["tensorboard"]["dir"]) as writer:
                    writer.add_text("sweep/best_trial", f"best trial of sweep {sweep}", 0)
        except Exception as exc:
            say(f"[reprlab] warning: tracking: could not mark the best trial in {run}: "
                f"{' '.join(str(exc).split())[:200]}")
