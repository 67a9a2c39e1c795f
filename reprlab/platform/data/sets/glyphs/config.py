"""Build parameters of the glyphs data set."""

from __future__ import annotations

from dataclasses import dataclass

from reprlab.platform.core.errors import DataError


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
