"""Colored digits: scikit-learn's 8 x 8 handwritten digits (1,797 images that ship inside the
package), upscaled and multiplied by a random RGB color. Two known factors, digit and color, and
pairs that share one of them, rendered on the fly (IIN's concept pairs).

The ImageSet of each split holds the images rendered once with one color each (what a classifier
or autoencoder trains on), ``labels`` = digit, and the metadata ``color`` (N x 3 in [0, 1]) and
``digit_index`` (the row of the source digit, so pairs can re-render it in another color).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet

FACTORS = ("digit", "color")


class ColoredDigitsSection(Section):
    """scikit-learn's 8 x 8 digits, upscaled and multiplied by a random color per image."""

    size: int = Field(32, ge=8, le=256, description="rendered side in pixels")
    seed: int = Field(0, ge=0, description="colors and the train/test split")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="per digit")
    min_channel: float = Field(0.2, ge=0.0, lt=1.0, description="each color channel uniform in [min_channel, 1]")


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: intensities N x 8 x 8 in [0, 1] and the digit of each."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def random_colors(n: int, rng: np.random.Generator, low: float) -> np.ndarray:
    """``n`` colors, each channel uniform in [low, 1] (never black, so the digit stays visible)."""
    return rng.uniform(low, 1.0, size=(n, 3)).astype(np.float32)


def render(gray: np.ndarray, colors: np.ndarray, size: int) -> np.ndarray:
    """Intensities N x h x w upscaled (bilinear) to ``size`` and multiplied by a color per image:
    uint8 N x size x size x 3."""
    x = torch.from_numpy(np.ascontiguousarray(gray))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = x * torch.from_numpy(np.ascontiguousarray(colors))[:, :, None, None]
    return (x * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def stratified_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: the same fraction of every digit goes to the test split."""
    order = np.lexsort((rng.random(len(labels)), labels))  # by digit, shuffled within each digit
    rank = np.empty(len(labels), np.int64)
    starts = np.searchsorted(labels[order], labels[order])
    rank[order] = np.arange(len(labels)) - starts
    counts = np.bincount(labels)
    is_test = rank < np.round(counts[labels] * test_fraction)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_colored_digits(size: int = 32, seed: int = 0, test_fraction: float = 0.2, low: float = 0.2) -> Benchmark:
    gray, digits = source_digits()
    rng = np.random.default_rng(seed)
    train_idx, test_idx = stratified_split(digits, test_fraction, rng)
    colors = random_colors(len(digits), rng, low)
    pixels = render(gray, colors, size)

    def part(idx: np.ndarray) -> ImageSet:
        return ImageSet(labels=digits[idx], pixels=pixels[idx],
                        meta={"color": colors[idx], "digit_index": idx.astype(np.int64)})

    return Benchmark("colored_digits", part(train_idx), test=part(test_idx))


class ColoredDigitPairs:
    """Pairs over the digits of one ImageSet: factor ``digit`` = the same digit (another
    handwritten instance of it) in a new color; factor ``color`` = the same color on another digit.
    ``sample`` is vectorized and a function of the generator only."""

    factors = FACTORS
    target_kinds = {"digit": "class", "color": "value"}  # what linear probes predict: a class, or values
    probes = "train"  # fitted on the training split (both splits hold every digit)

    @staticmethod
    def targets(images: ImageSet) -> dict[str, np.ndarray]:
        return {"digit": images.labels, "color": images.meta["color"]}

    def __init__(self, images: ImageSet, size: int, low: float) -> None:
        gray, _ = source_digits()
        self.gray = gray[images.meta["digit_index"]]
        self.labels = images.labels
        self.size, self.low = size, low
        self.order = np.argsort(self.labels, kind="stable")
        self.counts = np.bincount(self.labels, minlength=10)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def _of_digit(self, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random image of each given digit."""
        return self.order[self.starts[digit] + (rng.random(len(digit)) * self.counts[digit]).astype(np.int64)]

    def draw(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """What ``n`` pairs show: rows of both members (``first``, ``second``), their colors
        (``color1``, ``color2``) and ``shared`` (n x 3 booleans: digit, color, residual). ``factor``
        (n ints: 0 digit, 1 color) picks what each pair shares; by default uniformly at random."""
        if factor is None:
            factor = rng.integers(0, len(self.factors), n)
        first = rng.integers(0, len(self.labels), n)
        c1 = random_colors(n, rng, self.low)
        c_new = random_colors(n, rng, self.low)
        same_digit = np.asarray(factor) == 0
        other_digit = (self.labels[first] + rng.integers(1, 10, n)) % 10
        second = self._of_digit(np.where(same_digit, self.labels[first], other_digit), rng)
        return {"first": first, "second": second, "color1": c1, "color2": np.where(same_digit[:, None], c_new, c1),
                "shared": np.stack([same_digit, ~same_digit, np.zeros(n, bool)], 1)}

    def sample(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` pairs (see :meth:`draw`) rendered: uint8 pixels of both members, and ``shared``."""
        d = self.draw(n, rng, factor)
        return (render(self.gray[d["first"]], d["color1"], self.size),
                render(self.gray[d["second"]], d["color2"], self.size), d["shared"])


class DigitColorTransfer:
    """Appearance / pose source over one split (:mod:`reprlab.platform.data.appearance`), the
    disentangling smoke test: appearance = the colour, pose = the digit's strokes. Pairs share the
    colour (factor ``color`` of :class:`ColoredDigitPairs`); a triplet's ground truth is the pose
    image's strokes re-rendered in the appearance image's colour."""

    def __init__(self, images: ImageSet, size: int, low: float) -> None:
        self.pixels = images.pixels
        self.gray = source_digits()[0][images.meta["digit_index"]]
        self.color = np.asarray(images.meta["color"], np.float32)
        self.labels = images.labels
        self.size = size
        self._pairs = ColoredDigitPairs(images, size, low)

    def pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x1, x2, _ = self._pairs.sample(n, rng, factor=np.ones(n, np.int64))
        return x1, x2

    def triplets(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        app = rng.integers(0, len(self.labels), n)
        pose = (app + rng.integers(1, len(self.labels), n)) % len(self.labels)
        return self.truth(app, pose), app, pose

    def truth(self, app_rows: np.ndarray, pose_rows: np.ndarray) -> np.ndarray:
        return render(self.gray[pose_rows], self.color[app_rows], self.size)

    def factors(self) -> dict[str, np.ndarray]:
        return {"appearance": self.color.astype(np.float64), "pose": np.eye(10)[self.labels]}


def _load(section, root) -> Benchmark:
    c = section.colored_digits
    return load_colored_digits(c.size, c.seed, c.test_fraction, c.min_channel)


register_dataset(DataSet(
    name="colored_digits",
    description="colored digits: scikit-learn's 1,797 8 x 8 digits, upscaled and colored at random; "
                "factors digit and color (generated in memory)",
    load=_load,
    provides=frozenset({"labels", "metadata", "factor_pairs", "appearance_pairs"}),
    Config=ColoredDigitsSection,
    root="none",
    pairs=lambda section, images, all_but: ColoredDigitPairs(
        images, section.colored_digits.size, section.colored_digits.min_channel),
    pair_spec=ColoredDigitPairs,
    extra={"appearance_pose": lambda section, images: DigitColorTransfer(
        images, section.colored_digits.size, section.colored_digits.min_channel)},
))
