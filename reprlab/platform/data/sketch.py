"""Concepts from two sketched images (IIN, section "sketching"): two small drawings that differ
only in one concept, each re-rendered in many random appearances. Two renderings of the same
drawing share the concept; renderings of different drawings share nothing.

A sketch is a YAML file::

    concept: closed_loop        # the factor's name (lower case, digits, underscores)
    drawings:                   # exactly two, of the same size: ASCII art ('#' ink, '.' or ' '
      open: |                   # blank) or the name of a PNG/NPY file next to the YAML file
        ..####..
        .#....#.
        ...
      closed: closed.png

Shipped sketches live in ``reprlab/sketches/NAME.yaml`` (``method.sketch: NAME``); any other
value is a path. A rendering (all vectorized over the batch, in torch) places the drawing by a
random affine map (scale, rotation, shear, aspect, translation), thickens its strokes by 0-2
dilations, paints it in a random bright color on a random dark background and adds Gaussian
noise: uint8 N x size x size x 3.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.platform.core.errors import ConfigError

SKETCH_DIR = Path(__file__).resolve().parents[2] / "sketches"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def shipped_sketches() -> list[str]:
    return sorted(p.stem for p in SKETCH_DIR.glob("*.yaml"))


def sketch_path(value: str) -> Path:
    """A shipped sketch's name or a path to a sketch YAML file."""
    if _NAME.fullmatch(value) and (SKETCH_DIR / f"{value}.yaml").is_file():
        return SKETCH_DIR / f"{value}.yaml"
    return Path(value).expanduser().resolve()


