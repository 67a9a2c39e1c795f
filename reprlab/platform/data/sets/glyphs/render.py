"""Rendering one face's glyphs (runs in worker processes; one job per face).

Images are grayscale, **white glyph on black**, ``size`` x ``size``. The glyph is drawn at a fixed
em size (:data:`EM_FRACTION` of the image) on a fixed baseline (:data:`BASELINE_FRACTION` down),
centred horizontally on its ink, so upper and lower case keep their size difference. Each render
then gets, at 4-8x supersampling, a stroke-width change (max/min filter), a random affine (rotation,
scale, aspect, shear, translation), box downsampling, a random contrast and additive Gaussian
noise. Everything follows from ``seed``: each (class, face) pair has its own generator seeded by
(seed, code point of the class, CRC of the font file name), so adding fonts or classes never
changes the other images.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from reprlab.platform.data.sets.glyphs.fonts import Face

EM_FRACTION = 0.58  # font size (em) as a fraction of the image side
BASELINE_FRACTION = 0.72  # baseline position from the top, as a fraction of the image side
SUPERSAMPLE_SIDE = 128  # glyphs are drawn and jittered on a canvas at least this large
STROKE_LEVELS = (-1, 0, 1, 2)  # filter radius in pixels of a 128-px canvas; < 0 thins
STROKE_PROBS = (0.25, 0.3, 0.25, 0.2)
MIN_INK_AFTER_THINNING = 0.5


@dataclass(frozen=True)
class _FaceJob:
    face: Face
    classes: tuple[tuple[int, tuple[str, ...]], ...]  # (class key, members this face covers)
    seed: int
    size: int
    renders: int


def _supersample(size: int) -> int:
    return max(1, math.ceil(SUPERSAMPLE_SIDE / size))


def draw_clean(font, ch: str, side: int):
    """The glyph on a black ``side``-px canvas: fixed em and baseline, centred on its ink."""
    from PIL import Image, ImageDraw

    left, _, right, _ = font.getbbox(ch, anchor="ls")
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).text(
        (side / 2 - (left + right) / 2, BASELINE_FRACTION * side), ch, fill=255, font=font, anchor="ls"
    )
    return img


def _affine_coeffs(rng: np.random.Generator, side: int) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) of a random jitter about the canvas centre."""
    angle = math.radians(rng.uniform(-8.0, 8.0))
    scale = rng.uniform(0.85, 1.05)
    aspect = rng.uniform(-0.06, 0.06)
    shear = rng.uniform(-0.12, 0.12)
    shift = rng.uniform(-0.05, 0.05, size=2) * side
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * (1 + aspect), scale * (1 - aspect)])
    (a, b), (c, d) = forward
    inv = np.array([[d, -b], [-c, a]]) / (a * d - b * c)  # 2x2 inverse, no LAPACK in workers
    centre = np.full(2, side / 2)
    offset = centre - inv @ (centre + shift)
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def morph(arr: np.ndarray, radius: int, op) -> np.ndarray:
    """Square grey dilation (``op=np.maximum``) or erosion (``np.minimum``), separable, zero border."""
    out = arr
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        acc = padded.take(range(0, n), axis=axis)
        for k in range(1, 2 * radius + 1):
            acc = op(acc, padded.take(range(k, k + n), axis=axis))
        out = acc
    return out


def _change_stroke(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thicken or thin the strokes by a random square max/min filter."""
    level = STROKE_LEVELS[rng.choice(len(STROKE_LEVELS), p=STROKE_PROBS)]
    radius = round(level * arr.shape[0] / SUPERSAMPLE_SIDE)
    if radius > 0:
        return morph(arr, radius, np.maximum)
    if radius < 0:  # thin, unless that erases hairlines (light faces): keep half the ink
        thinned = morph(arr, -radius, np.minimum)
        return thinned if thinned.sum(dtype=np.int64) >= MIN_INK_AFTER_THINNING * arr.sum(dtype=np.int64) else arr
    return arr


def _jittered(clean: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random render of a clean glyph: stroke, affine, downsample, contrast, noise."""
    from PIL import Image

    side = clean.shape[0]
    img = Image.fromarray(_change_stroke(clean, rng), mode="L")
    img = img.transform((side, side), Image.Transform.AFFINE, _affine_coeffs(rng, side), Image.Resampling.BILINEAR)
    img = img.reduce(side // size)
    gain, background, sigma = rng.uniform(0.75, 1.0), rng.uniform(0.0, 30.0), rng.uniform(2.0, 12.0)
    arr = np.asarray(img, dtype=np.float32) * (gain * (255.0 - background) / 255.0) + background
    arr += rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _render_face(job: _FaceJob) -> list[tuple[int, str, int, bytes]]:
    """Rows (class key, glyph drawn, render index, PNG) for every class this face covers."""
    from PIL import ImageFont

    side = job.size * _supersample(job.size)
    font = ImageFont.truetype(job.face.path, size=round(EM_FRACTION * side), layout_engine=ImageFont.Layout.BASIC)
    rows = []
    for key, members in job.classes:
        clean = {ch: np.asarray(draw_clean(font, ch, side)) for ch in members}
        inked = [ch for ch in members if clean[ch].any()]
        if not inked:
            continue
        rng = np.random.default_rng([job.seed, key, job.face.key])
        for r in range(job.renders):
            ch = inked[int(rng.integers(len(inked)))]
            rows.append((key, ch, r, _png(_jittered(clean[ch], rng, job.size))))
    return rows
