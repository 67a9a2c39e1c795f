"""Photos and paintings for style transfer's ``paper`` preset, from user-supplied folders
(Kotovenko et al., CVPR 2019, train on Places365 photos and one WikiArt artist; specs/style_transfer.md).

``data.root`` holds::

    photos/<category>/*.jpg      Places365-style: one folder per scene category
    paintings/<artist>/*.jpg     WikiArt-style: one folder per artist

(.jpg, .jpeg or .png; hidden files ignored). Category k is the k-th photo folder in sorted order
and is the photos' label and ``meta["scene"]``; ``meta["obj"]`` is -1 (the paper's person labels
are not in these layouts: how they were obtained is [unverified]). *Our choice*: the test split is a
seeded per-category hold-out of ``test_fraction`` of the photos (the platform's
:func:`~reprlab.platform.data.splits.holdout_split`: at least two photos of every category stay in
training); validation is carved from training by the platform's ``data.validation`` protocol.
Paintings are not a split: the method reads them with ``DataSet.extra["paintings"](section, root)``
(an ImageSet of paths, label = artist index, ``meta["artist"]``), only ``data.style_folders.artist``
when it is set. A missing or empty folder is one DataError line naming it; nothing is decoded here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.splits import holdout_split
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir

EXTENSIONS = (".jpg", ".jpeg", ".png")


class StyleFoldersSection(Section):
    """photos/<category>/ and paintings/<artist>/ folders under data.root."""

    artist: str | None = Field(None, description="the folder under paintings/ to read (default: every artist)")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="photos held out per category for test")
    seed: int = Field(0, ge=0, description="which photos are held out")


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"data: style_folders: cannot list {folder}: {exc.strerror or exc}") from None


def read_classes(folder: Path, what: str) -> tuple[list[str], list[list[str]]]:
    """The sub-folders of ``folder`` (sorted) and the image files of each (sorted); a missing
    folder, one without sub-folders or a sub-folder without images is one DataError line."""
    folder = require_dir(folder, f"style_folders {what}")
    names = sorted(e.name for e in _entries(folder) if e.is_dir())
    if not names:
        raise DataError(f"data: style_folders: {folder}: no {what} folders (expected {folder.name}/<name>/*.jpg)")
    files = []
    for name in names:
        images = sorted(e.path for e in _entries(folder / name) if e.is_file() and e.name.lower().endswith(EXTENSIONS))
        if not images:
            raise DataError(f"data: style_folders: {folder / name}: no images (.jpg, .jpeg or .png)")
        files.append(images)
    return names, files


def _column(paths: list[str]) -> np.ndarray:
    out = np.empty(len(paths), dtype=object)
    out[:] = paths
    return out


def read_photos(root: str | Path, test_fraction: float = 0.1, seed: int = 0) -> Benchmark:
    """The photos of ``root/photos``: train and a per-category hold-out as test."""
    names, files = read_classes(Path(root).expanduser().absolute() / "photos", "photo category")
    labels = np.repeat(np.arange(len(names)), [len(f) for f in files])
    paths = _column([p for f in files for p in f])
    images = ImageSet(labels=labels, paths=paths,
                      meta={"scene": labels, "obj": np.full(len(labels), -1), "category": np.array(names)[labels]})
    train, test = holdout_split(labels, test_fraction, seed)
    if not len(test):
        raise DataError(f"data: style_folders: {root}/photos: too few photos for a test hold-out of "
                        f"{test_fraction} (at least three in some category)")
    return Benchmark("style_folders", images.subset(train), test=images.subset(test))


def read_paintings(root: str | Path, artist: str | None = None) -> ImageSet:
    """The paintings of ``root/paintings`` (of ``artist`` only, when given): paths, label = the
    artist's index among the sorted artist folders, ``meta["artist"]``."""
    folder = Path(root).expanduser().absolute() / "paintings"
    names, files = read_classes(folder, "painting artist")
    if artist is not None and artist not in names:
        raise DataError(f"data: style_folders: {folder / artist}: directory not found "
                        f"(artists: {', '.join(names)})")
    keep = [k for k, n in enumerate(names) if artist is None or n == artist]
    labels = np.repeat(np.array(keep), [len(files[k]) for k in keep])
    return ImageSet(labels=labels, paths=_column([p for k in keep for p in files[k]]),
                    meta={"artist": np.array(names)[labels]})


def _load(section, root) -> Benchmark:
    c = section.style_folders
    bench = read_photos(root, c.test_fraction, c.seed)
    read_paintings(root, c.artist)  # a missing or empty paintings folder fails here, before training
    return bench


register_dataset(DataSet(
    name="style_folders",
    description="style transfer: photos/<category>/ (Places365-style) and paintings/<artist>/ (WikiArt-style) "
                "folders; test = a per-category hold-out of the photos",
    load=_load,
    provides=frozenset({"labels", "metadata"}),
    Config=StyleFoldersSection,
    root="required",
    extra={"paintings": lambda section, root: read_paintings(root, section.style_folders.artist)},
))
