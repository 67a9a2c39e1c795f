"""The embedded glyphs data set: classes, faces, rendering, caching, splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reprlab.platform.data.sets.glyphs import (
    GlyphsConfig,
    build_glyphs,
    canonical_char,
    default_cache_dir,
    discover_faces,
    glyph_classes,
    glyphs_info,
    load_glyphs,
    matplotlib_font_dir,
)
from reprlab.platform.core.errors import DataError

SIZE = 24  # rendering cost does not depend on the size (glyphs are drawn on a >= 128 px canvas)
SMALL = GlyphsConfig(size=SIZE, renders_per_face=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glyphs")
    build_glyphs(root, SMALL, workers=2)
    return root


@pytest.fixture(scope="module")
def bench(cache):
    return load_glyphs(cache, SMALL)


def _images(path: Path) -> list[bytes]:
    return pq.read_table(path, columns=["image"]).column("image").to_pylist()


def test_default_font_set_and_class_count(cache):
    faces, skipped = discover_faces(GlyphsConfig())
    assert len(faces) >= 16
    assert "LastResortHE-Regular.ttf" in skipped  # draws boxes, never real glyphs
    info = glyphs_info(cache, SMALL)
    assert info["classes"] >= 150
    assert info["faces"] >= 16
    assert info["images"] == sum(s["images"] for s in info["splits"].values())
    assert set(info["classes_by_script"]) == {"digit", "latin", "greek", "cyrillic"}
    assert isinstance(info["dropped_classes"], list)
    assert info["file_bytes"] > 0 and Path(info["path"]).exists()
    assert all(f["chars"] > 0 for f in info["face_table"])


def test_every_class_has_min_faces(cache):
    path = build_glyphs(cache, SMALL)
    table = pq.read_table(path, columns=["label", "font_file"]).to_pandas()
    faces_per_class = table.groupby("label")["font_file"].nunique()
    assert faces_per_class.min() >= SMALL.min_faces
    labels = np.sort(table["label"].unique())
    assert np.array_equal(labels, np.arange(len(labels)))  # ids are 0..C-1


def test_lookalikes_share_a_class(cache, bench):
    latin_a, greek_alpha, cyrillic_a = "A", "\N{GREEK CAPITAL LETTER ALPHA}", "\N{CYRILLIC CAPITAL LETTER A}"
    assert canonical_char(greek_alpha) == canonical_char(cyrillic_a) == latin_a
    assert canonical_char("\N{CYRILLIC CAPITAL LETTER GHE}") == "\N{GREEK CAPITAL LETTER GAMMA}"
    assert canonical_char("\N{CYRILLIC SMALL LETTER O}") == "o"
    assert canonical_char("\N{CYRILLIC CAPITAL LETTER ZHE}") == "\N{CYRILLIC CAPITAL LETTER ZHE}"
    reps = [c.char for c in glyph_classes()]
    assert len(reps) == len(set(reps)) and greek_alpha not in reps and cyrillic_a not in reps
    # the class 'A' is drawn from all three scripts' code points, under one label
    table = pq.read_table(build_glyphs(cache, SMALL), columns=["label", "char", "glyph"]).to_pandas()
    rows = table[table["char"] == latin_a]
    assert rows["label"].nunique() == 1
    assert {latin_a, greek_alpha, cyrillic_a} >= set(rows["glyph"]) and rows["glyph"].nunique() >= 2
    all_chars = set(bench.train.meta["char"]) | set(bench.test.meta["char"])
    assert greek_alpha not in all_chars and cyrillic_a not in all_chars


def test_metadata_present_and_varied(bench):
    for split in (bench.train, bench.test):
        assert set(split.meta) == {"char", "script", "font_family", "font_weight", "font_slant", "font_file"}
    meta = {k: np.concatenate([bench.train.meta[k], bench.test.meta[k]]) for k in bench.train.meta}
    assert set(meta["font_weight"]) == {"regular", "bold"}
    assert "upright" in set(meta["font_slant"]) and {"italic", "oblique"} & set(meta["font_slant"])
    assert len(set(meta["font_family"])) >= 4
    faces = {f.file: f for f in discover_faces(GlyphsConfig())[0]}
    bold_oblique = faces["DejaVuSans-BoldOblique.ttf"]
    assert (bold_oblique.family, bold_oblique.weight, bold_oblique.slant) == ("DejaVu Sans", "bold", "oblique")
    assert (faces["cmb10.ttf"].weight, faces["cmti10.ttf"].slant) == ("bold", "italic")


def test_split_is_class_disjoint(bench):
    assert bench.name == "glyphs" and bench.test is not None
    train, test = set(bench.train.labels), set(bench.test.labels)
    assert not train & test
    assert max(train) < min(test)  # first half of the class ids trains
    assert abs(len(train) - len(test)) <= 1
    for split in (bench.train, bench.test):
        assert split.pixels.dtype == np.uint8 and split.pixels.shape[1:] == (SIZE, SIZE, 1)
        _, counts = np.unique(split.labels, return_counts=True)
        assert counts.min() >= 2


def _ink_contrast(pixels: np.ndarray) -> np.ndarray:
    """Per image: brightest 3x3 local mean minus the median (noise alone stays near 25)."""
    x = pixels[..., 0].astype(np.float32)
    n, h, w = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    local = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return local.reshape(n, -1).max(axis=1) - np.median(x.reshape(n, -1), axis=1)


def test_images_not_blank_and_renders_differ(bench):
    for split in (bench.train, bench.test):
        assert _ink_contrast(split.pixels).min() > 40  # a white glyph on every image
        assert np.median(split.pixels.reshape(len(split), -1), axis=1).max() < 80  # dark background
    px, meta, labels = bench.train.pixels, bench.train.meta, bench.train.labels
    first = np.flatnonzero(labels == labels[0])
    same_face = first[meta["font_file"][first] == meta["font_file"][first[0]]]
    assert len(same_face) == 2 and not np.array_equal(px[same_face[0]], px[same_face[1]])


def test_deterministic_from_seed(cache, tmp_path):
    reference = _images(build_glyphs(cache, SMALL))
    again = build_glyphs(tmp_path / "again", SMALL, workers=1)  # serial: same bytes as in parallel
    assert _images(again) == reference
    other = build_glyphs(tmp_path / "other", GlyphsConfig(size=SIZE, renders_per_face=2, seed=1), workers=2)
    assert other.name != again.name
    other_images = _images(other)
    assert len(other_images) == len(reference) and other_images != reference


def test_cache_is_reused(cache):
    path = build_glyphs(cache, SMALL)
    before = path.stat().st_mtime_ns
    assert build_glyphs(cache, SMALL) == path
    load_glyphs(cache, SMALL)
    assert path.stat().st_mtime_ns == before
    assert sorted(p.name for p in cache.glob("glyphs-*.parquet")) == [path.name]
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    params = json.loads(pq.read_schema(path).metadata[b"reprlab.glyphs"])["params"]
    assert params == {"seed": 0, "size": SIZE, "renders_per_face": 2, "min_faces": 8, "extra_font_dirs": []}


def test_corrupt_cache_gives_data_error(cache, tmp_path):
    good = build_glyphs(cache, SMALL)
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    broken = broken_dir / good.name
    shutil.copyfile(good, broken)
    with broken.open("r+b") as fh:  # keep the size, destroy the footer
        fh.seek(-64, 2)
        fh.write(b"\0" * 64)
    with pytest.raises(DataError) as err:
        load_glyphs(broken_dir, SMALL)
    message = str(err.value)
    assert str(broken) in message and "--force" in message and "\n" not in message
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="--force"):
        glyphs_info(broken_dir, SMALL)
    assert build_glyphs(broken_dir, SMALL, force=True, workers=2) == broken  # --force repairs it
    assert _images(broken) == _images(good)


def test_extra_font_dirs(tmp_path):
    extra = tmp_path / "fonts"
    extra.mkdir()
    shutil.copyfile(matplotlib_font_dir() / "DejaVuSans.ttf", extra / "Copy.ttf")
    (extra / "notes.txt").write_text("not a font")
    (extra / "Broken.ttf").write_bytes(b"garbage")
    faces, skipped = discover_faces(GlyphsConfig(extra_font_dirs=(str(extra),)))
    assert len(faces) == len(discover_faces(GlyphsConfig())[0])
    assert "duplicate" in skipped["Copy.ttf"] and "unreadable" in skipped["Broken.ttf"]
    with pytest.raises(DataError, match="font folder not found"):
        discover_faces(GlyphsConfig(extra_font_dirs=(str(tmp_path / "missing"),)))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRLAB_DATA", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("REPRLAB_DATA")
    assert default_cache_dir() == Path.home() / ".cache" / "reprlab" / "data"
