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

For style transfer the same folders are also a *material* (:func:`folder_material`, the
``art_material`` of this data set, with the interface of procedural_art's): pools of crops that are
decoded when their ``image`` is read. *Our choices* [design], not the paper's (whose data
preparation is [unverified]; ECCV'18 rescaled photos and cut random 768-px crops):

- ``content``: the training photos left after a seeded per-category hold-out of ``val_fraction``,
  each contributing ``crops_per_image`` seeded crops: the photo scaled so that its shorter side is
  ``image_size`` x U(1, ``max_scale``), then a uniformly placed ``image_size`` square;
- ``val`` / ``test``: that hold-out / the test photos, at most ``eval_images`` of each (a seeded
  choice), scaled to a shorter side of ``image_size`` and cut in the centre;
- ``hd``: ``hd_images`` test photos (a seeded choice) the same way at ``hd_side``;
- ``paintings(artist)``: the artist's paintings, ``crops_per_image`` seeded crops each, scene and
  object class unknown (-1);
- no ``unseen`` pool and no painter: real paintings have no rendering of a given photo, so the
  scores that need one (alteration, RSSCD) are not defined on these folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
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
    seed: int = Field(0, ge=0, description="which photos are held out (and where the crops fall)")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="style transfer: training photos held out per category for val")
    crops_per_image: int = Field(8, ge=1, description="style transfer: seeded training crops per photo and per painting [design]")
    max_scale: float = Field(1.5, ge=1.0, description="style transfer: a crop's shorter side is image_size x U(1, max_scale) [design]")
    eval_images: int = Field(700, ge=1, description="style transfer: at most this many val / test photos (ECCV'18 evaluated 700)")
    hd_images: int = Field(4, ge=1, description="style transfer: test photos stylized at hd_side")
    hd_side: int = Field(1536, ge=8, description="style transfer: the side of the high-resolution test (px) [design]")


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


# ---- style transfer's material -------------------------------------------------------------------


def decode_crop(path: str, side: int, scale: float, where: tuple[float, float] | None) -> torch.Tensor:
    """3 x side x side float32 in [0, 1]: the image at ``path`` scaled (bicubic) so that its shorter
    side is round(side x scale), then the side x side square at ``where`` (fractions of the free
    room in x and y; None: the centre). An unreadable file is one DataError line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"data: style_folders: cannot decode {path}: {exc}") from None
    w, h = img.size
    short = max(side, round(side * scale))
    size = (max(short, round(w * short / min(w, h))), max(short, round(h * short / min(w, h))))
    img = img.resize(size, Image.Resampling.BICUBIC)
    fx, fy = where if where is not None else (0.5, 0.5)
    x0, y0 = int(fx * (size[0] - side) + 0.5), int(fy * (size[1] - side) + 0.5)
    px = np.asarray(img.crop((x0, y0, x0 + side, y0 + side)), dtype=np.uint8)
    return torch.from_numpy(px.copy()).permute(2, 0, 1).float() / 255


@dataclass(frozen=True, eq=False)
class FolderCrops:
    """N crops of image files, decoded when ``image`` is read. ``k`` >= 0: the k-th seeded random
    crop of the file (scale and place from (seed, file, k)); -1: the centre crop at scale 1.
    Indexing keeps the batch dimension, as procedural_art's Crops does."""

    paths: np.ndarray  # every file of the material (object array, shared)
    file: torch.Tensor  # N int64: index into paths
    k: torch.Tensor  # N int64
    scene: torch.Tensor  # N int64 (-1: unknown)
    obj: torch.Tensor  # N int64 (-1: unknown)
    side: int
    max_scale: float
    seed: int

    def __len__(self) -> int:
        return len(self.file)

    def __getitem__(self, index) -> FolderCrops:
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        elif isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return FolderCrops(self.paths, self.file[index], self.k[index], self.scene[index], self.obj[index],
                           self.side, self.max_scale, self.seed)

    def placement(self, i: int) -> tuple[float, tuple[float, float] | None]:
        """The scale and place of crop ``i``."""
        f, k = int(self.file[i]), int(self.k[i])
        if k < 0:
            return 1.0, None
        u = np.random.default_rng([self.seed, 0x5F01D, f, k]).random(3)
        return 1.0 + (self.max_scale - 1.0) * float(u[0]), (float(u[1]), float(u[2]))

    @property
    def image(self) -> torch.Tensor:
        """N x 3 x side x side float32 in [0, 1]."""
        if not len(self):
            return torch.zeros(0, 3, self.side, self.side)
        return torch.stack([decode_crop(self.paths[int(f)], self.side, *self.placement(i))
                            for i, f in enumerate(self.file)])


