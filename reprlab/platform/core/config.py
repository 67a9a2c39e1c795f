"""Typed experiment config: YAML files, presets, and dotted ``--set key=value`` overrides.

Every section forbids unknown keys. Problems surface as one :class:`ConfigError` line naming the
dotted key and what it expects, before Ray starts. The ``method`` section is typed by the
registered method's own ``Config`` class, chosen by ``method.name``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, model_validator

from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.registry import DATASETS, METHODS

METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "p@1", "map@r")
PROBE_KEYS = ("knn_acc", "probe_acc")  # with eval.probes


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentSection(Section):
    name: str = "glyphs-margin"
    seed: int = Field(0, ge=0)


class ValidationSection(Section):
    """How validation images are carved out of the training classes."""

    protocol: Literal["holdout", "kfold", "none"] = "holdout"
    fraction: float = Field(0.15, gt=0.0, lt=1.0, description="per-class hold-out fraction")
    folds: int = Field(4, ge=2, description="class-disjoint k-fold: number of folds")
    fold: int = Field(0, ge=0, description="class-disjoint k-fold: which fold validates")

    @model_validator(mode="after")
    def _fold_in_range(self) -> ValidationSection:
        if self.fold >= self.folds:
            raise ValueError(f"fold must be < folds ({self.folds}), got {self.fold}")
        return self


class DataSection(Section):
    """The data a run reads. ``name`` is a registered data set (``reprlab/platform/data/sets/``);
    each set with settings adds its own section ``data.<name>`` (the registry hands the config
    those types: see :func:`data_section_type`)."""

    name: str = Field("glyphs", description="a registered data set (reprlab data list)")
    root: str | None = Field(None, description="data set directory (cached sets such as glyphs: cache directory)")
    image_size: int = Field(32, ge=8, le=1024)
    batch_size: int | None = Field(
        None, ge=1, description="global batch of methods without class balance (default: classes_per_batch x "
                                "samples_per_class); it need not divide by the worker count")
    classes_per_batch: int = Field(32, ge=2, description="P: classes in one global class-balanced batch")
    samples_per_class: int = Field(4, ge=2, description="M: images of each class in a class-balanced batch")
    iterations_per_epoch: int | None = Field(None, ge=1, description="default: train images // batch")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    prefetch_factor: int = Field(2, ge=1, description="batches each DataLoader worker loads ahead")
    pin_memory: bool | None = Field(None, description="page-locked batches for faster host-to-GPU copies (default: with a GPU)")
    shards: str | None = Field(
        None, description="Parquet shards written by `reprlab data pack` (a directory or s3:// URI), read instead of data.root")
    shard_cache: str | None = Field(
        None, description="local directory for shards fetched from object storage (default ~/.cache/reprlab/shards)")
    augment: bool = True
    validation: ValidationSection = ValidationSection()

    @property
    def global_batch(self) -> int:
        """Samples in one global batch: ``batch_size``, or P x M."""
        return self.batch_size or self.classes_per_batch * self.samples_per_class


class ModelSection(Section):
    backbone: Literal["small_cnn", "resnet18", "resnet50", "alexnet"] = "small_cnn"
    pretrained: str = Field("none", description="none | imagenet | path to a weights file")
    embed_dim: int = Field(128, ge=2)
    freeze_bn: bool | None = Field(None, description="default: True for ResNets, False for small_cnn")
    width: int = Field(32, ge=4, description="small_cnn: channels of its first stage")


class OptimSection(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(4e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    milestones: list[int] = []
    gamma: float = Field(0.3, gt=0, le=1)


class TrainSection(Section):
    epochs: int = Field(10, ge=1)
    log_every: int = Field(20, ge=1)
    # speed options (see Context.prepare): none of them changes what is trained, only how fast
    amp: Literal["none", "bf16"] = Field(
        "none", description="run the networks under bfloat16 autocast (GPU; also CPU autocast); outputs are float32")
    channels_last: bool = Field(False, description="networks and their 4-d inputs in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the forward of every network the method prepares")
    grad_accumulation: int = Field(
        1, ge=1, description="micro-batches per optimizer step (methods that support it; same gradient, less memory)")
    sync_bn: bool = Field(
        True, description="several workers: trainable BatchNorm normalizes over the global batch (float64 statistics "
                          "summed over the workers), so the result does not depend on the worker count; false: each "
                          "worker over its own share")


class EvalSection(Section):
    batch_size: int = Field(256, ge=1)
    selection_metric: str | None = Field(
        None, description="validation metric that picks the reported epoch (default: the method's; map@r for DML)")
    kmeans_niter: int = Field(20, ge=1)
    every: int = Field(1, ge=1, description="evaluate val/test at epoch 0, every N epochs and the last epoch")
    test: Literal["every", "on_improvement"] = Field(
        "every", description="on_improvement: evaluate test only when the val selection metric improves")
    probes: bool = Field(
        False, description="embedding methods: also knn_acc (majority class of the 5 nearest other images) and "
                           "probe_acc (a linear classifier fitted on one half of the split, scored on the other)")


class ScalingSection(Section):
    num_workers: int = Field(2, ge=0, description="Ray Train workers; 0 runs in-process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(0, ge=-1)
    wait_timeout_s: float = Field(
        900.0, ge=0, description="a cluster that may grow (autoscaler): give up waiting for the requested workers "
                                 "after this many seconds (0: wait forever); a fixed-size cluster refuses at once")


class CheckpointSection(Section):
    keep: int = Field(2, ge=1, description="checkpoints kept on disk")


class TensorBoardTracking(Section):
    enabled: bool = False
    dir: str | None = Field(None, description="event file directory (default: RUN/tensorboard; a local or mounted path)")


class MLflowTracking(Section):
    enabled: bool = False
    tracking_uri: str | None = Field(
        None, description="http(s)://host:port of a tracking server, sqlite:///file.db, or a directory / file:// URI "
                          "(a file store); default: MLFLOW_TRACKING_URI, else MLflow's own default")
    experiment_name: str | None = Field(None, description="default: experiment.name (in a sweep: the sweep's name)")


class WandbTracking(Section):
    enabled: bool = False
    project: str = Field("reprlab", min_length=1)
    entity: str | None = Field(None, description="W&B user or team (default: the API key's default entity)")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline: run files only (RUN/wandb), uploaded later with `wandb sync`")
    dir: str | None = Field(None, description="where W&B keeps its run files (default: RUN; a local or mounted path)")


class TrackingSection(Section):
    """Experiment trackers, each off by default; rank 0 alone talks to them (``run/tracking.py``)."""

    tensorboard: TensorBoardTracking = TensorBoardTracking()
    mlflow: MLflowTracking = MLflowTracking()
    wandb: WandbTracking = WandbTracking()
    on_error: Literal["fail", "warn"] = Field(
        "fail", description="a missing package or unreachable tracker: fail before Ray starts (one line), or warn "
                            "and train without that tracker")


class MethodConfig(Section):
    """Base of every method's config; each method subclasses it with ``name: Literal[...]``."""

    name: str = "margin"

    def check_against(self, cfg: ExperimentConfig) -> None:
        """Cross-section checks of a method's settings (raise ConfigError naming the keys)."""


