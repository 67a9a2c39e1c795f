"""The embedded ``synthcorr``: image pairs of one shape category with exact dense correspondence,
for weakly supervised semantic correspondence (Ufer et al., GCPR 2019; specs/correspondence.md,
section "Embedded data synthcorr"). Our design, not the paper's data.

- **Categories** (13): scikit-image's horse (object = the False pixels) and the glyphs
  F G J L P Q R a 2 4 5 7 (no mirror or point symmetry) of matplotlib's DejaVuSans-Bold.ttf, drawn
  by the glyphs renderer (:mod:`reprlab.platform.data.sets.glyphs.render`) and dilated. Each
  template is its shape on a square canvas (twice the image side), its longest side 0.8 (horse)
  or 0.6 (glyphs) of the canvas (*our choice*, with the warps below it gives the spec's
  identity PCK).
- **Parts**: k-means (k = 6, seeded) on the template's foreground coordinates; part k of a
  category has a fixed brightness (six levels from 0.25 to 1, in a seeded order per category).
  That brightness is the only appearance two images of a category share.
- **Appearance per image**: the foreground is brightness x an RGB tint (0.4-1 per channel) x a
  texture (0.4-1.6 from the luminance of a photo crop), over a background crop (gain 0.4-1).
  Crops are 1/8-1/4 of a photo's side (64-128 px of a 512-px photo), randomly mirrored, taken in
  each image's own frame: appearance does not correspond between the two images of a pair.
- **Photos** (scikit-image, scikit-learn): train {astronaut, brick, camera, coins, grass,
  hubble_deep_field, retina, china}; test {chelsea, coffee, gravel, rocket, flower}. Train and
  test are disjoint; *our choice*: val uses the training photos (other crops), so val selects
  on fixed pairs without spending one of the 13 photos, and test alone measures new photos.
- **A pair**: an instance warp G_B (4x4-lattice displacement, sigma 0.06, rotation +-20 deg,
  scale 0.85-1.15, shift 0.08) and a pair warp H (sigma 0.08, +-30 deg, 0.75-1.25, shift 0.2),
  both coordinate maps (:mod:`reprlab.platform.data.warps`). *Our reading*: sigma and shift are
  fractions of the half side (normalized units, as ``grid_sample`` counts); read as fractions of
  the whole side, identity PCK@0.1 falls to 0.06, far from the spec's measured 0.25, while this
  reading gives 0.22-0.24. B(q) = T(G_B(q)) and A(p) = T(G_B(H(p))): pixel p of A shows the
  template point of pixel H(p) of B, so the flow A -> B is exactly ``H(p) - p`` for every
  pixel, with no inversion. Masks are the template's alpha read the same way (> 0.5). *Our
  choice*: a pair is redrawn (warps only) while less than 80% of A's foreground lands inside B's
  frame or either object covers < 30 px (at 64 px).
- **Keypoints**: 20 distinct pixel centres of A's foreground whose target lies inside B,
  and their exact positions ``H(p)`` in B.
- **Splits**: ``train`` is material, not pairs: the method draws pairs on the fly with
  :func:`draw_pairs` (images and category only, no ground truth) from :func:`synthcorr_material`
  (also ``DataSet.extra["pair_material"]``); the ``train`` ImageSet is a fixed bank of
  ``train_images`` single images per category with labels (the warm-up classifier's). ``val``
  (200) and ``test`` (400) are fixed pairs, balanced over categories: ``pixels`` = A, ``target``
  = B, ``labels`` = category, ``dense`` = flow / mask / target_mask / keypoints /
  target_keypoints, ``meta`` = category, box and target_box (x0, y0, x1, y1 in pixels, edges at
  integers: the object boxes of A and B; PCK uses B's), photos (texture and background of A, of
  B: indexes into :data:`PHOTOS`). :func:`draw_pair_truth` returns a pair with all of it.
- ``held_out``: glyph categories kept out of train and val; test pairs are then drawn from them
  only.

Coordinates follow :mod:`reprlab.platform.data.warps`: pixel i's centre at i + 0.5.
Deterministic from ``data.synthcorr.seed``; built in memory in about 2 s at 64 px (one torch thread).

The real sanity pair :func:`stereo_motorcycle` (scikit-image's rectified stereo pair with its
disparity) lives here too: left pixel (x, y) corresponds to right pixel (x - d, y).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from reprlab.platform.core.config import Section
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, Dense, ImageSet
from reprlab.platform.data.warps import (
    WarpSpec,
    compose,
    mask_box,
    pixel_grid,
    random_warp,
    replace_rows,
    sample,
    sample_bank,
    to_normalized,
    to_pixels,
)

GLYPHS = ("F", "G", "J", "L", "P", "Q", "R", "a", "2", "4", "5", "7")
CATEGORIES = ("horse", *GLYPHS)
FONT = "DejaVuSans-Bold.ttf"
PHOTOS = ("astronaut", "brick", "camera", "coins", "grass", "hubble_deep_field", "retina", "china",
          "chelsea", "coffee", "gravel", "rocket", "flower")
PHOTO_SPLITS = {"train": PHOTOS[:8], "val": PHOTOS[:8], "test": PHOTOS[8:]}

PARTS = 6
LEVELS = np.linspace(0.25, 1.0, PARTS)  # part brightness levels
OBJECT_FRACTION = {"horse": 0.8, "glyph": 0.6}  # longest object side, a fraction of the template canvas
GLYPH_CANVAS = 256  # glyphs are drawn on this canvas, then fitted
GLYPH_DILATION = 0.016  # dilation radius, a fraction of the glyph canvas (1 px at 64 px)
# sigma and shift as fractions of the half side (normalized units): see the module docstring
INSTANCE = WarpSpec(sigma=0.06 / 2, rotation=20.0, scale=(0.85, 1.15), shift=0.08 / 2)  # G_B
PAIR = WarpSpec(sigma=0.08 / 2, rotation=30.0, scale=(0.75, 1.25), shift=0.2 / 2)  # H
KEYPOINTS = 20
MIN_INSIDE = 0.8  # of A's foreground that must land inside B's frame
MIN_OBJECT = 30 / 64**2  # the least object area, a fraction of the image
MAX_ROUNDS = 100
CROP = (1 / 8, 1 / 4)  # texture / background crop side, a fraction of the photo side
TINT = (0.4, 1.0)
TEXTURE = 0.6  # foreground x (1 - TEXTURE + 2 TEXTURE luminance)
BACKGROUND_GAIN = (0.4, 1.0)


class SynthcorrSection(Section):
    """Shape categories with parts, photo textures, and warped pairs with exact correspondence."""

    side: Literal[64, 128] = Field(64, description="image side in pixels")
    seed: int = Field(0, ge=0, description="parts, the fixed pairs and the training bank")
    val_pairs: int = Field(200, ge=1, le=100_000, description="fixed validation pairs")
    test_pairs: int = Field(400, ge=1, le=100_000, description="fixed test pairs")
    train_images: int = Field(40, ge=2, le=10_000, description="single training images per category (warm-up bank)")
    held_out: tuple[str, ...] = Field((), description="glyph categories kept out of train and val; test uses only them")

    @field_validator("held_out")
    @classmethod
    def _known_glyphs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in GLYPHS]
        if unknown:
            raise ValueError(f"unknown glyph categories {unknown} (known: {' '.join(GLYPHS)})")
        if len(set(v)) != len(v) or len(v) > len(GLYPHS) - 1:
            raise ValueError("held_out: distinct glyphs, at most 11 (training keeps the horse and one glyph)")
        return tuple(v)


# --------------------------------------------------------------------------------------------
# templates and material


def _fit(mask: np.ndarray, canvas: int, fraction: float) -> torch.Tensor:
    """A soft mask cropped to its object, scaled (antialiased) so its longest side is
    ``fraction`` of ``canvas``, centred on a ``canvas``-px square."""
    ys, xs = np.nonzero(mask > 0.5)
    crop = torch.from_numpy(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32))
    h, w = crop.shape
    scale = fraction * canvas / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    out = torch.zeros(canvas, canvas)
    top, left = (canvas - nh) // 2, (canvas - nw) // 2
    out[top : top + nh, left : left + nw] = small.clamp(0, 1)
    return out


def _shapes() -> list[np.ndarray]:
    """The 13 category shapes as float masks (horse, then the glyphs), any size."""
    import skimage.data
    from PIL import ImageFont

    from reprlab.platform.data.sets.glyphs.fonts import matplotlib_font_dir
    from reprlab.platform.data.sets.glyphs.render import EM_FRACTION, draw_clean, morph

    shapes = [(~skimage.data.horse()).astype(np.float32)]
    font = ImageFont.truetype(str(matplotlib_font_dir() / FONT), size=round(EM_FRACTION * GLYPH_CANVAS),
                              layout_engine=ImageFont.Layout.BASIC)
    radius = round(GLYPH_DILATION * GLYPH_CANVAS)
    for ch in GLYPHS:
        ink = np.asarray(draw_clean(font, ch, GLYPH_CANVAS))
        shapes.append(morph(ink, radius, np.maximum).astype(np.float32) / 255)
    return shapes


def _parts(alpha: torch.Tensor, seed: int, iterations: int = 30) -> torch.Tensor:
    """Part labels (0..PARTS-1, -1 outside): k-means (k-means++ start, then Lloyd iterations) on
    the foreground's pixel coordinates (numpy: a few thousand points)."""
    rng = np.random.default_rng([seed, 0xA7])
    fg = (alpha > 0.5).numpy()
    ys, xs = np.nonzero(fg)
    points = np.stack([xs, ys], 1).astype(np.float64)

    def dist2(c: np.ndarray) -> np.ndarray:  # squared distances, points x centres
        return (points**2).sum(1)[:, None] - 2 * points @ c.T + (c**2).sum(1)[None]

    centres = points[rng.integers(len(points))][None]
    for _ in range(PARTS - 1):  # k-means++: the next centre with probability ~ squared distance
        d2 = dist2(centres).min(1).clip(0)
        centres = np.concatenate([centres, points[rng.choice(len(points), p=d2 / d2.sum())][None]])
    for _ in range(iterations):
        assign = dist2(centres).argmin(1)
        counts = np.bincount(assign, minlength=PARTS)[:, None]
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, points)
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    labels = np.full(fg.shape, -1, dtype=np.int64)
    labels[fg] = dist2(centres).argmin(1)
    return torch.from_numpy(labels)


