"""Typed experiment config: YAML files, presets, and dotted ``--set key=value`` overrides.

Every section forbids unknown keys. Problems surface as one :class:`ConfigError` line naming the
dotted key and what it expects, before Ray starts. The ``method`` section is typed by the
registered method's own ``Config`` class, chosen by ``method.name``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from reprlab.platform.errors import ConfigError

METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "p@1", "map@r")


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


class GlyphsSection(Section):
    size: int = Field(32, ge=8, le=256)
    renders_per_face: int = Field(3, ge=1)
    seed: int = Field(0, ge=0)
    extra_font_dirs: list[str] = []


class ColoredDigitsSection(Section):
    """scikit-learn's 8 x 8 digits, upscaled and multiplied by a random color per image."""

    size: int = Field(32, ge=8, le=256, description="rendered side in pixels")
    seed: int = Field(0, ge=0, description="colors and the train/test split")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="per digit")
    min_channel: float = Field(0.2, ge=0.0, lt=1.0, description="each color channel uniform in [min_channel, 1]")


class DataSection(Section):
    name: Literal["glyphs", "cub", "cars", "sop", "inshop", "vehicleid", "colored_digits"] = "glyphs"
    root: str | None = Field(None, description="data set directory (glyphs: cache directory)")
    image_size: int = Field(32, ge=8, le=1024)
    classes_per_batch: int = Field(32, ge=2, description="P: classes in one global batch")
    samples_per_class: int = Field(4, ge=2, description="M: images of each class in a batch")
    iterations_per_epoch: int | None = Field(None, ge=1, description="default: train images // batch")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    prefetch_factor: int = Field(2, ge=1, description="batches each DataLoader worker loads ahead")
    pin_memory: bool | None = Field(None, description="page-locked batches for faster host-to-GPU copies (default: with a GPU)")
    shards: str | None = Field(
        None, description="Parquet shards written by `reprlab data pack` (a directory or s3:// URI), read instead of data.root")
    shard_cache: str | None = Field(
        None, description="local directory for shards fetched from object storage (default ~/.cache/reprlab/shards)")
    augment: bool = True
    vehicleid_test_size: Literal[800, 1600, 2400] = 800
    validation: ValidationSection = ValidationSection()
    glyphs: GlyphsSection = GlyphsSection()
    colored_digits: ColoredDigitsSection = ColoredDigitsSection()

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class


class ModelSection(Section):
    backbone: Literal["small_cnn", "resnet18", "resnet50"] = "small_cnn"
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


class EvalSection(Section):
    batch_size: int = Field(256, ge=1)
    selection_metric: str | None = Field(
        None, description="validation metric that picks the reported epoch (default: the method's; map@r for DML)")
    kmeans_niter: int = Field(20, ge=1)
    every: int = Field(1, ge=1, description="evaluate val/test at epoch 0, every N epochs and the last epoch")
    test: Literal["every", "on_improvement"] = Field(
        "every", description="on_improvement: evaluate test only when the val selection metric improves")


class ScalingSection(Section):
    num_workers: int = Field(2, ge=0, description="Ray Train workers; 0 runs in-process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(0, ge=-1)


class CheckpointSection(Section):
    keep: int = Field(2, ge=1, description="checkpoints kept on disk")


class MethodConfig(Section):
    """Base of every method's config; each method subclasses it with ``name: Literal[...]``."""

    name: str = "margin"

    def check_against(self, cfg: ExperimentConfig) -> None:
        """Cross-section checks of a method's settings (raise ConfigError naming the keys)."""


class ExperimentConfig(Section):
    experiment: ExperimentSection = ExperimentSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    method: SerializeAsAny[MethodConfig] = MethodConfig()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    scaling: ScalingSection = ScalingSection()
    checkpoint: CheckpointSection = CheckpointSection()

    @model_validator(mode="after")
    def _batch_divides(self) -> ExperimentConfig:
        workers = max(1, self.scaling.num_workers)
        if self.data.classes_per_batch % workers:
            raise ValueError(
                f"data.classes_per_batch ({self.data.classes_per_batch}) must be divisible by "
                f"scaling.num_workers ({workers}) so every worker gets whole classes"
            )
        return self

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


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict into an :class:`ExperimentConfig` (ConfigError on any problem)."""
    from reprlab.platform.method import METHODS

    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise ConfigError("config: method: expected a mapping with at least 'name'")
    name = method_raw.get("name", MethodConfig().name)
    method_cls = METHODS.get(name, key="method.name")
    try:
        method_cfg = method_cls.Config.model_validate(method_raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, "method", method_cls.Config)) from None
    try:
        cfg = ExperimentConfig.model_validate({**raw, "method": method_cfg})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, "", ExperimentConfig)) from None
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
        raise ConfigError(f"config: {source}: no such file")
    else:
        text = path.read_text()
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
