"""Data sets in their protocols, validation carved out of training, and what training consumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprlab.platform.config import DataSection
from reprlab.platform.data.splits import check_min_images, holdout_split, kfold_split
from reprlab.platform.data.types import Benchmark, ImageSet
from reprlab.platform.errors import DataError


@dataclass(frozen=True)
class EvalSplit:
    """Query = gallery (self excluded) when ``gallery`` is None, else retrieval into ``gallery``."""

    query: ImageSet
    gallery: ImageSet | None = None


@dataclass(frozen=True)
class DataBundle:
    """What a run trains and evaluates on. ``targets`` are the training labels mapped to 0..C-1."""

    name: str
    train: ImageSet
    targets: np.ndarray
    class_ids: np.ndarray
    eval_splits: dict[str, EvalSplit]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


def glyphs_config(cfg: DataSection):
    from reprlab.platform.data.glyphs import GlyphsConfig

    g = cfg.glyphs
    return GlyphsConfig(
        seed=g.seed, size=g.size, renders_per_face=g.renders_per_face, extra_font_dirs=tuple(g.extra_font_dirs)
    )


def data_root(cfg: DataSection) -> Path:
    if cfg.root:
        return Path(cfg.root).expanduser().resolve()
    if cfg.name == "glyphs":
        from reprlab.platform.data.glyphs import default_cache_dir

        return default_cache_dir()
    raise DataError(f"data: data.root is required for {cfg.name} (the directory holding its archive layout)")


def load_benchmark(cfg: DataSection) -> Benchmark:
    """Read (and for glyphs build or reuse) the data set named in ``cfg``; with ``data.shards``,
    the Parquet shards written by ``reprlab data pack`` instead of the data set's own files."""
    if cfg.shards:
        from reprlab.platform.data.shards import open_shards

        bench = open_shards(cfg.shards, cfg.shard_cache)
        if bench.name != cfg.name:
            raise DataError(f"data: data.shards holds {bench.name}, but data.name is {cfg.name}")
        return bench
    if cfg.name == "colored_digits":  # rendered from digits that ship with scikit-learn: no root
        from reprlab.platform.data.colored_digits import load_colored_digits

        c = cfg.colored_digits
        return load_colored_digits(c.size, c.seed, c.test_fraction, c.min_channel)
    root = data_root(cfg)
    if cfg.name == "glyphs":
        from reprlab.platform.data.glyphs import load_glyphs

        return load_glyphs(root, glyphs_config(cfg))
    from reprlab.platform.data.readers import READERS

    if cfg.name == "vehicleid":
        return READERS[cfg.name](root, test_size=cfg.vehicleid_test_size)
    return READERS[cfg.name](root)


def make_bundle(bench: Benchmark, cfg: DataSection, seed: int) -> DataBundle:
    """Apply the validation protocol and check the training split."""
    train = bench.train
    check_min_images(train.labels, "train")
    val = cfg.validation
    splits: dict[str, EvalSplit] = {}
    if val.protocol == "holdout":
        tr, va = holdout_split(train.labels, val.fraction, seed)
    elif val.protocol == "kfold":
        tr, va = kfold_split(train.labels, val.folds, val.fold, seed)
    else:
        tr, va = np.arange(len(train)), np.array([], dtype=np.int64)
    if len(va):
        splits["val"] = EvalSplit(train.subset(va))
        train = train.subset(tr)
    splits["test"] = EvalSplit(bench.query, bench.gallery) if bench.has_query_gallery else EvalSplit(bench.test)
    class_ids, targets = np.unique(train.labels, return_inverse=True)
    return DataBundle(bench.name, train, targets.astype(np.int64), class_ids, splits)


def load_bundle(cfg: DataSection, seed: int) -> DataBundle:
    return make_bundle(load_benchmark(cfg), cfg, seed)


def pair_source_class(cfg: DataSection, sketch: str | None = None):
    """What draws pairs of images sharing known factors (IIN's concept pairs): for a data set, the
    class of its pair source (colored digits: digit and color; glyphs: character, font weight and
    slant), or None; with ``sketch`` (a shipped sketch's name or a sketch file), the sketch's pair
    source itself. Either has ``factors``, ``target_kinds`` and ``probes``; the pair source
    protocol is in :mod:`reprlab.platform.data.pairs`. A bad sketch is one ConfigError line."""
    if sketch is not None:
        from reprlab.platform.data.sketch import SketchPairs

        return SketchPairs.load(sketch, cfg.image_size)
    if cfg.name == "colored_digits":
        from reprlab.platform.data.colored_digits import ColoredDigitPairs

        return ColoredDigitPairs
    if cfg.name == "glyphs":
        from reprlab.platform.data.pairs import GlyphPairs

        return GlyphPairs
    return None


def pair_source(cfg: DataSection, images: ImageSet, sketch: str | None = None, all_but: float = 0.0):
    """The pair source over ``images`` (or of the sketch). ``all_but``: the fraction of pairs that
    share every factor but one, where the data set has more than two factors."""
    cls = pair_source_class(cfg, sketch)
    if cls is None:
        raise DataError(f"data: {cfg.name} has no factor pairs (data sets with pairs: colored_digits, glyphs)")
    if sketch is not None:
        return cls
    if cfg.name == "colored_digits":
        return cls(images, cfg.colored_digits.size, cfg.colored_digits.min_channel)
    return cls(images, all_but=all_but)