@lru_cache(maxsize=4)
def _templates(canvas: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C x 2 x T x T (alpha, alpha x part brightness), C x 1 x T x T part labels + 1 (0 outside),
    C x PARTS brightness."""
    rng = np.random.default_rng([seed, 0xC0])
    channels, labels, levels = [], [], []
    for c, shape in enumerate(_shapes()):
        alpha = _fit(shape, canvas, OBJECT_FRACTION["horse" if c == 0 else "glyph"])
        part = _parts(alpha, seed * 1000 + c)
        bright = torch.from_numpy(rng.permutation(LEVELS).astype(np.float32))
        shade = torch.where(part >= 0, bright[part.clamp_min(0)], torch.zeros(())) * alpha
        channels.append(torch.stack([alpha, shade]))
        labels.append((part + 1).float()[None])
        levels.append(bright)
    return torch.stack(channels), torch.stack(labels), torch.stack(levels)


def _photo(name: str) -> np.ndarray:
    """A shipped photo as uint8 H x W x 3: scikit-image's by name, scikit-learn's china / flower
    read from the package folder (importing sklearn.datasets would cost a second)."""
    if name in ("china", "flower"):
        import importlib.util
        from pathlib import Path

        from PIL import Image

        folder = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "images"
        with Image.open(folder / f"{name}.jpg") as im:
            img = np.asarray(im.convert("RGB"))
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    return np.array(np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3])  # a writable copy


@lru_cache(maxsize=4)
def _photo_bank(side: int) -> torch.Tensor:
    """Every photo of :data:`PHOTOS`, centre-cropped square and resized to ``side``: P x 3 x side x side."""
    out = []
    for name in PHOTOS:
        px = torch.from_numpy(_photo(name)).permute(2, 0, 1).float() / 255
        h, w = px.shape[1:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        square = px[:, top : top + s, left : left + s]
        out.append(F.interpolate(square[None], size=(side, side), mode="bilinear", antialias=True,
                                 align_corners=False)[0].clamp(0, 1))
    return torch.stack(out)


@dataclass(frozen=True)
class Material:
    """What one split's images are made of: the category templates, the categories it draws
    (global ids into :data:`CATEGORIES`) and the photos it takes textures from (indexes into
    :data:`PHOTOS`). Read-only; shared by every draw."""

    side: int
    split: str
    categories: torch.Tensor  # int64 ids this split draws
    photos: torch.Tensor  # int64 indexes into PHOTOS (and into bank)
    templates: torch.Tensor  # C x 2 x T x T: alpha, alpha x part brightness (all categories)
    parts: torch.Tensor  # C x 1 x T x T: part label + 1, 0 outside
    brightness: torch.Tensor  # C x PARTS
    bank: torch.Tensor  # len(PHOTOS) x 3 x S x S

    @property
    def names(self) -> tuple[str, ...]:
        return CATEGORIES


def build_material(side: int = 64, seed: int = 0, held_out: tuple[str, ...] = (), split: str = "train") -> Material:
    """The material of ``split`` (train, val or test): see the module docstring."""
    templates, parts, brightness = _templates(2 * side, seed)
    held = [CATEGORIES.index(c) for c in held_out]
    if split == "test" and held:
        cats = held
    else:
        cats = [c for c in range(len(CATEGORIES)) if c not in held]
    photos = [PHOTOS.index(p) for p in PHOTO_SPLITS[split]]
    return Material(side, split, torch.tensor(cats), torch.tensor(photos), templates, parts, brightness,
                    _photo_bank(4 * side))


def synthcorr_material(section, split: str = "train") -> Material:
    """The material of ``split`` for a ``data`` config section (``section.synthcorr``)."""
    c = section.synthcorr
    return _material(c.side, c.seed, tuple(c.held_out), split)


@lru_cache(maxsize=8)
def _material(side: int, seed: int, held_out: tuple[str, ...], split: str) -> Material:
    return build_material(side, seed, held_out, split)


# --------------------------------------------------------------------------------------------
# drawing and rendering


@dataclass(frozen=True)
class _Looks:
    """Per-image appearance: texture and background photos and crops, tint, background gain."""

    texture: torch.Tensor  # N photo indexes
    texture_theta: torch.Tensor  # N x 2 x 3 crop (affine_grid convention)
    background: torch.Tensor
    background_theta: torch.Tensor
    tint: torch.Tensor  # N x 3
    gain: torch.Tensor  # N


def _crops(n: int, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, 5, generator=g)
    half = CROP[0] + (CROP[1] - CROP[0]) * u[:, 0]  # half extent in normalized units = side fraction
    centre = (2 * u[:, 1:3] - 1) * (1 - half[:, None])
    flip = torch.where(u[:, 3:5] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = half * flip[:, 0], half * flip[:, 1]
    theta[:, :, 2] = centre
    return theta


def _looks(m: Material, n: int, g: torch.Generator) -> _Looks:
    p = len(m.photos)
    tex = torch.randint(p, (n,), generator=g)
    bg = (tex + 1 + torch.randint(p - 1, (n,), generator=g)) % p  # another photo than the texture
    tex_theta, bg_theta = _crops(n, g), _crops(n, g)
    tint = TINT[0] + (TINT[1] - TINT[0]) * torch.rand(n, 3, generator=g)
    gain = BACKGROUND_GAIN[0] + (BACKGROUND_GAIN[1] - BACKGROUND_GAIN[0]) * torch.rand(n, generator=g)
    return _Looks(m.photos[tex], tex_theta, m.photos[bg], bg_theta, tint, gain)


def _render(m: Material, cat: torch.Tensor, coords: torch.Tensor, looks: _Looks, plain: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose pixel p shows template point ``coords[:, p]``: (N x 3 x H x W in [0, 1],
    alpha N x H x W, part labels N x H x W int64 with -1 outside). ``plain``: the part-brightness
    channel alone (no texture, tint or background)."""
    n, h, w, _ = coords.shape
    t = sample_bank(m.templates, cat, coords)
    alpha, shade = t[:, 0], t[:, 1:2]  # shade is premultiplied by alpha: no dark fringe
    parts = sample_bank(m.parts, cat, coords, mode="nearest")[:, 0].round().long() - 1
    if plain:
        return shade.expand(n, 3, h, w).clamp(0, 1), alpha, parts
    size = (n, 3, h, w)
    texture = sample_bank(m.bank, looks.texture, F.affine_grid(looks.texture_theta, size, align_corners=False))
    background = sample_bank(m.bank, looks.background, F.affine_grid(looks.background_theta, size, align_corners=False))
    modulation = 1 - TEXTURE + 2 * TEXTURE * texture.mean(1, keepdim=True)
    fg = shade * looks.tint[:, :, None, None] * modulation
    img = fg + (1 - alpha[:, None]) * background * looks.gain[:, None, None, None]
    return img.clamp(0, 1), alpha, parts


def _quantize(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round() / 255


def _categories(m: Material, n: int, g: torch.Generator, balanced: bool) -> torch.Tensor:
    k = len(m.categories)
    if balanced:  # every category n // k or n // k + 1 times, in a random order
        idx = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    else:
        idx = torch.randint(k, (n,), generator=g)
    return m.categories[idx]


def _pair_warps(m: Material, cat: torch.Tensor, g: torch.Generator):
    """G_B and H for every pair, redrawn (warps only, same category) until the pair is usable."""
    n, side = len(cat), m.side
    grid = pixel_grid(side, side, n)
    least = MIN_OBJECT * side * side
    gb, h = random_warp(n, INSTANCE, g), random_warp(n, PAIR, g)
    rows = torch.arange(n)
    for _ in range(MAX_ROUNDS):
        sub_g, sub_h, sub_cat = gb[rows], h[rows], cat[rows]
        in_b = sub_h(grid[: len(rows)])
        alpha_a = sample_bank(m.templates[:, :1], sub_cat, sub_g(in_b))[:, 0] > 0.5
        alpha_b = sample_bank(m.templates[:, :1], sub_cat, sub_g(grid[: len(rows)]))[:, 0] > 0.5
        inside = (in_b.abs() < 1).all(-1)
        fg_a, fg_b = alpha_a.sum((1, 2)), alpha_b.sum((1, 2))
        ok = ((alpha_a & inside).sum((1, 2)) >= MIN_INSIDE * fg_a) & (fg_a >= least) & (fg_b >= least)
        rows = rows[~ok]
        if not len(rows):
            break
        gb = replace_rows(gb, rows, random_warp(len(rows), INSTANCE, g))
        h = replace_rows(h, rows, random_warp(len(rows), PAIR, g))
    return gb, h


@dataclass(frozen=True)
class PairTruth:
    """N pairs with their ground truth, in pixels of a ``side`` x ``side`` image (pixel i's centre
    at i + 0.5). ``flow[:, :, y, x]``: pixel (x, y) of A corresponds to (x, y) + flow of B.
    ``canonical_*``: the template point (normalized) each pixel shows; ``parts_*``: its part
    (-1 background); ``photos``: texture and background of A, then of B (indexes into PHOTOS)."""

    img_a: torch.Tensor  # N x 3 x H x W float in [0, 1] (8-bit levels)
    img_b: torch.Tensor
    category: torch.Tensor  # N int64 (index into CATEGORIES)
    flow: torch.Tensor  # N x 2 x H x W
    mask_a: torch.Tensor  # N x H x W bool
    mask_b: torch.Tensor
    keypoints_a: torch.Tensor  # N x K x 2
    keypoints_b: torch.Tensor
    box_a: torch.Tensor  # N x 4: x0, y0, x1, y1 (pixel edges)
    box_b: torch.Tensor
    parts_a: torch.Tensor  # N x H x W int64
    parts_b: torch.Tensor
    canonical_a: torch.Tensor  # N x 2 x H x W
    canonical_b: torch.Tensor
    photos: torch.Tensor  # N x 4 int64


def _draw(m: Material, n: int, g: torch.Generator, truth: bool, plain: bool = False, balanced: bool = False):
    side = m.side
    cat = _categories(m, n, g, balanced)
    gb, h = _pair_warps(m, cat, g)
    looks_a, looks_b = _looks(m, n, g), _looks(m, n, g)
    grid = pixel_grid(side, side, n)
    in_b = h(grid)  # B's frame point of every pixel of A
    coords_a = compose(gb, h)(grid)  # = gb(in_b): A(p) = T(G_B(H(p)))
    coords_b = gb(grid)  # B(q) = T(G_B(q))
    img_a, alpha_a, parts_a = _render(m, cat, coords_a, looks_a, plain)
    img_b, alpha_b, parts_b = _render(m, cat, coords_b, looks_b, plain)
    img_a, img_b = _quantize(img_a), _quantize(img_b)
    if not truth:
        return img_a, img_b, cat
    mask_a, mask_b = alpha_a > 0.5, alpha_b > 0.5
    # keypoints: distinct pixel centres on A's foreground whose target lies inside B
    eligible = mask_a & (in_b.abs() < 1).all(-1)
    pick = torch.multinomial(eligible.flatten(1).float(), KEYPOINTS, replacement=False, generator=g)
    kp_a = torch.stack([pick % side, pick // side], -1).float() + 0.5
    kp_b = to_pixels(h(to_normalized(kp_a, side)), side)
    flow = (to_pixels(in_b, side) - to_pixels(grid, side)).permute(0, 3, 1, 2).contiguous()
    photos = torch.stack([looks_a.texture, looks_a.background, looks_b.texture, looks_b.background], 1)
    return PairTruth(img_a, img_b, cat, flow, mask_a, mask_b, kp_a, kp_b, object_box(mask_a), object_box(mask_b),
                     parts_a, parts_b, coords_a.permute(0, 3, 1, 2).contiguous(),
                     coords_b.permute(0, 3, 1, 2).contiguous(), photos)


Images = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def draw_pairs(material: Material, n: int, generator: torch.Generator) -> Images:
    """N training pairs (img_a, img_b, category): N x 3 x H x W float in [0, 1] (8-bit levels) and
    N int64 (index into :data:`CATEGORIES`). No ground truth: the method's only supervision is the
    category. A function of the generator's state (the same state gives the images of
    :func:`draw_pair_truth`)."""
    return _draw(material, n, generator, truth=False)


def draw_pair_truth(material: Material, n: int, generator: torch.Generator, plain: bool = False,
                    balanced: bool = False) -> PairTruth:
    """N pairs with their ground truth (evaluation, tests, figures). ``plain``: render the
    part-brightness channel only (same geometry). ``balanced``: categories in equal shares."""
    return _draw(material, n, generator, truth=True, plain=plain, balanced=balanced)


def draw_images(material: Material, n: int, generator: torch.Generator) -> Images:
    """N single images T(G(q)) of random categories: (N x 3 x H x W in [0, 1], category, mask)."""
    side = material.side
    cat = _categories(material, n, generator, balanced=False)
    warp = random_warp(n, INSTANCE, generator)
    looks = _looks(material, n, generator)
    img, alpha, _ = _render(material, cat, warp(pixel_grid(side, side, n)), looks)
    return _quantize(img), cat, alpha > 0.5


def object_box(mask: torch.Tensor) -> torch.Tensor:
    """N x 4 (x0, y0, x1, y1) boxes of N x H x W masks, in pixels with edges at integers (the whole
    image for an empty mask): the metrics' :func:`~reprlab.platform.data.warps.mask_box`."""
    n, h, w = mask.shape
    box = mask_box(mask)
    return torch.where(box.isnan(), torch.tensor([0.0, 0.0, w, h]), box)


# --------------------------------------------------------------------------------------------
# the fixed splits


SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a key (independent streams for different keys)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def _uint8(img: torch.Tensor) -> np.ndarray:
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pair_split(m: Material, n: int, seed: int, chunk: int = 200) -> ImageSet:
    g = _generator(seed, 0x5C, SPLIT_KEYS[m.split])
    parts = [draw_pair_truth(m, min(chunk, n - lo), g, balanced=True) for lo in range(0, n, chunk)]
    t = PairTruth(*(torch.cat([getattr(p, f) for p in parts]) for f in PairTruth.__dataclass_fields__))
    cat = t.category.numpy()
    names = np.array(CATEGORIES, dtype=object)[cat]
    dense = {
        "flow": Dense("flow", t.flow.numpy()),
        "mask": Dense("mask", t.mask_a.numpy()),
        "target_mask": Dense("mask", t.mask_b.numpy()),
        "keypoints": Dense("keypoints", t.keypoints_a.numpy()),
        "target_keypoints": Dense("keypoints", t.keypoints_b.numpy()),
    }
    meta = {"category": names, "box": t.box_a.numpy(), "target_box": t.box_b.numpy(), "photos": t.photos.numpy()}
    return ImageSet(labels=cat, pixels=_uint8(t.img_a), target=ImageSet(labels=cat, pixels=_uint8(t.img_b)),
                    dense=dense, meta=meta)


def _train_bank(m: Material, per_category: int, seed: int) -> ImageSet:
    g = _generator(seed, 0x7B)
    n = per_category * len(m.categories)
    cat = m.categories.repeat_interleave(per_category)
    warp = random_warp(n, INSTANCE, g)
    looks = _looks(m, n, g)
    img, alpha, _ = _render(m, cat, warp(pixel_grid(m.side, m.side, n)), looks)
    photos = torch.stack([looks.texture, looks.background], 1)
    return ImageSet(labels=cat.numpy(), pixels=_uint8(_quantize(img)),
                    dense={"mask": Dense("mask", (alpha > 0.5).numpy())},
                    meta={"category": np.array(CATEGORIES, dtype=object)[cat.numpy()], "photos": photos.numpy()})


@lru_cache(maxsize=2)
def load_synthcorr(side: int = 64, seed: int = 0, val_pairs: int = 200, test_pairs: int = 400,
                   train_images: int = 40, held_out: tuple[str, ...] = ()) -> Benchmark:
    """The embedded set (cached per process: deterministic and read-only)."""
    train = _train_bank(_material(side, seed, held_out, "train"), train_images, seed)
    val = _pair_split(_material(side, seed, held_out, "val"), val_pairs, seed)
    test = _pair_split(_material(side, seed, held_out, "test"), test_pairs, seed)
    return Benchmark("synthcorr", train, test=test, val=val)


def _load(section, root) -> Benchmark:
    c = section.synthcorr
    return load_synthcorr(c.side, c.seed, c.val_pairs, c.test_pairs, c.train_images, tuple(c.held_out))


# --------------------------------------------------------------------------------------------
# the real stereo pair


def stereo_motorcycle(scale: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-image's rectified motorcycle pair at ``scale``: left and right (uint8 H x W x 3,
    antialiased resize) and the left image's disparity in pixels of the scaled image (float32,
    NaN where the original is inf: no match). Left pixel (x, y) corresponds to right (x - d, y)
    (pixel coordinates, centres at i + 0.5). The disparity is resampled by nearest neighbour
    (no blending across depth edges) and multiplied by the horizontal scale."""
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    h, w = disp.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))

    def resize(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        return y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    d = torch.from_numpy(np.where(np.isfinite(disp), disp, np.nan).astype(np.float32))[None, None]
    small = sample(d, pixel_grid(nh, nw, 1), mode="nearest")[0, 0] * (nw / w)
    return resize(left), resize(right), small.numpy()


def disparity_flow(disp: np.ndarray) -> np.ndarray:
    """The flow left -> right of a disparity map: 2 x H x W, (-d, 0) (NaN where d is)."""
    return np.stack([-disp, np.where(np.isnan(disp), np.nan, 0.0)]).astype(np.float32)


register_dataset(DataSet(
    name="synthcorr",
    description="dense semantic correspondence: horse and 12 glyph shapes with parts, photo textures, warped "
                "pairs with exact flow, masks and keypoints; train/test photos disjoint (generated in memory)",
    load=_load,
    provides=frozenset({"labels", "metadata", "dense", "keypoints"}),  # not "paired": train holds single images
    Config=SynthcorrSection,
    root="none",
    extra={"pair_material": synthcorr_material, "draw_pairs": draw_pairs, "draw_pair_truth": draw_pair_truth},
))
