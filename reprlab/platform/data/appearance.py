"""Appearance / pose sources: what a disentangling method (``methods/disentangle.py``) trains and is
evaluated on. A data set that provides ``appearance_pairs`` registers a factory
``DataSet.extra["appearance_pose"](data_section, images) -> source`` over one ImageSet (a split).

A source has

- ``pixels``: the split's uint8 images N x H x W x 3 (what evaluation encodes once);
- ``pairs(n, rng) -> (x_pose, x_app)``: uint8 pixels of ``n`` training pairs that share their
  appearance (the first is also the reconstruction target); vectorized, a function of ``rng`` only;
- ``triplets(n, rng) -> (target, app_rows, pose_rows)``: ``n`` transfer triplets with exact ground
  truth: ``target`` (uint8) shows the appearance of image ``app_rows`` in the pose of image
  ``pose_rows`` (rows into ``pixels``), and neither of them is the target itself;
- ``truth(app_rows, pose_rows)``: the exact uint8 images of those appearances in those poses;
- ``factors() -> {"appearance": N x A, "pose": N x P}``: what ridge probes predict (a factor the
  set does not know is absent).

:class:`IdentityFrames` serves every set whose images carry ``identity`` (appearance) and ``frame``
(a pose shared by all identities of an evaluation split) metadata: the embedded ``sprites`` and the
real Sprites layout.
"""

from __future__ import annotations

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import get_dataset
from reprlab.platform.data.types import ImageSet


def grouped(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(group, order, start, count)``: each row's group (its key's rank among the distinct keys),
    the rows sorted by group, and where each group starts in that order and how many rows it has."""
    _, group, count = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(group, kind="stable")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return group.reshape(-1), order, start, count


class IdentityFrames:
    """Pairs and triplets over images with ``identity`` and ``frame`` metadata. Pairs: two random
    images of one identity (possibly the same one, as in the reference code). Triplets (rows with
    ``frame >= 0`` on a full identity x frame grid): target (i, f), appearance (i, g != f), pose
    (j != i, f)."""

    def __init__(self, images: ImageSet, what: str = "split") -> None:
        if images.pixels is None or "identity" not in images.meta:
            raise DataError(f"data: the {what} needs in-memory pixels and an identity column")
        self.pixels = images.pixels
        self.meta = images.meta
        self.identity = np.asarray(images.meta["identity"], np.int64)
        self.group, self.order, self.start, self.count = grouped(self.identity)
        self.frame = np.asarray(images.meta.get("frame", np.full(len(images), -1)), np.int64)
        self.what = what
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(identities x frames -> row, row -> (identity index, frame index) or -1), built on first use."""
        if self._grid is None:
            rows = np.flatnonzero(self.frame >= 0)
            if not len(rows):
                raise DataError(f"data: the {self.what} has no frames shared by its identities (no transfer triplets)")
            ids, id_of = np.unique(self.identity[rows], return_inverse=True)
            frames, frame_of = np.unique(self.frame[rows], return_inverse=True)
            grid = np.full((len(ids), len(frames)), -1, np.int64)
            grid[id_of.reshape(-1), frame_of.reshape(-1)] = rows
            if (grid < 0).any() or len(ids) < 2 or len(frames) < 2:
                raise DataError(f"data: the {self.what}'s triplets need every identity in every frame "
                                f"(and two of each): {len(ids)} identities x {len(frames)} frames, "
                                f"{int((grid < 0).sum())} missing")
            cell = np.full((len(self.identity), 2), -1, np.int64)
            cell[rows] = np.stack([id_of.reshape(-1), frame_of.reshape(-1)], 1)
            self._grid = (grid, cell)
        return self._grid

    def pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, len(self.identity), n)
        g = self.group[first]
        second = self.order[self.start[g] + (rng.random(n) * self.count[g]).astype(np.int64)]
        return self.pixels[first], self.pixels[second]

    def triplets(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid = self.grid[0]
        ni, nf = grid.shape
        i, f = rng.integers(0, ni, n), rng.integers(0, nf, n)
        g = (f + rng.integers(1, nf, n)) % nf  # another frame of the same identity
        j = (i + rng.integers(1, ni, n)) % ni  # another identity in the same frame
        return self.pixels[grid[i, f]], grid[i, g], grid[j, f]

    def truth(self, app_rows: np.ndarray, pose_rows: np.ndarray) -> np.ndarray:
        """The image of ``app_rows``' identity in ``pose_rows``' frame (rows on the grid)."""
        grid, cell = self.grid
        return self.pixels[grid[cell[app_rows, 0], cell[pose_rows, 1]]]

    def factors(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(self.meta[k], np.float64) for k in ("appearance", "pose") if k in self.meta}


def appearance_source(section, images: ImageSet):
    """The appearance / pose source of the data set ``section.name`` over ``images``."""
    spec = get_dataset(section.name)
    factory = spec.extra.get("appearance_pose")
    if factory is None:
        raise DataError(f"data: {section.name} has no appearance / pose pairs")
    return factory(section, images)
