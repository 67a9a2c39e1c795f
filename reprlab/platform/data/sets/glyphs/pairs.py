"""Glyph pairs for IIN: pairs of glyph images that share known factors (the pair source protocol
is in :mod:`reprlab.platform.data.pairs`)."""

from __future__ import annotations

import numpy as np

from reprlab.platform.data.pairs import MetadataPairs, factor_codes
from reprlab.platform.data.types import ImageSet


class GlyphPairs(MetadataPairs):
    """Glyph pairs with the factors character (the class), font weight and slant; everything else
    (font family, the renderer's jitter) is the residual. E.g. sharing ``character``: the same
    character in a face of the other weight and another slant; sharing all but ``character``:
    another character in the same weight and slant."""

    factors = ("character", "weight", "slant")
    target_kinds = {"character": "class", "weight": "class", "slant": "class"}
    probes = "within"  # glyphs' splits are class-disjoint: a character probe cannot be fitted on train

    @staticmethod
    def targets(images: ImageSet) -> dict[str, np.ndarray]:
        return {"character": images.labels, "weight": images.meta["font_weight"], "slant": images.meta["font_slant"]}

    def __init__(self, images: ImageSet, all_but: float = 0.0) -> None:
        t = self.targets(images)
        super().__init__(images, factor_codes([t[f] for f in self.factors]), all_but)
