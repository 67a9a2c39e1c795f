"""A contact sheet of the glyphs data set: a grid of renders, for looking at the data."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reprlab.platform.data.sets.glyphs.build import _read_table, build_glyphs
from reprlab.platform.data.sets.glyphs.config import GlyphsConfig


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
