"""The faces the glyphs data set is rendered from.

Faces are the text TrueType fonts in matplotlib's ``mpl-data/fonts/ttf`` (DejaVu Sans, Sans Mono
and Serif in four styles each, STIX General in four, six Computer Modern faces) plus every
``.ttf``/``.otf`` under ``extra_font_dirs``. A face draws a class only if its cmap maps one of the
class's characters to a real, non-empty glyph; a merged class is drawn from any of its members the
face covers. Family, weight (regular/bold) and slant (upright/italic/oblique) are kept as metadata:
they are attributes shared across classes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.sets.glyphs.charset import SCRIPT_CODEPOINTS
from reprlab.platform.data.sets.glyphs.config import GlyphsConfig

FONT_SUFFIXES = (".ttf", ".otf")

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
