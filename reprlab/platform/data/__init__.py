"""Data sets in their protocols, validation carved out of training, and what training consumes.

Which data sets exist and what each provides is the catalog's business
(:mod:`reprlab.platform.data.catalog`, one module per set in ``sets/``); this module reads the
selected one (or its Parquet shards) and applies the validation protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprlab.platform.core.config import DataSection
from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, get_dataset
from reprlab.platform.data.splits import check_min_images, holdout_split, kfold_split, random_holdout
from reprlab.platform.data.types import Benchmark, ImageSet


@dataclass(frozen=True)
class EvalSplit:
    """An evaluation split. Retrieval: query = gallery (self excluded) when ``gallery`` is None,
    else queries retrieved from ``gallery``. Paired (``query.target`` set): a fixed set of
    input/target samples, evaluated without augmentation."""

    query: ImageSet
    gallery: ImageSet | None = None

    @property
    def kind(self) -> str:
        return "paired" if self.query.target is not None else "retrieval"


@dataclass(frozen=True)
class DataBundle:
    """What a run trains and evaluates on. ``targets`` are the training labels mapped to 0..C-1
    (empty for unlabeled data), ``class_ids`` the data set's ids of those classes."""

    name: str
    train: ImageSet
    targets: np.ndarray
    class_ids: np.ndarray
    eval_splits: dict[str, EvalSplit]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


def data_root(cfg: DataSection) -> Path | None:
    """``data.root``, or the cache directory of a cached set; None for sets generated in memory."""
    spec = get_dataset(cfg.name)
    if cfg.root:
        return Path(cfg.root).expanduser().resolve()
    if spec.root == "cache":
        return spec.default_root()
    if spec.root == "none":
        return None
    raise DataError(f"data: data.root is required for {cfg.name} (the directory holding its archive layout)")


def load_benchmark(cfg: DataSection) -> Benchmark:
    """Read (for cached sets: build or reuse) the data set named in ``cfg``; with ``data.shards``,
    the Parquet shards written by ``reprlab data pack`` instead of the data set's own files."""
    spec = get_dataset(cfg.name)
    if cfg.shards:
        from reprlab.platform.data.shards import open_shards

        bench = open_shards(cfg.shards, cfg.shard_cache)
        if bench.name != cfg.name:
            raise DataError(f"data: data.shards holds {bench.name}, but data.name is {cfg.name}")
        return bench
    bench = spec.load(cfg, data_root(cfg))
    check_benchmark(bench, spec)
    return bench


def check_benchmark(bench: Benchmark, spec: DataSet) -> None:
    """What a loader returned against what its data set declares: labels where it provides them,
    input/target images of one size where it provides pairs (one DataError line naming both)."""
    splits = {"train": bench.train, "val": bench.val, "test": bench.test, "query": bench.query, "gallery": bench.gallery}
    for split, images in splits.items():
        if images is None:
            continue
        if "labels" in spec.provides and images.labels is None:
            raise DataError(f"data: {spec.name} declares labels, but its {split} split has none")
        if "paired" in spec.provides:
            check_pairs(images, f"{spec.name} {split} split")


def check_pairs(images: ImageSet, what: str) -> None:
    """Every input image and its target image have the same size: in-memory sets entirely,
    encoded sets from their headers."""
    if images.target is None:
        raise DataError(f"data: {what} has no target images (a paired set needs one per input)")
    if images.pixels is not None and images.target.pixels is not None:
        a, b = images.pixels.shape[1:3], images.target.pixels.shape[1:3]
        if a != b:
            raise DataError(f"data: {what}: input images are {a[0]}x{a[1]} but target images are {b[0]}x{b[1]}; "
                            "input and target must have the same size")
        return
    for i in range(len(images)):
        a, b = _image_size(images, i), _image_size(images.target, i)
        if a != b:
            raise DataError(f"data: {what}: input {images.where(i)} is {a[0]}x{a[1]} but its target "
                            f"{images.target.where(i)} is {b[0]}x{b[1]}; input and target must have the same size")