@dataclass(frozen=True, eq=False)
class FolderMaterial:
    """The folders as style transfer's material (see the module docstring): ``pool(name)`` for
    content / val / test / hd, ``paintings(artist)``; ``artists`` (the one painting folder read) and
    ``scenes`` (the photo categories)."""

    paths: np.ndarray
    pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]  # name -> file, k, scene, side
    painting_files: np.ndarray
    artists: tuple[str, ...]
    scenes: tuple[str, ...]
    crops_per_image: int
    max_scale: float
    seed: int
    _cache: dict = field(default_factory=dict, repr=False)

    def pool(self, name: str) -> FolderCrops:
        if name not in self.pools:
            raise DataError(f"data: style_folders: no {name!r} pool (these folders have {', '.join(self.pools)})")
        file, k, scene, side = self.pools[name]
        return FolderCrops(self.paths, torch.from_numpy(file), torch.from_numpy(k), torch.from_numpy(scene),
                           torch.full((len(file),), -1, dtype=torch.int64), side, self.max_scale, self.seed)

    def paintings(self, artist: str) -> FolderCrops:
        if artist not in self.artists:
            raise DataError(f"data: style_folders: no paintings of {artist!r} were read "
                            f"(data.style_folders.artist: {', '.join(self.artists)})")
        files = np.repeat(self.painting_files, self.crops_per_image)
        k = np.tile(np.arange(self.crops_per_image, dtype=np.int64), len(self.painting_files))
        unknown = torch.full((len(files),), -1, dtype=torch.int64)
        return FolderCrops(self.paths, torch.from_numpy(files), torch.from_numpy(k), unknown, unknown.clone(),
                           self.pools["content"][3], self.max_scale, self.seed)


def folder_material(section) -> FolderMaterial:
    """The material of a ``data`` config section with ``name: style_folders`` (one per distinct
    setting in a process); ``data.style_folders.artist`` must name the artist."""
    c = section.style_folders
    if c.artist is None:
        raise DataError("data: style_folders.artist: style transfer trains one model per artist: name its folder "
                        "under paintings/")
    return _folder_material(str(Path(section.root).expanduser().absolute()), section.image_size, c.artist,
                            c.test_fraction, c.val_fraction, c.seed, c.crops_per_image, c.max_scale,
                            c.eval_images, c.hd_images, c.hd_side)


@lru_cache(maxsize=2)
def _folder_material(root: str, side: int, artist: str, test_fraction: float, val_fraction: float, seed: int,
                     crops: int, max_scale: float, eval_images: int, hd_images: int, hd_side: int) -> FolderMaterial:
    bench = read_photos(root, test_fraction, seed)
    category = dict(zip(bench.train.labels.tolist(), bench.train.meta["category"].tolist()))
    names = [category[k] for k in range(len(category))]  # every category keeps two photos in train
    paintings = read_paintings(root, artist)
    train, test = bench.train, bench.test
    fit, val = holdout_split(train.labels, val_fraction, seed + 1)
    if not len(val):
        raise DataError(f"data: style_folders: {root}/photos: too few photos for a val hold-out of {val_fraction}")
    paths = np.concatenate([train.paths, test.paths, paintings.paths])
    train_file, test_file = np.arange(len(train)), len(train) + np.arange(len(test))
    rng = np.random.default_rng([seed, 0xE7A1])

    def capped(files: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(files, eval_images, replace=False)) if len(files) > eval_images else files

    def centre(files: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        labels = np.concatenate([train.labels, test.labels])[files].astype(np.int64)
        return files.astype(np.int64), np.full(len(files), -1, np.int64), labels, at

    content = np.repeat(train_file[fit], crops)
    pools = {
        "content": (content.astype(np.int64), np.tile(np.arange(crops, dtype=np.int64), len(fit)),
                    np.asarray(train.labels)[content].astype(np.int64), side),
        "val": centre(capped(train_file[val]), side),
        "test": centre(capped(test_file), side),
        "hd": centre(np.sort(rng.choice(test_file, min(hd_images, len(test_file)), replace=False)), hd_side),
    }
    return FolderMaterial(paths, pools, len(train) + len(test) + np.arange(len(paintings), dtype=np.int64),
                          (artist,), tuple(names), crops, max_scale, seed)


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
    extra={"paintings": lambda section, root: read_paintings(root, section.style_folders.artist),
           "art_material": folder_material},
))
