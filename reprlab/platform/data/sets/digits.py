"""Digits: scikit-learn's 1,797 8 x 8 handwritten digits (they ship inside the package), upscaled
to gray images with a random affine each (rotation, scale, shift), so that near-duplicates are not
trivial. A small labeled set for unsupervised methods (labels for evaluation only) and fast tests.
Stratified split: the same fraction of every digit is test; both splits hold all ten digits.
Everything is a function of ``seed``; built in well under a second."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.colored_digits import source_digits, stratified_split
from reprlab.platform.data.types import Benchmark, ImageSet


class DigitsSection(Section):
    """scikit-learn's 8 x 8 digits, upscaled to gray images with a random affine per image."""

    size: int = Field(32, ge=8, le=256, description="rendered side in pixels")
    seed: int = Field(0, ge=0, description="the affines and the train/test split")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="per digit")
    max_rotation: float = Field(15.0, ge=0.0, le=90.0, description="degrees, uniform in +-")
    max_scale: float = Field(0.1, ge=0.0, lt=0.5, description="scale uniform in [1 - s, 1 + s]")
    max_shift: float = Field(0.1, ge=0.0, lt=0.5, description="shift uniform in +- this share of the side")


def render_affine(gray: np.ndarray, size: int, rng: np.random.Generator, rotation: float, scale: float,
                  shift: float) -> np.ndarray:
    """Intensities N x h x w in [0, 1] -> uint8 N x size x size x 1, each resampled (bilinear, zero
    outside) through its own random rotation, scale and shift."""
    n = len(gray)
    angle = np.deg2rad(rng.uniform(-rotation, rotation, n))
    zoom = rng.uniform(1.0 - scale, 1.0 + scale, n)
    move = rng.uniform(-shift, shift, (n, 2)) * 2.0  # grid coordinates span [-1, 1]
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom  # output -> input: the inverse map
    theta = np.stack([np.stack([cos, -sin, move[:, 0]], 1), np.stack([sin, cos, move[:, 1]], 1)], 1)
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32)), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)
    return (x * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_digits_set(size: int = 32, seed: int = 0, test_fraction: float = 0.2, rotation: float = 15.0,
                    scale: float = 0.1, shift: float = 0.1) -> Benchmark:
    gray, digits = source_digits()
    rng = np.random.default_rng([seed, 0xD161])
    train_idx, test_idx = stratified_split(digits, test_fraction, rng)
    pixels = render_affine(gray, size, rng, rotation, scale, shift)

    def part(idx: np.ndarray) -> ImageSet:
        return ImageSet(labels=digits[idx], pixels=pixels[idx], meta={"digit_index": idx.astype(np.int64)})

    return Benchmark("digits", part(train_idx), test=part(test_idx))


def _load(section, root) -> Benchmark:
    c = section.digits
    return load_digits_set(c.size, c.seed, c.test_fraction, c.max_rotation, c.max_scale, c.max_shift)


register_dataset(DataSet(
    name="digits",
    description="digits: scikit-learn's 1,797 8 x 8 handwritten digits, upscaled to gray with a random affine "
                "each; stratified 80/20 split (generated in memory)",
    load=_load,
    provides=frozenset({"labels", "metadata"}),
    Config=DigitsSection,
    root="none",
))