def _image_size(images: ImageSet, i: int) -> tuple[int, int]:
    """(height, width) of image ``i``, from its header where it is encoded."""
    if images.pixels is not None:
        return tuple(images.pixels.shape[1:3])
    import io

    from PIL import Image

    data = images.encoded(i)[0]
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except (OSError, ValueError) as exc:
        raise DataError(f"data: cannot read image {images.where(i)}: {exc}") from None


def make_bundle(bench: Benchmark, cfg: DataSection, seed: int, *, min_per_class: int = 2) -> DataBundle:
    """Apply the validation protocol and check the training split. ``min_per_class``: images every
    training class needs (2 for methods that form positive pairs within a class)."""
    train = bench.train
    labeled = train.labels is not None
    if labeled and min_per_class > 1:
        check_min_images(train.labels, "train", min_per_class)
    val = cfg.validation
    splits: dict[str, EvalSplit] = {}
    if bench.val is not None and val.protocol == "holdout":  # the set's own validation split
        tr, va = np.arange(len(train)), np.array([], dtype=np.int64)
        splits["val"] = EvalSplit(bench.val)
    elif val.protocol == "holdout":
        tr, va = holdout_split(train.labels, val.fraction, seed) if labeled else random_holdout(len(train), val.fraction, seed)
    elif val.protocol == "kfold":
        if not labeled:
            raise DataError(f"data: data.validation.protocol=kfold splits classes, and {bench.name} has no labels")
        tr, va = kfold_split(train.labels, val.folds, val.fold, seed)
    else:
        tr, va = np.arange(len(train)), np.array([], dtype=np.int64)
    if len(va):
        splits["val"] = EvalSplit(train.subset(va))
        train = train.subset(tr)
    splits["test"] = EvalSplit(bench.query, bench.gallery) if bench.has_query_gallery else EvalSplit(bench.test)
    if labeled:
        class_ids, targets = np.unique(train.labels, return_inverse=True)
    else:
        class_ids, targets = np.array([], dtype=np.int64), np.zeros(0, dtype=np.int64)
    return DataBundle(bench.name, train, targets.astype(np.int64).reshape(-1), class_ids, splits)


def load_bundle(cfg: DataSection, seed: int, *, min_per_class: int = 2) -> DataBundle:
    return make_bundle(load_benchmark(cfg), cfg, seed, min_per_class=min_per_class)


def pair_source_class(cfg: DataSection, sketch: str | None = None):
    """What draws pairs of images sharing known factors (IIN's concept pairs): for a data set that
    provides ``factor_pairs``, the class of its pair source, or None; with ``sketch`` (a shipped
    sketch's name or a sketch file), the sketch's pair source itself. Either has ``factors``,
    ``target_kinds`` and ``probes``; the pair source protocol is in
    :mod:`reprlab.platform.data.pairs`. A bad sketch is one ConfigError line."""
    if sketch is not None:
        from reprlab.platform.data.sketch import SketchPairs

        return SketchPairs.load(sketch, cfg.image_size)
    return get_dataset(cfg.name).pair_spec


def pair_source(cfg: DataSection, images: ImageSet, sketch: str | None = None, all_but: float = 0.0):
    """The pair source over ``images`` (or of the sketch). ``all_but``: the fraction of pairs that
    share every factor but one, where the data set has more than two factors."""
    if sketch is not None:
        return pair_source_class(cfg, sketch)
    spec = get_dataset(cfg.name)
    if spec.pairs is None:
        with_pairs = [n for n, s in _registered() if s.pairs is not None]
        raise DataError(f"data: {cfg.name} has no factor pairs (data sets with pairs: {', '.join(with_pairs)})")
    return spec.pairs(cfg, images, all_but)


def _registered():
    from reprlab.platform.core.registry import DATASETS

    return DATASETS.items()
