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


def _listing(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` (hidden ones left out); an unreadable folder is one DataError line."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"data: imagenet: cannot list {folder}: {exc.strerror or exc}") from None


def _classes(split_dir: Path) -> list[str]:
    """The class folders of a split, sorted; none at all is one DataError line (a validation
    folder holding the 50,000 images directly, as the archive ships them, is named as such)."""
    entries = _listing(split_dir)
    wnids = sorted(e.name for e in entries if e.is_dir())
    if not wnids:
        loose = sum(e.name.lower().endswith(EXTENSIONS) for e in entries)
        hint = (f"it holds {loose} images directly: sort them into {split_dir.name}/<wnid>/ folders"
                if loose else f"expected {split_dir.name}/<wnid>/*.JPEG")
        raise DataError(f"data: imagenet: {split_dir}: no class directories ({hint})")
    return wnids


def _images(class_dir: Path) -> list[str]:
    return sorted(e.path for e in _listing(class_dir) if e.name.lower().endswith(EXTENSIONS))


def _split(split_dir: Path, wnids: list[str], index: dict[str, int]) -> ImageSet:
    paths: list[str] = []
    counts = np.zeros(len(wnids), np.int64)
    for k, wnid in enumerate(wnids):
        if wnid not in index:
            raise DataError(f"data: imagenet: {split_dir / wnid}: class {wnid} is not among the "
                            f"{len(index)} train classes")
        files = _images(split_dir / wnid)
        if not files:
            raise DataError(f"data: imagenet: {split_dir / wnid}: no images (.JPEG, .jpg or .png)")
        paths += files
        counts[k] = len(files)
    of_image = np.repeat(np.arange(len(wnids)), counts)  # position in ``wnids`` of each image
    column = np.empty(len(paths), dtype=object)
    column[:] = paths  # (np.asarray of a list of 1.3M str is ten times slower)
    return ImageSet(labels=np.asarray([index[w] for w in wnids], np.int64)[of_image], paths=column,
                    meta={"wnid": np.asarray(wnids, dtype=object)[of_image]})


def read_imagenet(root: str | Path) -> Benchmark:
    base = require_dir(Path(root).expanduser().absolute(), "imagenet")
    base = next((b for b in (base, base / "ILSVRC2012", base / "imagenet") if (b / "train").is_dir()), base)
    train_dir, val_dir = base / "train", base / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"data: imagenet: {d}: directory not found (expected train/<wnid>/ and val/<wnid>/ "
                            f"under data.root)")
    wnids = _classes(train_dir)
    index = {w: k for k, w in enumerate(wnids)}
    return Benchmark("imagenet", _split(train_dir, wnids, index), test=_split(val_dir, _classes(val_dir), index))


register_dataset(DataSet(
    name="imagenet",
    description="ImageNet ILSVRC-2012: train/<wnid>/ and val/<wnid>/ folders; test = the validation images",
    load=lambda section, root: read_imagenet(root),
    provides=frozenset({"labels", "metadata"}),
))
