"""A reader for the real Sprites data (Reed, Zhang, Zhang, Lee, NIPS 2015: "Deep visual analogy-
making"; the archive ``nips2015-analogy-data.tar.gz``), in the layout the robust-disentangling
reference code reads (``rodi/pt/data.py``):

    ROOT/data/sprites/sprites_<k>.mat     one character each (MATLAB v7.3 = HDF5): ``sprites`` holds
                                          21 references to animations, each frames x 10,800 values in
                                          [0, 1] (3 x 60 x 60, stored column-major); the 21st is an
                                          easter egg and is skipped; the first 20 are 5 actions x 4 views
    ROOT/data/sprites/sprites_splits.mat  ``trainidx`` (and, where present, ``validx``, ``testidx``):
                                          one-based character numbers

As in the reference, only even character indices (zero-based) are used: an odd character differs
from the previous one only by a weapon that not every action shows. Training: the ``trainidx``
characters; test: the others (``testidx`` where given). Validation [our choice]: ``validx`` where
the file has it, else every 10th training character (identity-disjoint, like the embedded set).
Images are resized from 60 to ``data.sprites_reed.size`` px (64 in the reference). Metadata:
``identity`` (the character), ``frame`` (the frame's index in the concatenated animations: the
same pose for every character) and ``pose`` (one-hot action and view). Needs h5py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.core.errors import DataError
from reprlab.platform.data.appearance import IdentityFrames
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir

ANIMATIONS, ACTIONS, VIEWS, SIDE = 20, 5, 4, 60


class SpritesReedSection(Section):
    """Reed et al.'s Sprites in the reference code's layout (data.root = the directory holding data/sprites)."""

    size: int = Field(64, ge=8, le=256, description="images are resized from 60 px to this side")


def _character_number(path: Path) -> int:
    return int(re.fullmatch(r"sprites_(\d+)\.mat", path.name).group(1))


def read_character(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames x 60 x 60 x 3 of one character's first 20 animations, and each frame's
    animation index."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            refs = f["sprites"]
            if refs.shape[0] < ANIMATIONS:
                raise DataError(f"data: {path}: 'sprites' holds {refs.shape[0]} animations, expected 21")
            frames, anim = [], []
            for a in range(ANIMATIONS):
                values = np.asarray(f[refs[a, 0]], np.float32)
                if values.ndim != 2 or values.shape[1] != 3 * SIDE * SIDE:
                    raise DataError(f"data: {path}: animation {a} is {values.shape}, expected frames x {3 * SIDE * SIDE}")
                # column-major 3 x 60 x 60 (channel, x, y) -> frames x y x x x channel, as the reference transposes
                frames.append(values.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1))
                anim.append(np.full(len(values), a))
    except OSError as exc:
        raise DataError(f"data: cannot read {path}: {exc}") from None
    except KeyError:
        raise DataError(f"data: {path} has no 'sprites' dataset") from None
    px = np.clip(np.concatenate(frames) * 255 + 0.5, 0, 255).astype(np.uint8)
    return px, np.concatenate(anim)


def _resize(px: np.ndarray, size: int) -> np.ndarray:
    if size == SIDE:
        return px
    x = torch.from_numpy(px).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_sprites_reed(root: Path, size: int = 64) -> Benchmark:
    folder = require_dir(Path(root) / "data" / "sprites", "sprites_reed (data.root)/data/sprites")
    files = {_character_number(p) - 1: p for p in folder.iterdir() if re.fullmatch(r"sprites_\d+\.mat", p.name)}
    if not files:
        raise DataError(f"data: {folder} holds no sprites_<k>.mat files")
    split_file = folder / "sprites_splits.mat"
    if not split_file.is_file():
        raise DataError(f"data: {split_file} not found (the character split)")
    import scipy.io

    splits = scipy.io.loadmat(split_file)
    if "trainidx" not in splits:
        raise DataError(f"data: {split_file} has no trainidx")
    ids = lambda key: {int(i) - 1 for i in np.asarray(splits[key]).reshape(-1)} if key in splits else None  # noqa: E731
    train = ids("trainidx")
    val = ids("validx")
    if val is None:
        ordered = sorted(c for c in train if c % 2 == 0)
        val = set(ordered[::10])
    train -= val
    test = ids("testidx")
    if test is None:
        test = set(files) - train - val
    parts: dict[str, ImageSet] = {}
    for name, chars in (("train", train), ("val", val), ("test", test)):
        chars = sorted(c for c in chars if c % 2 == 0)
        missing = [c + 1 for c in chars if c not in files]
        if missing:
            raise DataError(f"data: {folder}: the split's character sprites_{missing[0]}.mat is missing")
        if not chars:
            raise DataError(f"data: {split_file}: the {name} split has no even-numbered character")
        pixels, identity, frame, anim = [], [], [], []
        for c in chars:
            px, a = read_character(files[c])
            pixels.append(_resize(px, size))
            identity.append(np.full(len(px), c))
            frame.append(np.arange(len(px)))
            anim.append(a)
        a = np.concatenate(anim)
        pose = np.concatenate([np.eye(ACTIONS)[a // VIEWS], np.eye(VIEWS)[a % VIEWS]], 1).astype(np.float32)
        identity = np.concatenate(identity)
        parts[name] = ImageSet(labels=identity, pixels=np.concatenate(pixels),
                               meta={"identity": identity, "frame": np.concatenate(frame), "pose": pose})
    return Benchmark("sprites_reed", parts["train"], test=parts["test"], val=parts["val"])


register_dataset(DataSet(
    name="sprites_reed",
    description="Sprites (Reed et al. 2015) in the robust-disentangling layout: data/sprites/sprites_<k>.mat, "
                "sprites_splits.mat; even characters; identity-disjoint splits",
    load=lambda section, root: load_sprites_reed(root, section.sprites_reed.size),
    provides=frozenset({"labels", "metadata", "appearance_pairs"}),
    Config=SpritesReedSection,
    root="required",
    extra={"appearance_pose": lambda section, images: IdentityFrames(images)},
))