def _drawing(value, base: Path, where: str) -> np.ndarray:
    """One drawing as a float32 h x w ink mask in [0, 1]."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected ASCII art or a PNG/NPY file name, got {value!r}")
    text = value.strip("\n")
    if "\n" not in text and text.lower().endswith((".png", ".npy")):
        path = (base / text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: {path}: no such file")
        try:
            if path.suffix.lower() == ".npy":
                arr = np.load(path, allow_pickle=False).astype(np.float32)
            else:
                from PIL import Image

                with Image.open(path) as im:
                    arr = np.asarray(im.convert("L"), np.float32) / 255.0
        except Exception as exc:  # unreadable file: one line
            raise ConfigError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
        if arr.ndim != 2:
            raise ConfigError(f"{where}: {path}: expected a 2-D drawing, got shape {arr.shape}")
        if arr.max() > 1.0:
            arr = arr / arr.max()
        return arr.clip(0, 1)
    rows = text.split("\n")
    if len({len(r) for r in rows}) != 1:
        raise ConfigError(f"{where}: the rows of the ASCII drawing differ in length")
    bad = set("".join(rows)) - set("#. ")
    if bad:
        raise ConfigError(f"{where}: ASCII drawings use '#' (ink) and '.' or ' ' (blank), got {sorted(bad)}")
    return np.array([[ch == "#" for ch in r] for r in rows], np.float32)


class SketchPairs:
    """Pairs of renderings of two drawings; the single factor is the sketch's concept. ``sample``
    shares the concept in half of the pairs by default (two renderings of one drawing), and in
    none of the others (one rendering of each drawing)."""

    probes = "rendered"

    def __init__(self, concept: str, names: tuple[str, str], masks: np.ndarray, size: int = 32) -> None:
        self.concept, self.names, self.masks, self.size = concept, names, masks, size
        self.factors = (concept,)
        self.target_kinds = {concept: "class"}

    @classmethod
    def load(cls, value: str, size: int = 32, key: str = "method.sketch") -> SketchPairs:
        return _load(str(sketch_path(value)), size, key)

    def render(self, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Renderings of drawings ``which`` (n ints, 0 or 1) in random appearances: uint8 n x size
        x size x 3. A function of ``rng`` only."""
        n, s = len(which), self.size
        u = rng.random((n, 9)).astype(np.float32)
        scale = 0.55 + 0.3 * u[:, 0]  # the drawing's side as a fraction of the image
        aspect = np.exp(0.2 * (u[:, 1] - 0.5))
        angle = np.deg2rad(30.0 * (u[:, 2] - 0.5))
        shear = 0.3 * (u[:, 3] - 0.5)
        shift = 0.5 * (1 - scale)[:, None] * (2 * u[:, 4:6] - 1)  # stays inside the image
        # output coordinates (in [-1, 1]) -> drawing coordinates: the inverse of the placement
        cos, sin = np.cos(angle), np.sin(angle)
        rot = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
        shr = np.broadcast_to(np.eye(2, dtype=np.float32), (n, 2, 2)).copy()
        shr[:, 0, 1] = shear
        stretch = np.zeros((n, 2, 2), np.float32)
        stretch[:, 0, 0], stretch[:, 1, 1] = scale * aspect, scale / aspect
        forward = rot @ shr @ stretch
        inverse = np.linalg.inv(forward)
        theta = np.concatenate([inverse, -(inverse @ shift[:, :, None])], 2).astype(np.float32)
        masks = torch.from_numpy(self.masks)[torch.from_numpy(np.asarray(which, np.int64))][:, None]
        grid = F.affine_grid(torch.from_numpy(theta), (n, 1, s, s), align_corners=False)
        ink = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        thick = [ink]  # strokes thickened by 0, 1 or 2 dilations (3 x 3 max filters)
        for _ in range(2):
            thick.append(F.max_pool2d(thick[-1], 3, 1, 1))
        level = torch.from_numpy((u[:, 6] * 3).astype(np.int64).clip(0, 2))
        ink = torch.stack(thick, 1)[torch.arange(n), level]  # n x 1 x s x s
        fg = torch.from_numpy(rng.uniform(0.45, 1.0, (n, 3, 1, 1)).astype(np.float32))
        bg = torch.from_numpy(rng.uniform(0.0, 0.25, (n, 3, 1, 1)).astype(np.float32))
        sigma = (0.06 * u[:, 7])[:, None, None, None]
        noise = torch.from_numpy((rng.standard_normal((n, 3, s, s)) * sigma).astype(np.float32))
        x = (bg + (fg - bg) * ink + noise).clamp_(0, 1)
        return (x * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def draw(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Drawings of both members and ``shared`` (n x 2: the concept, the residual)."""
        same = rng.random(n) < 0.5 if factor is None else np.asarray(factor) == 0
        first = rng.integers(0, 2, n)
        second = np.where(same, first, 1 - first)
        return {"first": first, "second": second, "shared": np.stack([same, np.zeros(n, bool)], 1)}

    def sample(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.draw(n, rng, factor)
        return self.render(d["first"], rng), self.render(d["second"], rng), d["shared"]

    def rendered(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``n`` renderings, the two drawings alternating, and which drawing each shows."""
        which = np.arange(n) % 2
        return self.render(which, rng), {self.concept: which}


@lru_cache(maxsize=16)
def _load(path: str, size: int, key: str) -> SketchPairs:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config: {key}: {path}: no such sketch file "
                          f"(shipped sketches: {', '.join(shipped_sketches())})")
    try:
        doc = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {key}: {path}: not readable YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or set(doc) != {"concept", "drawings"}:
        raise ConfigError(f"config: {key}: {path}: expected the keys 'concept' and 'drawings'")
    concept, drawings = doc["concept"], doc["drawings"]
    if not isinstance(concept, str) or not _NAME.fullmatch(concept) or concept == "residual":
        raise ConfigError(f"config: {key}: {path}: concept must be a lower-case name (letters, digits, _), "
                          f"not 'residual'; got {concept!r}")
    if not isinstance(drawings, dict) or len(drawings) != 2:
        n = len(drawings) if isinstance(drawings, dict | list) else "no"
        raise ConfigError(f"config: {key}: {path}: a sketch has exactly two drawings (name: drawing), got {n}")
    names = tuple(str(k) for k in drawings)
    masks = [_drawing(v, file.parent, f"config: {key}: {path}: drawing {k!r}") for k, v in drawings.items()]
    if masks[0].shape != masks[1].shape:
        raise ConfigError(f"config: {key}: {path}: the two drawings differ in size "
                          f"({masks[0].shape[0]}x{masks[0].shape[1]} and {masks[1].shape[0]}x{masks[1].shape[1]})")
    for name, m in zip(names, masks):
        if m.max() <= 0:
            raise ConfigError(f"config: {key}: {path}: drawing {name!r} has no ink")
    if np.array_equal(masks[0], masks[1]):
        raise ConfigError(f"config: {key}: {path}: the two drawings are identical")
    return SketchPairs(concept, names, np.stack(masks).astype(np.float32), size)
