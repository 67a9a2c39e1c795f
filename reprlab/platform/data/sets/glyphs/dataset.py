"""glyphs in the data-set catalog: its config section ``data.glyphs`` and its registration."""

from __future__ import annotations

from pydantic import Field

from reprlab.platform.core.config import DataSection, Section
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.glyphs.build import build_glyphs, default_cache_dir, glyphs_info, load_glyphs
from reprlab.platform.data.sets.glyphs.config import GlyphsConfig
from reprlab.platform.data.sets.glyphs.pairs import GlyphPairs


class GlyphsSection(Section):
    size: int = Field(32, ge=8, le=256)
    renders_per_face: int = Field(3, ge=1)
    seed: int = Field(0, ge=0)
    extra_font_dirs: list[str] = []


def glyphs_config(section: DataSection) -> GlyphsConfig:
    """The build parameters of ``data.glyphs``."""
    g = section.glyphs
    return GlyphsConfig(seed=g.seed, size=g.size, renders_per_face=g.renders_per_face,
                        extra_font_dirs=tuple(g.extra_font_dirs))


GLYPHS = register_dataset(DataSet(
    name="glyphs",
    description="glyphs (embedded default): 179 character classes rendered from the font faces matplotlib "
                "ships; class-disjoint train/test halves; metadata font, weight, slant",
    load=lambda section, root: load_glyphs(root, glyphs_config(section)),
    provides=frozenset({"labels", "metadata", "factor_pairs"}),
    Config=GlyphsSection,
    root="cache",
    default_root=default_cache_dir,
    pairs=lambda section, images, all_but: GlyphPairs(images, all_but=all_but),
    pair_spec=GlyphPairs,
    extra={"build": lambda section, root, force: build_glyphs(root, glyphs_config(section), force=force),
           "info": lambda section, root: glyphs_info(root, glyphs_config(section))},
))