class ExperimentConfig(Section):
    experiment: ExperimentSection = ExperimentSection()
    data: SerializeAsAny[DataSection] = DataSection()
    model: ModelSection = ModelSection()
    method: SerializeAsAny[MethodConfig] = MethodConfig()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    scaling: ScalingSection = ScalingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------- parsing


def _format_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, err["loc"][:-1]) if model else []
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return f"config: {loc}: unknown key{hint}"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) or got is None else f", got {got!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"config: {loc}: {msg}{got_s}" if loc else f"config: {msg}"


def _known_keys(model: type[BaseModel], path: tuple) -> list[str]:
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def data_section_type() -> type[DataSection]:
    """``DataSection`` with one field per registered data set that has settings (``data.glyphs``,
    ``data.colored_digits``, ...), typed by the data set's own ``Config``: the registry hands the
    config its types, so adding a data set never edits this file."""
    fields = tuple((name, spec.Config) for name, spec in DATASETS.items() if spec.Config is not None)
    return _data_section_type(fields)


@lru_cache(maxsize=4)
def _data_section_type(fields: tuple[tuple[str, type[Section]], ...]) -> type[DataSection]:
    return create_model("DataSection", __base__=DataSection,
                        **{name: (cls, Field(default_factory=cls)) for name, cls in fields})


def _named_section(raw: dict[str, Any], section: str, default: str) -> tuple[dict[str, Any], str]:
    body = raw.pop(section, None) or {}
    if not isinstance(body, dict):
        raise ConfigError(f"config: {section}: expected a mapping with at least 'name'")
    name = body.get("name", default)
    if not isinstance(name, str):
        raise ConfigError(f"config: {section}.name: expected a name, got {name!r}")
    return body, name


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict into an :class:`ExperimentConfig` (ConfigError on any problem).

    ``method`` is typed by the registered method's ``Config`` and ``data`` by the registered data
    sets' sections. Then the cross-checks that need both: what the method needs from the data set
    (``Method.requirements``), how its batches split over the workers (``Method.batching``), and
    the method's own ``check_against``."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    raw = dict(raw)
    method_raw, name = _named_section(raw, "method", MethodConfig().name)
    method_cls = METHODS.get(name, key="method.name")
    data_raw, data_name = _named_section(raw, "data", DataSection().name)
    dataset = DATASETS.get(data_name, key="data.name")
    data_cls = data_section_type()
    sections: dict[str, Any] = {}
    for key, cls, body in (("method", method_cls.Config, method_raw), ("data", data_cls, data_raw)):
        try:
            sections[key] = cls.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(_format_error(exc, key, cls)) from None
    try:
        cfg = ExperimentConfig.model_validate({**raw, **sections})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, "", ExperimentConfig)) from None
    _check_data_for_method(cfg, method_cls, dataset)
    _check_batches(cfg, method_cls)
    cfg.method.check_against(cfg)
    if cfg.train.grad_accumulation > 1 and not method_cls.supports_accumulation:
        raise ConfigError(f"config: train.grad_accumulation: method {name} does not support micro-batches; "
                          "use 1")
    metrics = method_cls.metric_names(cfg)
    if cfg.eval.selection_metric is None:
        cfg.eval.selection_metric = method_cls.selection_metric
    elif cfg.eval.selection_metric not in metrics:
        raise ConfigError(f"config: eval.selection_metric: {name} reports no {cfg.eval.selection_metric!r} "
                          f"(metrics: {', '.join(metrics)})")
    return cfg


