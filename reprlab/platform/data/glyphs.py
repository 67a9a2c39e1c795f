"""The embedded default data set ``glyphs``: characters rendered from the fonts matplotlib ships.

Classes are characters of Latin (upper and lower case), Greek (upper and lower case, final sigma
included), Cyrillic (the Russian alphabet with the Ukrainian, Belarusian, Serbian and Macedonian
letters of U+0400..U+045F, plus Ґ and the Kazakh letters) and the digits, after merging look-alikes
across scripts (:data:`MERGE_GROUPS`) into one class. Class ids are ``0..C-1`` in the order
(script: digit, latin, greek, cyrillic; then code point of the class's representative) over the
classes that keep at least ``min_faces`` faces; dropped classes are recorded in the metadata.

Faces are the text TrueType fonts in matplotlib's ``mpl-data/fonts/ttf`` (DejaVu Sans, Sans Mono
and Serif in four styles each, STIX General in four, six Computer Modern faces) plus every
``.ttf``/``.otf`` under ``extra_font_dirs``. A face draws a class only if its cmap maps one of the
class's characters to a real, non-empty glyph; a merged class is drawn from any of its members the
face covers. Family, weight (regular/bold) and slant (upright/italic/oblique) are kept as metadata:
they are attributes shared across classes.

Images are grayscale, **white glyph on black**, ``size`` x ``size``. The glyph is drawn at a fixed
em size (:data:`EM_FRACTION` of the image) on a fixed baseline (:data:`BASELINE_FRACTION` down),
centred horizontally on its ink, so upper and lower case keep their size difference. Each render
then gets, at 4-8x supersampling, a stroke-width change (max/min filter), a random affine (rotation,
scale, aspect, shear, translation), box downsampling, a random contrast and additive Gaussian
noise. Everything follows from ``seed``: each (class, face) pair has its own generator seeded by
(seed, code point of the class, CRC of the font file name), so adding fonts or classes never
changes the other images.

The result is cached as one Parquet file ``glyphs-<hash>.parquet`` (PNG bytes plus label and
metadata columns; build parameters, faces and classes in the schema metadata), where the hash
covers the build parameters, the font files' contents, the class table, Pillow/FreeType versions
and :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import sys
import unicodedata
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from reprlab.platform.data.types import Benchmark, ImageSet, decode_image_bytes
from reprlab.platform.errors import DataError

FORMAT_VERSION = 1
EM_FRACTION = 0.58  # font size (em) as a fraction of the image side
BASELINE_FRACTION = 0.72  # baseline position from the top, as a fraction of the image side
SUPERSAMPLE_SIDE = 128  # glyphs are drawn and jittered on a canvas at least this large
METADATA_KEY = b"reprlab.glyphs"
SCRIPTS = ("digit", "latin", "greek", "cyrillic")
META_COLUMNS = ("char", "script", "font_family", "font_weight", "font_slant", "font_file")
FONT_SUFFIXES = (".ttf", ".otf")
REBUILD_HINT = "rebuild it with `reprlab data build glyphs --force`"

# ----------------------------------------------------------------------------------------------
# Characters and classes
# ----------------------------------------------------------------------------------------------

_CYRILLIC_EXTRA = (0x0490, 0x0491) + (  # Ukrainian Ghe with upturn, then Kazakh letters
    0x0492, 0x0493, 0x049A, 0x049B, 0x04A2, 0x04A3, 0x04AE, 0x04AF,
    0x04B0, 0x04B1, 0x04BA, 0x04BB, 0x04D8, 0x04D9, 0x04E8, 0x04E9,
)  # fmt: skip

#: Unicode code points of each script's characters (before merging).
SCRIPT_CODEPOINTS: dict[str, tuple[int, ...]] = {
    "digit": tuple(range(0x30, 0x3A)),
    "latin": tuple(range(0x41, 0x5B)) + tuple(range(0x61, 0x7B)),
    "greek": tuple(c for c in range(0x391, 0x3AA) if c != 0x3A2) + tuple(range(0x3B1, 0x3CA)),
    "cyrillic": tuple(range(0x400, 0x460)) + _CYRILLIC_EXTRA,
}

#: Look-alike characters merged into one class; the first name is the class's representative.
#: Chosen from the standard cross-script homoglyphs, checked by rendering: members draw (nearly)
#: identically in DejaVu Sans. Near look-alikes that differ in most faces stay separate classes:
#: Greek rho/p, nu/v, upsilon/u, eta/n, Cyrillic Ze/3, U/Y (upper case), soft sign/b.
MERGE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("LATIN CAPITAL LETTER A", "GREEK CAPITAL LETTER ALPHA", "CYRILLIC CAPITAL LETTER A"),
    ("LATIN CAPITAL LETTER B", "GREEK CAPITAL LETTER BETA", "CYRILLIC CAPITAL LETTER VE"),
    ("LATIN CAPITAL LETTER C", "CYRILLIC CAPITAL LETTER ES"),
    ("LATIN CAPITAL LETTER E", "GREEK CAPITAL LETTER EPSILON", "CYRILLIC CAPITAL LETTER IE"),
    ("LATIN CAPITAL LETTER H", "GREEK CAPITAL LETTER ETA", "CYRILLIC CAPITAL LETTER EN"),
    ("LATIN CAPITAL LETTER I", "GREEK CAPITAL LETTER IOTA",
     "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I"),
    ("LATIN CAPITAL LETTER J", "CYRILLIC CAPITAL LETTER JE"),
    ("LATIN CAPITAL LETTER K", "GREEK CAPITAL LETTER KAPPA", "CYRILLIC CAPITAL LETTER KA"),
    ("LATIN CAPITAL LETTER M", "GREEK CAPITAL LETTER MU", "CYRILLIC CAPITAL LETTER EM"),
    ("LATIN CAPITAL LETTER N", "GREEK CAPITAL LETTER NU"),
    ("LATIN CAPITAL LETTER O", "GREEK CAPITAL LETTER OMICRON", "CYRILLIC CAPITAL LETTER O"),
    ("LATIN CAPITAL LETTER P", "GREEK CAPITAL LETTER RHO", "CYRILLIC CAPITAL LETTER ER"),
    ("LATIN CAPITAL LETTER S", "CYRILLIC CAPITAL LETTER DZE"),
    ("LATIN CAPITAL LETTER T", "GREEK CAPITAL LETTER TAU", "CYRILLIC CAPITAL LETTER TE"),
    ("LATIN CAPITAL LETTER X", "GREEK CAPITAL LETTER CHI", "CYRILLIC CAPITAL LETTER HA"),
    ("LATIN CAPITAL LETTER Y", "GREEK CAPITAL LETTER UPSILON", "CYRILLIC CAPITAL LETTER STRAIGHT U"),
    ("LATIN CAPITAL LETTER Z", "GREEK CAPITAL LETTER ZETA"),
    ("LATIN SMALL LETTER A", "CYRILLIC SMALL LETTER A"),
    ("LATIN SMALL LETTER C", "CYRILLIC SMALL LETTER ES"),
    ("LATIN SMALL LETTER E", "CYRILLIC SMALL LETTER IE"),
    ("LATIN SMALL LETTER H", "CYRILLIC SMALL LETTER SHHA"),
    ("LATIN SMALL LETTER I", "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I"),
    ("LATIN SMALL LETTER J", "CYRILLIC SMALL LETTER JE"),
    ("LATIN SMALL LETTER O", "GREEK SMALL LETTER OMICRON", "CYRILLIC SMALL LETTER O"),
    ("LATIN SMALL LETTER P", "CYRILLIC SMALL LETTER ER"),
    ("LATIN SMALL LETTER S", "CYRILLIC SMALL LETTER DZE"),
    ("LATIN SMALL LETTER X", "CYRILLIC SMALL LETTER HA"),
    ("LATIN SMALL LETTER Y", "CYRILLIC SMALL LETTER U"),
    ("GREEK CAPITAL LETTER GAMMA", "CYRILLIC CAPITAL LETTER GHE"),
    ("GREEK CAPITAL LETTER THETA", "CYRILLIC CAPITAL LETTER BARRED O"),
    ("GREEK CAPITAL LETTER PI", "CYRILLIC CAPITAL LETTER PE"),
    ("GREEK CAPITAL LETTER PHI", "CYRILLIC CAPITAL LETTER EF"),
    ("GREEK SMALL LETTER KAPPA", "CYRILLIC SMALL LETTER KA"),
)  # fmt: skip


@dataclass(frozen=True)
class GlyphClass:
    """One class: its representative character, its script, and every character it merges."""

    char: str
    script: str
    members: tuple[str, ...]

    @property
    def key(self) -> int:
        """Stable key (the representative's code point), independent of the class id."""
        return ord(self.char)


def _script_of(ch: str) -> str:
    for script, cps in SCRIPT_CODEPOINTS.items():
        if ord(ch) in cps:
            return script
    raise ValueError(f"character {ch!r} is not in the glyphs repertoire")


@lru_cache(maxsize=1)
def glyph_classes() -> tuple[GlyphClass, ...]:
    """All candidate classes (before dropping thin ones) in class-id order."""
    rep_of = {chr(cp): chr(cp) for cps in SCRIPT_CODEPOINTS.values() for cp in cps}
    for names in MERGE_GROUPS:
        chars = [unicodedata.lookup(n) for n in names]
        for ch in chars:
            if ch not in rep_of:
                raise ValueError(f"merge group member {ch!r} is not in the repertoire")
            rep_of[ch] = chars[0]
    members: dict[str, list[str]] = {}
    for ch, rep in rep_of.items():
        members.setdefault(rep, []).append(ch)
    classes = [
        GlyphClass(rep, _script_of(rep), tuple(sorted(ms, key=lambda c: (c != rep, ord(c)))))
        for rep, ms in members.items()
    ]
    return tuple(sorted(classes, key=lambda c: (SCRIPTS.index(c.script), ord(c.char))))


def canonical_char(ch: str) -> str:
    """The representative of the class ``ch`` belongs to (``'Α'`` and ``'А'`` give ``'A'``)."""
    for cls in glyph_classes():
        if ch in cls.members:
            return cls.char
    raise ValueError(f"character {ch!r} is not in the glyphs repertoire")


# ----------------------------------------------------------------------------------------------
# Config and fonts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlyphsConfig:
    """Build parameters of the glyphs data set (the cache hash covers them, extra folders via their fonts)."""

    seed: int = 0
    size: int = 32
    renders_per_face: int = 3
    extra_font_dirs: tuple[str, ...] = ()
    min_faces: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_font_dirs", tuple(str(d) for d in self.extra_font_dirs))
        if self.size < 8 or self.renders_per_face < 1 or self.min_faces < 1 or self.seed < 0:
            raise DataError(
                f"data: glyphs needs size >= 8, renders_per_face >= 1, min_faces >= 1, seed >= 0; got {self}"
            )


#: matplotlib fonts that map letters to something else than letters, and why they are skipped.
EXCLUDED_FONTS = {
    "LastResortHE-Regular.ttf": "fallback font: draws a placeholder box for every character",
    "cmsy10.ttf": "math symbols at letter code points",
    "cmex10.ttf": "math extension symbols at letter code points",
}

#: Computer Modern files carry no usable style in their name tables.
_COMPUTER_MODERN = {
    "cmr10.ttf": ("Computer Modern Roman", "regular", "upright"),
    "cmb10.ttf": ("Computer Modern Roman", "bold", "upright"),
    "cmti10.ttf": ("Computer Modern Roman", "regular", "italic"),
    "cmmi10.ttf": ("Computer Modern Math", "regular", "italic"),
    "cmss10.ttf": ("Computer Modern Sans", "regular", "upright"),
    "cmtt10.ttf": ("Computer Modern Typewriter", "regular", "upright"),
}


@dataclass(frozen=True)
class Face:
    """One font file usable for rendering, with its style attributes and the characters it covers."""

    file: str  # identifier: the file name (prefixed by its folder if two files share a name)
    path: str
    sha256: str
    family: str
    weight: str
    slant: str
    chars: tuple[str, ...] = field(repr=False)

    @property
    def key(self) -> int:
        return zlib.crc32(self.file.encode())


def matplotlib_font_dir() -> Path:
    """matplotlib's bundled TrueType folder, found without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise DataError("data: glyphs needs matplotlib (its bundled fonts), which is not installed")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


def _font_files(cfg: GlyphsConfig) -> list[Path]:
    """matplotlib's fonts, then each extra folder's fonts (recursively), each group sorted."""
    files = sorted(p for p in matplotlib_font_dir().iterdir() if p.suffix.lower() in FONT_SUFFIXES)
    for d in cfg.extra_font_dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise DataError(f"data: glyphs font folder not found: {root}")
        files += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FONT_SUFFIXES)
    return files


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha256(path: Path) -> str:
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def _style(tt, path: Path) -> tuple[str, str, str]:
    """(family, weight, slant) from the name/OS2/head/post tables, falling back on the file name."""
    if path.name in _COMPUTER_MODERN:
        return _COMPUTER_MODERN[path.name]
    name = tt["name"]
    family = name.getDebugName(16) or name.getDebugName(1) or path.stem
    words = f"{name.getDebugName(17) or name.getDebugName(2) or ''} {path.stem}".lower()
    os2 = tt["OS/2"] if "OS/2" in tt else None
    fs_sel = os2.fsSelection if os2 is not None else 0
    mac = tt["head"].macStyle
    angle = tt["post"].italicAngle if "post" in tt else 0
    heavy = any(w in words for w in ("bold", "black", "heavy"))
    bold = heavy or (os2 is not None and os2.usWeightClass >= 600) or fs_sel & 0x20 or mac & 1
    if fs_sel & 0x200 or "oblique" in words or "slanted" in words:
        slant = "oblique"
    elif fs_sel & 1 or mac & 2 or "italic" in words or angle:
        slant = "italic"
    else:
        slant = "upright"
    return family, "bold" if bold else "regular", slant


def _covered_chars(tt) -> tuple[list[str], str | None]:
    """Repertoire characters mapped to a real glyph, or a reason to skip the whole font."""
    cmap = tt.getBestCmap() or {}
    wanted = [cp for cps in SCRIPT_CODEPOINTS.values() for cp in cps]
    hits = {cp: cmap[cp] for cp in wanted if cp in cmap and cmap[cp] != ".notdef"}
    if not hits:
        return [], "covers none of the characters"
    if len(set(hits.values())) < 0.5 * len(hits):
        return [], "maps many characters to one glyph (a fallback font)"
    return [chr(cp) for cp in hits], None


def _read_face(path: Path, file_id: str) -> tuple[Face | None, str | None]:
    from fontTools.ttLib import TTFont, TTLibError

    if path.name in EXCLUDED_FONTS:
        return None, EXCLUDED_FONTS[path.name]
    try:
        with TTFont(str(path), lazy=True) as tt:
            chars, reason = _covered_chars(tt)
            if reason:
                return None, reason
            family, weight, slant = _style(tt, path)
    except (TTLibError, OSError, KeyError, AssertionError, ValueError) as exc:
        return None, f"unreadable font: {exc}"
    return Face(file_id, str(path), _sha256(path), family, weight, slant, tuple(chars)), None


def discover_faces(cfg: GlyphsConfig) -> tuple[list[Face], dict[str, str]]:
    """Usable faces in a fixed order, and the skipped font files with the reason for each."""
    import logging

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # BaKoMa fonts warn about timestamps
    faces: list[Face] = []
    skipped: dict[str, str] = {}
    seen_names: set[str] = set()
    seen_sha: set[str] = set()
    for path in _font_files(cfg):
        file_id = path.name if path.name not in seen_names else f"{path.parent.name}/{path.name}"
        seen_names.add(path.name)
        face, reason = _read_face(path, file_id)
        if face is None:
            skipped[file_id] = reason or "skipped"
        elif face.sha256 in seen_sha:
            skipped[file_id] = "duplicate of a font already used"
        else:
            seen_sha.add(face.sha256)
            faces.append(face)
    return faces, skipped


# ----------------------------------------------------------------------------------------------
# Rendering (runs in worker processes; one job per face)
# ----------------------------------------------------------------------------------------------

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


def _draw_clean(font, ch: str, side: int):
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


def _morph(arr: np.ndarray, radius: int, op) -> np.ndarray:
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
        return _morph(arr, radius, np.maximum)
    if radius < 0:  # thin, unless that erases hairlines (light faces): keep half the ink
        thinned = _morph(arr, -radius, np.minimum)
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
        clean = {ch: np.asarray(_draw_clean(font, ch, side)) for ch in members}
        inked = [ch for ch in members if clean[ch].any()]
        if not inked:
            continue
        rng = np.random.default_rng([job.seed, key, job.face.key])
        for r in range(job.renders):
            ch = inked[int(rng.integers(len(inked)))]
            rows.append((key, ch, r, _png(_jittered(clean[ch], rng, job.size))))
    return rows


def _face_jobs(cfg: GlyphsConfig, faces: Sequence[Face]) -> list[_FaceJob]:
    jobs = []
    for face in faces:
        covered = set(face.chars)
        classes = tuple(
            (c.key, tuple(m for m in c.members if m in covered))
            for c in glyph_classes()
            if any(m in covered for m in c.members)
        )
        jobs.append(_FaceJob(face, classes, cfg.seed, cfg.size, cfg.renders_per_face))
    return jobs


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> Executor:
    """Forked processes on Linux (no re-import of ``__main__``, cheap start), threads elsewhere."""
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))
    return ThreadPoolExecutor(max_workers=workers)


def _run_jobs(jobs: list[_FaceJob], workers: int) -> list[list[tuple[int, str, int, bytes]]]:
    """Render every face, in ``workers`` parallel workers when more than one."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_render_face(j) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].classes))  # biggest first
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork() beside native threads
        warnings.simplefilter("ignore", DeprecationWarning)
        with _pool(workers) as pool:
            results = dict(zip(order, pool.map(_render_face, [jobs[i] for i in order])))
    return [results[i] for i in range(len(jobs))]


# ----------------------------------------------------------------------------------------------
# Building and caching
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$REPRLAB_DATA`` if set, else ``~/.cache/reprlab/data``."""
    env = os.environ.get("REPRLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reprlab" / "data"


def _params(cfg: GlyphsConfig) -> dict:
    return {
        "seed": cfg.seed,
        "size": cfg.size,
        "renders_per_face": cfg.renders_per_face,
        "min_faces": cfg.min_faces,
        "extra_font_dirs": list(cfg.extra_font_dirs),
    }


def _build_key(cfg: GlyphsConfig, faces: Sequence[Face]) -> str:
    """Hash over everything that determines the file's bytes."""
    from PIL import __version__ as pillow_version
    from PIL import features

    payload = {
        "format": FORMAT_VERSION,
        "params": {k: v for k, v in _params(cfg).items() if k != "extra_font_dirs"},
        "fonts": [(f.file, f.sha256) for f in faces],
        "classes": [c.members for c in glyph_classes()],
        "geometry": [EM_FRACTION, BASELINE_FRACTION, SUPERSAMPLE_SIDE],
        "stroke": [STROKE_LEVELS, STROKE_PROBS, MIN_INK_AFTER_THINNING],
        "pillow": pillow_version,
        "freetype": features.version("freetype2"),
        "numpy": np.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig()) -> Path:
    """Where the Parquet file for ``cfg`` lives (whether or not it is built yet)."""
    faces, _ = discover_faces(cfg)
    return Path(cache_dir).expanduser() / f"glyphs-{_build_key(cfg, faces)}.parquet"


def _assemble(cfg: GlyphsConfig, faces: list[Face], results: list[list[tuple]]) -> tuple[list, list, list]:
    """Rows sorted by (label, face, render), the kept classes and the dropped ones."""
    by_key = {c.key: c for c in glyph_classes()}
    n_faces = Counter(key for rows in results for key in {r[0] for r in rows})
    kept = [c for c in glyph_classes() if n_faces[c.key] >= cfg.min_faces]
    dropped = [{"char": c.char, "faces": n_faces[c.key]} for c in glyph_classes() if c not in kept]
    label_of = {c.key: i for i, c in enumerate(kept)}
    rows = []
    for face_index, (face, face_rows) in enumerate(zip(faces, results)):
        for key, glyph, render, png in face_rows:
            if key in label_of:
                rows.append((label_of[key], face_index, render, by_key[key], glyph, face, png))
    rows.sort(key=lambda r: r[:3])
    return rows, kept, dropped


def _to_table(cfg: GlyphsConfig, faces: list[Face], skipped: dict, results: list, key: str):
    import pyarrow as pa

    rows, kept, dropped = _assemble(cfg, faces, results)
    faces_used = Counter(f for f, _ in {(r[5].file, r[0]) for r in rows})  # classes per face
    columns = {
        "image": pa.array([r[6] for r in rows], pa.binary()),
        "label": pa.array([r[0] for r in rows], pa.int64()),
        "char": pa.array([r[3].char for r in rows], pa.string()),
        "script": pa.array([r[3].script for r in rows], pa.string()),
        "font_family": pa.array([r[5].family for r in rows], pa.string()),
        "font_weight": pa.array([r[5].weight for r in rows], pa.string()),
        "font_slant": pa.array([r[5].slant for r in rows], pa.string()),
        "font_file": pa.array([r[5].file for r in rows], pa.string()),
        "render": pa.array([r[2] for r in rows], pa.int64()),
        "glyph": pa.array([r[4] for r in rows], pa.string()),  # the member character actually drawn
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "hash": key,
        "params": _params(cfg),
        "ink": "white glyph on black background",
        "faces": [
            {"file": f.file, "family": f.family, "weight": f.weight, "slant": f.slant,
             "sha256": f.sha256, "classes": faces_used[f.file]}
            for f in faces if faces_used[f.file]
        ],
        "skipped_fonts": skipped,
        "classes": [{"label": i, "char": c.char, "script": c.script, "members": "".join(c.members)}
                    for i, c in enumerate(kept)],
        "dropped_classes": dropped,
    }  # fmt: skip
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta, ensure_ascii=False)})


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _BuildLock:
    """An exclusive advisory lock on a file in the cache directory (no-op where unsupported)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = None

    def __enter__(self) -> _BuildLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.fh = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


def build_glyphs(
    cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig(), *, force: bool = False, workers: int | None = None
) -> Path:
    """Render the data set into ``cache_dir`` (unless already cached) and return the Parquet path."""
    cache_dir = Path(cache_dir).expanduser()
    faces, skipped = discover_faces(cfg)
    key = _build_key(cfg, faces)
    path = cache_dir / f"glyphs-{key}.parquet"
    if path.exists() and not force:
        return path
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data: cannot create the glyphs cache directory {cache_dir}: {exc}") from None
    with _BuildLock(cache_dir / ".glyphs.lock"):
        if path.exists() and not force:  # another process built it while we waited
            return path
        results = _run_jobs(_face_jobs(cfg, faces), workers or _default_workers())
        table = _to_table(cfg, faces, skipped, results, key)
        if table.num_rows == 0:
            raise DataError(f"data: glyphs rendered no images (no class has {cfg.min_faces} faces)")
        try:
            _write_atomic(table, path)
        except OSError as exc:
            raise DataError(f"data: cannot write the glyphs cache {path}: {exc}") from None
    return path


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"data: glyphs cache {path} is unreadable ({why}); {REBUILD_HINT}")


def read_metadata(path: Path) -> dict:
    """The build metadata stored in a glyphs Parquet file's schema."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        meta = json.loads((schema.metadata or {})[METADATA_KEY])
    except KeyError:
        raise _corrupt(path, "no glyphs metadata") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/...; json ValueError
        raise _corrupt(path, type(exc).__name__) from None
    return meta


