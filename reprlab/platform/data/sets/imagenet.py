"""ImageNet (ILSVRC-2012) from its folder layout: ``train/<wnid>/*.JPEG`` and the validation images
sorted into ``val/<wnid>/`` (the layout torchvision's ImageFolder and most training scripts use).
``root`` is that folder or its parent holding ``ILSVRC2012/`` or ``imagenet/``. Class k is the
k-th train wnid in sorted order; train = the training images, test = the validation images (the
same 1,000 classes). Only directory listings are read (no per-file stat): fast for 1.3M files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir

EXTENSIONS = (".jpeg", ".jpg", ".png")


def _classes(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir())


def _images(class_dir: Path) -> list[str]:
    with os.scandir(class_dir) as it:
        return sorted(e.path for e in it if e.name.lower().endswith(EXTENSIONS))


def _split(split_dir: Path, wnids: list[str], index: dict[str, int]) -> ImageSet:
    paths, labels, names = [], [], []
    for wnid in wnids:
        if wnid not in index:
            raise DataError(f"data: imagenet: {split_dir / wnid}: class {wnid} is not among the "
                            f"{len(index)} train classes")
        files = _images(split_dir / wnid)
        if not files:
            raise DataError(f"data: imagenet: {split_dir / wnid}: no images (.JPEG, .jpg or .png)")
        paths += files
        labels += [index[wnid]] * len(files)
        names += [wnid] * len(files)
    return ImageSet(labels=np.asarray(labels, np.int64), paths=np.asarray(paths, dtype=object),
                    meta={"wnid": np.asarray(names, dtype=object)})


def read_imagenet(root: str | Path) -> Benchmark:
    base = require_dir(Path(root), "imagenet")
    base = next((b for b in (base, base / "ILSVRC2012", base / "imagenet") if (b / "train").is_dir()), base)
    train_dir, val_dir = base / "train", base / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"data: imagenet: {d}: directory not found (expected train/<wnid>/ and val/<wnid>/ "
                            f"under data.root)")
    wnids = _classes(train_dir)
    if not wnids:
        raise DataError(f"data: imagenet: {train_dir}: no class directories")
    index = {w: k for k, w in enumerate(wnids)}
    return Benchmark("imagenet", _split(train_dir, wnids, index), test=_split(val_dir, _classes(val_dir), index))


register_dataset(DataSet(
    name="imagenet",
    description="ImageNet ILSVRC-2012: train/<wnid>/ and val/<wnid>/ folders; test = the validation images",
    load=lambda section, root: read_imagenet(root),
    provides=frozenset({"labels", "metadata"}),
))
