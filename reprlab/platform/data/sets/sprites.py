"""The embedded ``sprites``: procedural stick figures with exact appearance / pose ground truth, for
disentangling appearance from pose (Esser, Haux, Ommer, ICCV 2019; specs/disentangle.md). Our
design, not the paper's data: it stands in for Reed et al.'s Sprites, which is not shipped.

- **Appearance = identity:** skin, shirt and pants colours, limb width (1.2-2.2 px) and head radius
  (2.5-3.5 px) at 32 px. Shape belongs to the appearance on purpose: it reaches the silhouette, as
  Sprites' hair and armour do.
- **Pose**, independent of appearance: hip x 13-19 and y 17-21 px, torso +-0.4 rad, each arm
  +-2.5 rad, each leg +-0.7 rad, scale 0.8-1.1 (all at 32 px, scaled for 64 px).
- **Renderer:** antialiased capsules (a distance field with a 1-px ramp), painted back to front on
  a light grey background: legs, torso, arms, head disc; vectorized over a whole batch.
- **Splits:** 400 / 50 / 100 identities (train / val / test), disjoint. Training: ``train_poses``
  random poses per identity (pairs: two images of one identity). Val and test: every identity in
  each of a fixed bank of ``frames`` poses, so a Sprites-style triplet (R(a_i, p_f), R(a_i, p_g),
  R(a_j, p_f)) has its exact ground truth in the split.
- Metadata: ``identity``, ``frame`` (-1 in train), ``appearance`` (N x 11: three RGB colours, limb
  width, head radius), ``pose`` (N x 8: hip x, hip y, torso, two arms, two legs, scale).

Deterministic from ``data.sprites.seed``; built in memory in about two seconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.data.appearance import IdentityFrames
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet

BASE = 32  # the pixel frame the ranges are given in
APPEARANCE = ("skin_r", "skin_g", "skin_b", "shirt_r", "shirt_g", "shirt_b", "pants_r", "pants_g", "pants_b",
              "limb_width", "head_radius")
POSE = ("hip_x", "hip_y", "torso", "arm_left", "arm_right", "leg_left", "leg_right", "scale")
POSE_LOW = np.array([13, 17, -0.4, -2.5, -2.5, -0.7, -0.7, 0.8])
POSE_HIGH = np.array([19, 21, 0.4, 2.5, 2.5, 0.7, 0.7, 1.1])
BACKGROUND = np.array([0.85, 0.85, 0.85])


class SpritesSection(Section):
    """Procedural figures: appearance (colours, limb width, head radius) and pose (joint angles,
    position, scale) drawn independently; identity-disjoint splits."""

    size: Literal[32, 64] = Field(32, description="image side in pixels")
    seed: int = Field(0, ge=0, description="identities, poses and the frame bank")
    train_identities: int = Field(400, ge=2)
    val_identities: int = Field(50, ge=2)
    test_identities: int = Field(100, ge=2)
    train_poses: int = Field(24, ge=1, description="random poses rendered per training identity")
    frames: int = Field(40, ge=2, description="poses of the val / test frame bank")


def random_appearance(n: int, rng: np.random.Generator) -> np.ndarray:
    colors = rng.uniform(0.05, 0.95, (n, 9))
    width = rng.uniform(1.2, 2.2, (n, 1))
    head = rng.uniform(2.5, 3.5, (n, 1))
    return np.concatenate([colors, width, head], 1)


def random_pose(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(POSE_LOW, POSE_HIGH, (n, len(POSE)))


def _segments(pose: torch.Tensor, appearance: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """The body parts back to front: (start N x 2, end N x 2, radius N, colour index) at 32 px."""
    hip = pose[:, 0:2]
    s = pose[:, 7]
    torso = pose[:, 2]
    up = torch.stack([torch.sin(torso), -torch.cos(torso)], 1)
    neck = hip + (7 * s)[:, None] * up
    head = neck + (3.0 * s)[:, None] * up

    def limb(origin, angle, length):  # angle from straight down
        return origin + (length * s)[:, None] * torch.stack([torch.sin(angle), torch.cos(angle)], 1)

    w = appearance[:, 9] / 2
    parts = [(hip, limb(hip, pose[:, 5], 8.0), w, 2), (hip, limb(hip, pose[:, 6], 8.0), w, 2),  # legs: pants
             (hip, neck, 0.9 * w + 0.8, 1),  # torso: shirt
             (neck, limb(neck, pose[:, 3], 6.0), w, 0), (neck, limb(neck, pose[:, 4], 6.0), w, 0),  # arms: skin
             (head, head, appearance[:, 10] * s, 0)]  # head disc: skin
    return parts


def render(appearance: np.ndarray, pose: np.ndarray, size: int = 32, chunk: int = 1024) -> np.ndarray:
    """uint8 N x size x size x 3 figures of the given appearance and pose rows (vectorized over the
    figures; the distance to a segment is computed with separable x / y offsets)."""
    n = len(appearance)
    out = np.empty((n, size, size, 3), np.uint8)
    scale = size / BASE
    centers = (torch.arange(size, dtype=torch.float32) + 0.5) / scale  # pixel centres in the 32-px frame
    gx, gy = centers[None, None, :], centers[None, :, None]
    background = torch.from_numpy(BACKGROUND).float()
    for lo in range(0, n, chunk):
        a = torch.from_numpy(appearance[lo : lo + chunk]).float()
        q = torch.from_numpy(pose[lo : lo + chunk]).float()
        colors = a[:, :9].reshape(-1, 3, 3)  # skin, shirt, pants
        img = background[:, None, None, None].expand(3, len(a), size, size).clone()  # channels first
        for start, end, radius, color in _segments(q, a):
            col = lambda v: v[:, None, None]  # noqa: E731
            dx, dy = col(end[:, 0] - start[:, 0]), col(end[:, 1] - start[:, 1])
            rx, ry = gx - col(start[:, 0]), gy - col(start[:, 1])  # N x 1 x W, N x H x 1
            t = ((rx * dx + ry * dy) / (dx * dx + dy * dy).clamp_min(1e-8)).clamp_(0, 1)
            dist = ((rx - t * dx).square_() + (ry - t * dy).square_()).sqrt_()
            alpha = ((col(radius) - dist).mul_(scale).add_(0.5)).clamp_(0, 1)  # a 1-px ramp
            img += alpha[None] * (colors[:, color].T[:, :, None, None] - img)
        out[lo : lo + chunk] = img.mul_(255).round_().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return out


def _split(appearance: np.ndarray, ids: np.ndarray, pose: np.ndarray, frame: np.ndarray, size: int) -> ImageSet:
    return ImageSet(labels=ids, pixels=render(appearance, pose, size),
                    meta={"identity": ids, "frame": frame, "appearance": appearance.astype(np.float32),
                          "pose": pose.astype(np.float32)})


@lru_cache(maxsize=2)
def load_sprites(size: int = 32, seed: int = 0, train_ids: int = 400, val_ids: int = 50, test_ids: int = 100,
                 train_poses: int = 24, frames: int = 40) -> Benchmark:
    """The embedded set (cached per process: deterministic and read-only)."""
    rng = np.random.default_rng([seed, 0x5B])
    counts = {"train": train_ids, "val": val_ids, "test": test_ids}
    looks = random_appearance(sum(counts.values()), rng)
    bank = random_pose(frames, rng)
    parts, first = {}, 0
    for split, k in counts.items():
        ids = np.arange(first, first + k)
        if split == "train":
            rows = np.repeat(ids, train_poses)
            pose, frame = random_pose(len(rows), rng), np.full(len(rows), -1)
        else:
            rows = np.repeat(ids, frames)
            pose, frame = bank[np.tile(np.arange(frames), k)], np.tile(np.arange(frames), k)
        parts[split] = _split(looks[rows], rows, pose, frame, size)
        first += k
    return Benchmark("sprites", parts["train"], test=parts["test"], val=parts["val"])


def _load(section, root) -> Benchmark:
    c = section.sprites
    return load_sprites(c.size, c.seed, c.train_identities, c.val_identities, c.test_identities, c.train_poses, c.frames)


register_dataset(DataSet(
    name="sprites",
    description="procedural figures (appearance: colours, limb width, head; pose: joint angles, position, scale), "
                "identity-disjoint splits with exact transfer triplets (generated in memory)",
    load=_load,
    provides=frozenset({"labels", "metadata", "appearance_pairs"}),
    Config=SpritesSection,
    root="none",
    extra={"appearance_pose": lambda section, images: IdentityFrames(images)},
))
