"""The data-set catalog: what each data set is, what it provides, and how to read it.

One module per data set (``reprlab/platform/data/sets/``) describes itself with a :class:`DataSet`
and registers it (:func:`register_dataset`). The config takes ``data.name`` and the ``data.<name>``
sections from here; a method states what it needs (``Method.requirements``) and a data set that
lacks it is one config line before Ray starts.

What a data set can provide (``DataSet.provides``):

- ``labels``: integer class labels per image (metric learning, classifiers);
- ``metadata``: per-image columns beyond the label (``ImageSet.meta``);
- ``factor_pairs``: pairs of images that share known factors (IIN), drawn by ``pair_source``;
- ``paired``: an input/target image per sample (``ImageSet.target``: image-to-image methods);
- ``dense``: dense per-pixel targets (``ImageSet.dense``: masks, flow fields);
- ``keypoints``: keypoints per image (``ImageSet.dense`` of kind ``keypoints``);
- ``query_gallery``: a test protocol of query images retrieved from a separate gallery;
- ``appearance_pairs``: pairs sharing appearance and transfer triplets with exact ground truth
  (disentangling), from ``extra["appearance_pose"]`` (:mod:`reprlab.platform.data.appearance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reprlab.platform.core.registry import DATASETS

if TYPE_CHECKING:
    from reprlab.platform.core.config import DataSection, Section
    from reprlab.platform.data.types import Benchmark, ImageSet

CAPABILITIES = ("labels", "metadata", "factor_pairs", "paired", "dense", "keypoints", "query_gallery",
                "appearance_pairs")


@dataclass(frozen=True)
class DataSet:
    """A data set as the platform knows it.

    ``load(section, root)`` returns the set in its protocol (a :class:`Benchmark`); ``section`` is
    the whole ``data`` config section (its own settings are ``section.<name>``), ``root`` the
    resolved ``data.root`` (None when ``root="none"``). ``root``: ``required`` (real benchmarks:
    the directory holding the archive layout), ``cache`` (built on first use into
    ``default_root()`` unless ``data.root`` is given) or ``none`` (generated in memory).
    ``pairs(section, images, all_but)``: the factor-pair source over ``images``, for sets that
    provide ``factor_pairs``; ``pair_spec`` its class (``factors``, ``target_kinds``, ``probes``),
    known before any data is read.
    """

    name: str
    description: str
    load: Callable[[DataSection, Path | None], Benchmark]
    provides: frozenset[str] = frozenset({"labels"})
    Config: type[Section] | None = None
    root: Literal["required", "cache", "none"] = "required"
    default_root: Callable[[], Path] | None = None
    pairs: Callable[[DataSection, ImageSet, float], Any] | None = None
    pair_spec: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.provides) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"data set {self.name}: unknown capabilities {sorted(unknown)} "
                             f"(known: {', '.join(CAPABILITIES)})")
        if ("factor_pairs" in self.provides) != (self.pairs is not None):
            raise ValueError(f"data set {self.name}: 'factor_pairs' and a pairs function go together")
        if self.root == "cache" and self.default_root is None:
            raise ValueError(f"data set {self.name}: a cached set needs default_root")


def register_dataset(spec: DataSet) -> DataSet:
    """Make ``spec`` selectable as ``data.name: <spec.name>``."""
    return DATASETS.register(spec.name)(spec)


def get_dataset(name: str, key: str = "data.name") -> DataSet:
    """The registered data set ``name`` (one ConfigError line listing the known ones otherwise)."""
    return DATASETS.get(name, key=key)


def dataset_names() -> list[str]:
    return DATASETS.names()