def _check_data_for_method(cfg: ExperimentConfig, method_cls: Any, dataset: Any) -> None:
    """What the method needs (labels, factor pairs, input/target pairs, ...) against what the
    data set provides: one line naming both and the data sets that would do."""
    missing = sorted(set(method_cls.requirements(cfg)) - set(dataset.provides))
    if missing:
        fits = [n for n, s in DATASETS.items() if not set(method_cls.requirements(cfg)) - set(s.provides)]
        raise ConfigError(
            f"config: data.name: method {cfg.method.name} needs {' and '.join(missing)}, which data set "
            f"{dataset.name} does not provide (it provides: {', '.join(sorted(dataset.provides)) or 'images only'}; "
            f"data sets that fit: {', '.join(fits) or 'none registered'})")
    if cfg.data.validation.protocol == "kfold" and "labels" not in dataset.provides:
        raise ConfigError(f"config: data.validation.protocol: kfold splits classes, and data set {dataset.name} "
                          "has no labels; use holdout or none")


def divisors(n: int, limit: int = 64) -> list[int]:
    return [w for w in range(1, min(n, limit) + 1) if n % w == 0]


def _check_batches(cfg: ExperimentConfig, method_cls: Any) -> None:
    """Class-balanced batches give every worker whole classes (P must divide by the workers);
    plain batches split into near-equal shares (any batch of at least one sample per worker)."""
    d, workers = cfg.data, max(1, cfg.scaling.num_workers)
    if method_cls.batching == "class_balanced":
        pm = d.classes_per_batch * d.samples_per_class
        if d.batch_size is not None and d.batch_size != pm:
            raise ConfigError(
                f"config: data.batch_size: {cfg.method.name} draws class-balanced batches of data.classes_per_batch x "
                f"data.samples_per_class = {pm}; leave data.batch_size unset or set it to {pm}, got {d.batch_size}")
        if d.classes_per_batch % workers:
            raise ConfigError(
                f"config: data.classes_per_batch ({d.classes_per_batch}) must be divisible by scaling.num_workers "
                f"({workers}) so every worker gets whole classes (worker counts that divide it: "
                f"{', '.join(map(str, divisors(d.classes_per_batch)))})")
    elif d.global_batch < workers:
        raise ConfigError(f"config: data.batch_size: a global batch of {d.global_batch} cannot give each of "
                          f"scaling.num_workers={workers} workers a sample; use at most {d.global_batch} workers")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as a YAML scalar/list)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"config: --set {item!r}: expected KEY=VALUE with a dotted key, e.g. method.beta=0.6")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config: --set {item}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def preset_names() -> list[str]:
    root = resources.files("reprlab") / "presets"
    return sorted(
        f"{d.name}/{f.name.removesuffix('.yaml')}"
        for d in root.iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.name.endswith(".yaml")
    )


def read_yaml(source: str | Path) -> dict[str, Any]:
    """Read a config file, or a shipped preset named ``method/benchmark`` (e.g. ``margin/cub``)."""
    path = Path(source)
    if not path.exists() and not str(source).endswith((".yaml", ".yml")):
        preset = resources.files("reprlab") / "presets" / f"{source}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"config: {source}: no such file or preset (presets: {', '.join(preset_names())})"
            )
        text = preset.read_text()
    elif not path.is_file():
        raise ConfigError(f"config: {source}: " + ("a directory, not a config file" if path.is_dir() else "no such file"))
    else:
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config: {source}: not a text file (cannot decode byte {exc.start} as UTF-8)") from None
        except OSError as exc:
            raise ConfigError(f"config: {source}: cannot read it ({exc.strerror or type(exc).__name__})") from None
        if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
            raise ConfigError(f"config: {source}: the file is empty; write the sections to change (e.g. "
                              f"'train: {{epochs: 5}}') or name a preset (reprlab config margin/glyphs)")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {source}:{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {source}: the top level must be a mapping of sections")
    return raw


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw = read_yaml(source) if source is not None else {}
    return parse_config(apply_overrides(raw, list(overrides or [])))


def dump_config(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
