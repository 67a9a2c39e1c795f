"""The embedded default data set ``glyphs``: characters of Latin, Greek, Cyrillic and the digits
(look-alikes across scripts merged into one class), rendered with random jitter from the fonts
matplotlib ships (and extra font folders), cached as one Parquet file.

Modules: :mod:`.charset` (characters and classes), :mod:`.config` (build parameters),
:mod:`.fonts` (faces), :mod:`.render` (rendering one face), :mod:`.build` (building, caching,
reading), :mod:`.contact` (contact sheets), :mod:`.pairs` (IIN's glyph pairs).
"""

from reprlab.platform.data.sets.glyphs.build import (
    FORMAT_VERSION,
    META_COLUMNS,
    METADATA_KEY,
    build_glyphs,
    cache_path,
    default_cache_dir,
    glyphs_info,
    load_glyphs,
    read_metadata,
)
from reprlab.platform.data.sets.glyphs.charset import (
    MERGE_GROUPS,
    SCRIPT_CODEPOINTS,
    SCRIPTS,
    GlyphClass,
    canonical_char,
    glyph_classes,
)
from reprlab.platform.data.sets.glyphs.config import GlyphsConfig
from reprlab.platform.data.sets.glyphs.contact import contact_sheet
from reprlab.platform.data.sets.glyphs.fonts import EXCLUDED_FONTS, Face, discover_faces, matplotlib_font_dir
from reprlab.platform.data.sets.glyphs.pairs import GlyphPairs

__all__ = [
    "EXCLUDED_FONTS",
    "FORMAT_VERSION",
    "MERGE_GROUPS",
    "META_COLUMNS",
    "METADATA_KEY",
    "SCRIPT_CODEPOINTS",
    "SCRIPTS",
    "Face",
    "GlyphClass",
    "GlyphPairs",
    "GlyphsConfig",
    "build_glyphs",
    "cache_path",
    "canonical_char",
    "contact_sheet",
    "default_cache_dir",
    "discover_faces",
    "glyph_classes",
    "glyphs_info",
    "load_glyphs",
    "matplotlib_font_dir",
    "read_metadata",
    "GLYPHS",
    "GlyphsSection",
    "glyphs_config",
]

from reprlab.platform.data.sets.glyphs.dataset import GLYPHS, GlyphsSection, glyphs_config  # noqa: E402  registers the set