def _read_table(path: Path, columns: Iterable[str]):
    import pyarrow.parquet as pq

    columns = list(columns)
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # any pyarrow/OS failure means the cache cannot be used
        raise _corrupt(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    return table


def _decode_pixels(images: list[bytes], path: Path, size: int) -> np.ndarray:
    """Decode PNG bytes into one uint8 (N, size, size, 1) array."""
    out = np.empty((len(images), size, size, 1), dtype=np.uint8)
    for i, data in enumerate(images):
        arr = decode_image_bytes(data, f"{path} row {i}")
        if arr.shape != (size, size, 1):
            raise _corrupt(path, f"row {i} has shape {arr.shape}, expected {(size, size, 1)}")
        out[i] = arr
    return out


def _split(labels: np.ndarray, pixels: np.ndarray, meta: dict[str, np.ndarray]) -> tuple[ImageSet, ImageSet]:
    """Class-disjoint split: the first half of the class ids trains, the rest tests."""
    classes = np.unique(labels)
    train_mask = labels < classes[len(classes) // 2]
    sets = []
    for mask in (train_mask, ~train_mask):
        idx = np.flatnonzero(mask)
        sets.append(ImageSet(labels=labels[idx], pixels=pixels[idx], meta={k: v[idx] for k, v in meta.items()}))
    return sets[0], sets[1]


def load_glyphs(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig()) -> Benchmark:
    """Build (or reuse) the data set and return it as a class-disjoint train/test Benchmark."""
    path = build_glyphs(cache_dir, cfg)
    read_metadata(path)
    table = _read_table(path, ("image", "label") + META_COLUMNS)
    pixels = _decode_pixels(table.column("image").to_pylist(), path, cfg.size)
    labels = table.column("label").to_numpy().astype(np.int64)
    meta = {k: table.column(k).to_numpy(zero_copy_only=False) for k in META_COLUMNS}
    train, test = _split(labels, pixels, meta)
    return Benchmark(name="glyphs", train=train, test=test)


def glyphs_info(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig(), *, build: bool = True) -> dict:
    """Summary of the (built if needed) data set: counts, split, dropped classes, per-face table."""
    path = build_glyphs(cache_dir, cfg) if build else cache_path(cache_dir, cfg)
    if not path.exists():
        return {"name": "glyphs", "path": str(path), "built": False}
    meta = read_metadata(path)
    table = _read_table(path, ("label", "font_file"))
    labels = table.column("label").to_numpy()
    classes = np.unique(labels)
    n_train = len(classes) // 2
    train_mask = labels < classes[n_train] if len(classes) > 1 else np.ones(len(labels), bool)
    per_face = Counter(table.column("font_file").to_pylist())
    return {
        "name": "glyphs",
        "built": True,
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "params": meta["params"],
        "ink": meta["ink"],
        "classes": len(classes),
        "faces": len(meta["faces"]),
        "images": int(len(labels)),
        "splits": {
            "train": {"classes": n_train, "images": int(train_mask.sum())},
            "test": {"classes": len(classes) - n_train, "images": int((~train_mask).sum())},
        },
        "classes_by_script": dict(Counter(c["script"] for c in meta["classes"])),
        "merged_classes": {c["char"]: c["members"] for c in meta["classes"] if len(c["members"]) > 1},
        "dropped_classes": meta["dropped_classes"],
        "face_table": [
            {k: f[k] for k in ("file", "family", "weight", "slant")}
            | {"chars": f["classes"], "images": per_face[f["file"]]}
            for f in meta["faces"]
        ],
        "skipped_fonts": meta["skipped_fonts"],
    }


def _spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spread over ``items`` (all of them if fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def contact_sheet(
    cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig(), classes: int = 12, faces: int = 8, scale: int = 2
):
    """A grid of render 0: ``classes`` rows spread over the class ids, each showing up to ``faces``
    of the faces that draw that class (spread over them in face order)."""
    from PIL import Image

    path = build_glyphs(cache_dir, cfg)
    table = _read_table(path, ("image", "label", "render"))
    first = np.flatnonzero(table.column("render").to_numpy() == 0)
    labels = table.column("label").to_numpy()[first]
    images = table.column("image")
    cell = cfg.size * scale
    rows = _spread(np.unique(labels), classes)
    sheet = Image.new("L", (cell * faces, cell * len(rows)), 64)
    for y, label in enumerate(rows):
        for x, i in enumerate(_spread(first[labels == label], faces)):  # rows are in face order
            tile = Image.open(io.BytesIO(images[int(i)].as_py())).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (x * cell, y * cell))
    return sheet
