"""The embedded ``procedural_art`` set (photo crops, pasted objects, three procedural artists with
known changes), its image operations, and the ``style_folders`` reader on a fabricated tree.

Each test names the mutation it is there to catch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.data import imageops as ops
from reprlab.platform.data.sets import procedural_art as pa

SIZE = 64
SMALL = dict(content_crops=300, painting_crops=60, val_crops=48, test_crops=48, unseen_crops=24)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster than two contending ones (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def material() -> pa.Material:
    return pa.art_material(pa.ProceduralArtSection(**SMALL))


@pytest.fixture(scope="module")
def objects(material) -> pa.Crops:
    """Painting-source crops holding an object, and a few without."""
    src = material.pool("painting_source")
    has = torch.nonzero(src.obj != pa.NO_OBJECT).flatten()
    none = torch.nonzero(src.obj == pa.NO_OBJECT).flatten()
    return pa.Crops.concat([src[has], src[none[:6]]])


# --------------------------------------------------------------------------------------------
# image operations


def test_colour_edge_and_mask_operations():
    """Mutations: a wrong HSV sector formula, a hue turned the wrong way, a Sobel not normalized
    per pixel, a dilation by the wrong radius, an ellipse distance off on circles."""
    x = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ops.hsv_to_rgb(ops.rgb_to_hsv(x)), x, atol=1e-5)
    orange = torch.tensor([1.0, 1 / 3, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(ops.rotate_hue(orange, 40).flatten(), torch.tensor([1.0, 1.0, 0.0]), atol=1e-5)  # yellow
    ramp = torch.arange(12.0).view(1, 1, 1, 12).expand(1, 1, 8, 12) * 0.05
    assert torch.allclose(ops.sobel_magnitude(ramp)[..., 1:-1], torch.tensor(0.05))  # slope per pixel
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 4, 4] = True
    assert ops.dilate(m, 2).sum() == 25 and ops.dilate(m, 0).sum() == 1
    d = ops.ellipse_distance(20, 20, torch.tensor([[10.0, 10.0]]), torch.tensor([[5.0, 5.0]]))
    assert abs(d[0, 10, 17].item() - (math.hypot(7.5, 0.5) - 5)) < 1e-4 and d[0, 10, 10] < 0  # exact on circles


def test_paste_keeps_the_canvas_exactly_where_alpha_is_zero():
    """Mutations: a paste that blends outside its ellipse, or touches rows not present."""
    canvas = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tiles = torch.rand(5, 1, 25, 25, generator=torch.Generator().manual_seed(2))
    centre = torch.tensor([[16.0, 16.0], [10.0, 12.0], [20.0, 18.0], [16.0, 16.0]])
    size = torch.tensor([[10.0, 14.0]]).expand(4, 2)
    present = torch.tensor([True, True, False, True])
    out, alpha = ops.paste_under_ellipse(canvas, tiles, torch.tensor([0, 1, 2, 3]), centre, size,
                                         torch.ones(4, 3), (0.8, 1.0), present)
    assert torch.equal(out[alpha[:, None].expand_as(out) == 0], canvas[alpha[:, None].expand_as(out) == 0])
    assert torch.equal(out[2], canvas[2]) and alpha[2].sum() == 0
    ys, xs = torch.nonzero(alpha[0] > 0.5, as_tuple=True)
    assert ys.max() - ys.min() + 1 == 14 and xs.max() - xs.min() + 1 == 8  # axes 0.8 x 10, 1.0 x 14


# --------------------------------------------------------------------------------------------
# determinism, splits, crops and objects


def test_same_seed_same_bytes_other_seed_other_bytes():
    """Mutations: drawing from the global torch generator, a pool's stream depending on another
    pool's size, a painting phase not derived from the data seed."""
    counts = {"content": 20, "painting_source": 12, "val": 6, "test": 6, "unseen": 6}
    one, two = pa.build_material(SIZE, 5, counts), pa.build_material(SIZE, 5, {**counts, "content": 40})
    other = pa.build_material(SIZE, 6, counts)
    for name in ("painting_source", "val", "unseen"):
        a, b, c = one.pool(name), two.pool(name), other.pool(name)
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.obj_mask, b.obj_mask)
        assert not torch.equal(a.pixels, c.pixels)
    for artist in pa.ARTISTS:
        assert torch.equal(one.paintings(artist).pixels, two.paintings(artist).pixels)
    uid = torch.arange(50)
    assert torch.equal(pa.crop_uniform(5, uid, 1, 2), pa.crop_uniform(5, uid, 1, 2))
    assert not torch.equal(pa.crop_uniform(5, uid, 1, 2), pa.crop_uniform(6, uid, 1, 2))
    assert not torch.equal(pa.crop_uniform(5, uid, 1, 2), pa.crop_uniform(5, uid, 2, 2))


def test_a_crop_paints_the_same_alone_or_in_any_batch(objects):
    """Mutation: a stroke phase or dot grid drawn per batch (torch.rand(n)) instead of per crop."""
    for artist in pa.ARTISTS:
        whole, mask = pa.paint(objects, artist)
        again, _ = pa.paint(objects, artist)
        assert torch.equal(whole, again)
        for i in (0, 3, len(objects) - 1):
            alone, alone_mask = pa.paint(objects[i], artist)
            assert torch.equal(alone[0], whole[i]) and torch.equal(alone_mask[0], mask[i])
        rev = torch.arange(len(objects) - 1, -1, -1)
        assert torch.equal(pa.paint(objects[rev], artist)[0], whole[rev])


def test_splits_come_from_disjoint_blocks_and_crops_stay_inside_one(material):
    """Mutations: a crop allowed to run past its block's edge (positions up to x1 instead of
    x1 - size), a pool drawing from another split's blocks, a wrong block count per split."""
    split = material.block_split
    for s in range(len(pa.SCENES)):
        assert [int((split[s] == k).sum()) for k in range(len(pa.SPLITS))] == [8, 4, 2, 2]
    for name in ("content", "painting_source", "val", "test", "unseen"):
        c = material.pool(name)
        bounds = material.block_bounds[c.photo]  # N x 16 x 4
        x0, y0 = c.origin[:, 0, None], c.origin[:, 1, None]
        overlaps = ((x0 < bounds[..., 2]) & (x0 + SIZE > bounds[..., 0]) &
                    (y0 < bounds[..., 3]) & (y0 + SIZE > bounds[..., 1]))
        assert (overlaps.sum(1) == 1).all(), name  # each crop lies in one block only
        assert torch.equal(overlaps.float().argmax(1), c.block)
        assert (split[c.scene, c.block] == pa.SPLITS.index(pa.POOL_BLOCKS[name])).all(), name
        counts = torch.bincount(c.scene, minlength=len(pa.SCENES))
        assert counts.max() - counts.min() <= 1  # scenes in equal shares
        assert torch.equal(c.photo, c.scene)


def test_photo_crops_have_std_at_least_the_minimum(material):
    """Mutation: the std filter dropped or compared to the wrong statistic (china's sky block holds
    no crop of std >= 0.05; two other china blocks hold few)."""
    for name in ("content", "painting_source", "val", "test", "unseen"):
        bg = material.pool(name).background
        assert bg.flatten(1).std(1, unbiased=False).min() >= 0.05 - 1e-6, name


def test_objects_faces_seen_unseen_and_disjoint_face_ids(material):
    """Mutations: the unseen pool pasting faces (or seen pools non-faces), val or test sharing
    face ids with training, objects pasted where obj says none, a wrong object size."""
    train_ids, val_ids, test_ids = (set(material.faces[k].tolist()) for k in ("train", "val", "test"))
    assert (len(train_ids), len(val_ids), len(test_ids)) == (60, 20, 20)
    assert not (train_ids & val_ids or train_ids & test_ids or val_ids & test_ids)
    used = {}
    for name, allowed in (("content", train_ids), ("painting_source", train_ids), ("val", val_ids),
                          ("test", test_ids)):
        c = material.pool(name)
        has = c.obj != pa.NO_OBJECT
        assert set(c.obj[has].tolist()) <= {pa.FACE} and set(c.tile[has].tolist()) <= allowed, name
        assert (c.tile[~has] == -1).all() and not c.obj_mask[~has].any()
        assert c.obj_mask[has].flatten(1).any(1).all()
        used[name] = set(c.tile[has].tolist())
    assert not (used["val"] & used["content"]) and not (used["test"] & used["painting_source"])
    content = material.pool("content")
    share = (content.obj != pa.NO_OBJECT).float().mean().item()
    assert abs(share - 0.5) < 0.1  # 300 crops: 5 standard deviations is 0.14
    unseen = material.pool("unseen")
    assert (unseen.obj == pa.UNSEEN).all() and (unseen.tile >= pa.FACE_TILES).all()
    assert (material.block_split[unseen.scene, unseen.block] == pa.SPLITS.index("test")).all()
    has = content.obj != pa.NO_OBJECT
    area = content.obj_mask[has].flatten(1).sum(1).float()
    side = content.side[has]
    expected = math.pi * (0.4 * side) * (0.5 * side)
    assert ((area / expected - 1).abs() < 0.15).all()  # the 0.8 s x s ellipse
    assert side.min() >= 20 and side.max() <= 28


def test_pools_sizes_hd_regions_indexing_and_painted_pools(material):
    """Mutations: a pool size not taken from the section, HD regions not the corners of the held-out
    photo, ``paintings(a)`` not G_a of the painting-source crops, indexing dropping fields."""
    for name, key in (("content", "content_crops"), ("val", "val_crops"), ("unseen", "unseen_crops")):
        assert len(material.pool(name)) == SMALL[key]
    hd = material.pool("hd")
    assert hd.pixels.shape == (4, 3, 256, 256) and (hd.scene == -1).all() and (hd.obj == 0).all()
    assert (hd.photo == pa.PHOTOS.index("coffee")).all()
    h, w = hd.sources.sizes[pa.PHOTOS.index("coffee")].tolist()
    assert {tuple(o) for o in hd.origin.tolist()} == {(0, 0), (w - 256, 0), (0, h - 256), (w - 256, h - 256)}
    assert torch.equal(hd.image, hd.background)  # no object
    src = material.pool("painting_source")
    for artist in pa.ARTISTS:
        painted = material.paintings(artist)
        assert torch.equal(painted.image, pa.paint(src, artist)[0])
        assert torch.equal(painted.scene, src.scene) and torch.equal(painted.obj, src.obj)
    one = src[2]
    assert len(one) == 1 and torch.equal(one.pixels[0], src.pixels[2]) and torch.equal(one.centre[0], src.centre[2])
    assert len(src[np.array([0, 1, 5])]) == 3 and len(src[src.obj > 0]) == int((src.obj > 0).sum())
    big, mask = pa.paint(hd, "c")  # textures work at any size
    assert big.shape == hd.image.shape and not mask.any()


def test_class_matched_draws_the_wanted_classes():
    """Mutations: an index into the sorted order instead of the pool, a missing class passing silently."""
    pool_obj = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    want = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1])
    idx = pa.class_matched(pool_obj, want, torch.Generator().manual_seed(0))
    assert torch.equal(pool_obj[idx], want)
    with pytest.raises(DataError, match="obj=2"):
        pa.class_matched(pool_obj, torch.tensor([0, 2]), torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------
# the artists


@pytest.mark.parametrize("artist", pa.ARTISTS)
def test_alter_changes_the_painting_only_inside_the_mask(objects, artist):
    """Mutations: a texture reach larger than REACH (e.g. a 9-px stroke with REACH 3), a mask not
    grown by the texture's reach, a mask set without an object, ``alter`` ignored."""
    g1, mask = pa.paint(objects, artist, alter=True)
    g0, none = pa.paint(objects, artist, alter=False)
    differs = (g1 != g0).any(1)
    assert not (differs & ~mask).any()  # byte-identical outside the mask
    assert not none.any()
    has = objects.obj != pa.NO_OBJECT
    assert not mask[~has].any() and mask[has].flatten(1).any(1).all()
    _, touched = pa.content_change(objects, artist)
    assert torch.equal(mask, ops.dilate(touched, pa.REACH[artist]))  # exactly the change grown by the reach
    assert differs[has].flatten(1).any(1).all()  # every object is changed (alter is not ignored)


def _box_hw(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.any(2), mask.any(1)
    return torch.stack([rows.sum(1), cols.sum(1)], 1).float()


def test_artist_a_makes_the_object_taller_and_narrower(objects):
    """Mutations: stretch factors swapped or dropped, the old object left under the new one."""
    has = objects.obj != pa.NO_OBJECT
    c = objects[has]
    changed, _ = pa.content_change(c, "a")
    bg = c.background
    before, after = (c.image != bg).any(1), (changed != bg).any(1)
    ratio = _box_hw(after) / _box_hw(before)
    assert ((ratio[:, 0] > 1.25) & (ratio[:, 0] < 1.45)).all(), ratio[:, 0]  # x 1.35 tall
    assert ((ratio[:, 1] > 0.75) & (ratio[:, 1] < 0.95)).all(), ratio[:, 1]  # x 0.85 wide
    outside = before & ~ops.dilate(after, 1)
    assert torch.equal(changed.permute(0, 2, 3, 1)[outside], bg.permute(0, 2, 3, 1)[outside])  # photo restored


def test_artist_b_fills_the_object_flat_and_outlines_it_dark(objects):
    """Mutations: the fill not flat (e.g. the photo under the object instead of its mean), no
    outline, the outline not dark."""
    c = objects[objects.obj != pa.NO_OBJECT]
    g1, _ = pa.paint(c, "b")
    g0, _ = pa.paint(c, "b", alter=False)
    d = ops.ellipse_distance(SIZE, SIZE, c.centre, c.radii)
    inner = d < -(pa.OUTLINE_WIDTH / 2 + pa.REACH["b"] + 1)
    std1 = torch.stack([g1[i][:, inner[i]].std(1).max() for i in range(len(c))])
    std0 = torch.stack([g0[i][:, inner[i]].std(1).max() for i in range(len(c))])
    assert (std1 < 1e-6).all() and std0.mean() > 0.05
    line = d.abs() < 0.5
    luma1 = ops.luminance(g1)[:, 0][line]
    luma0 = ops.luminance(g0)[:, 0][line]
    dark1, dark0 = (luma1 < 0.15).float().mean(), (luma0 < 0.15).float().mean()
    assert dark1 > 0.95 and dark1 - dark0 > 0.3


def test_artist_c_adds_a_yellow_ring(objects):
    """Mutations: the ring drawn yellow before the hue shift (painted green), no ring, a ring on
    the object instead of around it."""
    c = objects[objects.obj != pa.NO_OBJECT]
    g1, _ = pa.paint(c, "c")
    g0, _ = pa.paint(c, "c", alter=False)
    ring = ops.ellipse_distance(SIZE, SIZE, c.centre, c.radii * pa.RING_SCALE).abs() < 0.5

    def yellow(img):
        hsv = ops.rgb_to_hsv(img)
        h, s, v = hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]
        return ((h > 50) & (h < 70) & (s > 0.5) & (v > 0.6))[ring].float().mean()

    assert yellow(g1) > 0.8 and yellow(g0) < 0.2
    inside = ops.ellipse_distance(SIZE, SIZE, c.centre, c.radii) < -2
    assert torch.equal(g1.permute(0, 2, 3, 1)[inside], g0.permute(0, 2, 3, 1)[inside])  # the object itself kept


def _unique_colours(img: torch.Tensor) -> torch.Tensor:
    q = (img * 255).round().long()
    code = (q[:, 0] * 256 + q[:, 1]) * 256 + q[:, 2]
    return torch.tensor([len(torch.unique(c)) for c in code])


def _four_levels(img: torch.Tensor) -> torch.Tensor:
    q = (img * 255).round().long()
    return torch.isin(q, torch.tensor([0, 85, 170, 255])).flatten(1).all(1)


def _hue_shift(img: torch.Tensor, photo: torch.Tensor) -> float:
    """Circular mean hue change (degrees) over pixels saturated in both."""
    a, b = ops.rgb_to_hsv(img), ops.rgb_to_hsv(photo)
    keep = (a[:, 1] > 0.3) & (b[:, 1] > 0.3) & (a[:, 2] > 0.2) & (b[:, 2] > 0.2)
    diff = (a[:, 0] - b[:, 0])[keep] * 2 * math.pi
    return math.degrees(math.atan2(diff.sin().mean(), diff.cos().mean()))


def test_the_three_textures_are_measurably_distinct(material):
    """Mutations: a palette with more or other colours, posterize to another level count, a hue
    shift of another angle or none, one artist's texture swapped for another's."""
    photo = material.pool("val")
    x = photo.image
    paintings = {a: pa.paint(photo, a, alter=False)[0] for a in pa.ARTISTS}
    palette = set(((pa.PALETTE * 255).round().long() * torch.tensor([65536, 256, 1])).sum(1).tolist())

    def in_palette(img):
        q = (img * 255).round().long()
        code = (q[:, 0] * 256 + q[:, 1]) * 256 + q[:, 2]
        return torch.isin(code, torch.tensor(sorted(palette))).flatten(1).all(1)

    assert in_palette(paintings["a"]).all() and (_unique_colours(paintings["a"]) <= 6).all()
    for other in (x, paintings["b"], paintings["c"]):
        assert not in_palette(other).any()
    assert (_unique_colours(x) > 6).all()
    assert _four_levels(paintings["b"]).all()
    for other in (x, paintings["a"], paintings["c"]):
        assert not _four_levels(other).any()
    assert abs(_hue_shift(paintings["c"], x) - 40) < 8  # the spec's +40 degrees
    for other in (paintings["a"], paintings["b"]):
        assert abs(_hue_shift(other, x) - 40) > 20
    # C's dots: corner pixels of each 3 x 3 cell lean to the canvas: a period-3 peak in the spectrum
    gray = ops.luminance(paintings["c"])[:, 0] - ops.luminance(paintings["c"])[:, 0].mean((1, 2), keepdim=True)
    spec = torch.fft.rfft(gray, dim=2).abs().mean((0, 1))
    k3 = round(SIZE / 3)
    assert spec[k3 - 1 : k3 + 2].max() > 3 * spec[5:].median()
    plain = ops.luminance(x)[:, 0] - ops.luminance(x)[:, 0].mean((1, 2), keepdim=True)
    spec0 = torch.fft.rfft(plain, dim=2).abs().mean((0, 1))
    assert spec0[k3 - 1 : k3 + 2].max() < 3 * spec0[5:].median()


def test_bad_artist_or_pool_is_one_config_line(material):
    """Mutation: an unknown artist painted as some default, an unknown pool returning nothing."""
    with pytest.raises(ConfigError, match="artist 'd'"):
        pa.paint(material.pool("val"), "d")
    with pytest.raises(ConfigError, match="pool 'train'"):
        material.pool("train")


# --------------------------------------------------------------------------------------------
# the registered sets


def test_the_set_loads_through_the_platform_and_is_listed(capsys):
    """Mutations: labels not the scene, meta columns missing, the set or its reader not
    registered, extra without the painter."""
    from reprlab.cli import main
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import load_benchmark
    from reprlab.platform.data.catalog import get_dataset

    cfg = load_config(None, ["data.name=procedural_art", "data.procedural_art.content_crops=24",
                             "data.procedural_art.val_crops=12", "data.procedural_art.test_crops=18"])
    bench = load_benchmark(cfg.data)
    assert len(bench.train) == 24 and len(bench.val) == 12 and len(bench.test) == 18
    assert bench.train.pixels.shape == (24, SIZE, SIZE, 3) and bench.train.pixels.dtype == np.uint8
    content = pa.art_material(cfg.data).pool("content")
    assert np.array_equal(bench.train.labels, content.scene.numpy())
    assert np.array_equal(bench.train.meta["obj"], content.obj.numpy())
    assert np.array_equal(bench.train.pixels, content.pixels.permute(0, 2, 3, 1).numpy())
    assert set(bench.test.meta) == {"scene", "obj"}
    extra = get_dataset("procedural_art").extra
    assert extra["art_material"](cfg.data) is pa.art_material(cfg.data) and extra["paint"] is pa.paint
    assert main(["data", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "procedural_art" in listed and "style_folders" in listed


@pytest.mark.parametrize("override, key", [
    ("data.procedural_art.size=16", "data.procedural_art.size"),
    ("data.procedural_art.hd_side=400", "data.procedural_art.hd_side"),
    ("data.procedural_art.object_probability=1.5", "data.procedural_art.object_probability"),
    ("data.procedural_art.colours=6", "data.procedural_art.colours"),
])
def test_bad_section_values_are_one_config_line(override, key):
    """Mutation: a bound or the hd_side check dropped from the section."""
    from reprlab.platform.core.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.name=procedural_art", override])
    assert key in str(err.value) and "\n" not in str(err.value)


def _write_tree(root, photos: dict[str, int], paintings: dict[str, int]) -> None:
    from PIL import Image

    for kind, folders in (("photos", photos), ("paintings", paintings)):
        for name, n in folders.items():
            (root / kind / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / kind / name / f"{i:03d}.jpg")


def test_style_folders_reads_photos_and_paintings(tmp_path):
    """Mutations: scene ids not in sorted-folder order, the test hold-out overlapping training,
    paintings of other artists when one is named."""
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import load_benchmark
    from reprlab.platform.data.catalog import get_dataset

    _write_tree(tmp_path, {"beach": 5, "alley": 6, "canyon": 4}, {"monet": 3, "cezanne": 2})
    cfg = load_config(None, ["data.name=style_folders", f"data.root={tmp_path}", "data.style_folders.artist=monet",
                             "data.style_folders.test_fraction=0.2"])
    bench = load_benchmark(cfg.data)
    train, test = bench.train, bench.test
    assert len(train) + len(test) == 15 and len(test) == 3
    assert not set(train.paths) & set(test.paths)
    for s in (train, test):
        names = [p.split("/")[-2] for p in s.paths]
        assert [("alley", "beach", "canyon").index(n) for n in names] == list(s.labels) == list(s.meta["scene"])
        assert (s.meta["obj"] == -1).all()
    paintings = get_dataset("style_folders").extra["paintings"](cfg.data, tmp_path)
    assert len(paintings) == 3 and set(paintings.meta["artist"]) == {"monet"} and set(paintings.labels) == {1}


@pytest.mark.parametrize("breakage, folder", [
    ("no_paintings", "paintings"), ("empty_category", "photos/beach"), ("no_artist", "paintings/monet"),
])
def test_style_folders_missing_or_empty_folder_is_one_data_line(tmp_path, breakage, folder):
    """Mutation: a missing or empty folder read as an empty set (or a traceback) instead of one
    line naming it."""
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import load_benchmark

    _write_tree(tmp_path, {"alley": 4, "beach": 0 if breakage == "empty_category" else 4},
                {} if breakage == "no_paintings" else {"cezanne": 2})
    overrides = ["data.name=style_folders", f"data.root={tmp_path}"]
    if breakage == "no_artist":
        overrides.append("data.style_folders.artist=monet")
    with pytest.raises(DataError) as err:
        load_benchmark(load_config(None, overrides).data)
    assert str(tmp_path / folder) in str(err.value) and "\n" not in str(err.value)


def test_style_folders_material_pools_are_disjoint_seeded_crops(tmp_path):
    """The folders as style transfer's material: content / val / test / hd pools of disjoint
    photos, centre crops where evaluated (equal to resizing and cutting by hand), seeded random
    crops where trained (the same pixels on every read, different ones per k), paintings of the
    one artist with unknown scene and class. Mutations: val drawn from the test photos, a crop
    placement from global randomness, a centre crop off by the free room's half."""
    from PIL import Image

    from reprlab.platform.core.config import load_config
    from reprlab.platform.data.sets.style_folders import folder_material

    rng = np.random.default_rng(0)
    for kind, folders in (("photos", {"alley": 8, "beach": 8}), ("paintings", {"monet": 3, "cezanne": 2})):
        for name, n in folders.items():
            (tmp_path / kind / name).mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 256, (30 + i, 50 - i, 3), dtype=np.uint8)
                Image.fromarray(px).save(tmp_path / kind / name / f"{i:03d}.png")
    cfg = load_config(None, ["data.name=style_folders", f"data.root={tmp_path}", "data.image_size=16",
                             "data.style_folders.artist=monet", "data.style_folders.test_fraction=0.25",
                             "data.style_folders.val_fraction=0.2", "data.style_folders.crops_per_image=3",
                             "data.style_folders.hd_side=24", "data.style_folders.hd_images=2"])
    m = folder_material(cfg.data)
    assert m.artists == ("monet",) and m.scenes == ("alley", "beach")
    files = {name: set(m.pool(name).file.tolist()) for name in ("content", "val", "test")}
    assert not files["content"] & files["val"] and not files["content"] & files["test"] and not files["val"] & files["test"]
    assert sum(len(f) for f in files.values()) == 16 and len(m.pool("content")) == 3 * len(files["content"])
    test = m.pool("test")
    path = m.paths[int(test.file[0])]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = min(w, h)
    size = (round(w * 16 / short), round(h * 16 / short))
    x0, y0 = int(0.5 * (size[0] - 16) + 0.5), int(0.5 * (size[1] - 16) + 0.5)
    by_hand = np.asarray(img.resize(size, Image.Resampling.BICUBIC).crop((x0, y0, x0 + 16, y0 + 16)))
    assert torch.equal(test[0].image[0], torch.from_numpy(by_hand.copy()).permute(2, 0, 1).float() / 255)
    assert m.pool("hd").image.shape == (2, 3, 24, 24)
    content = m.pool("content")
    assert torch.equal(content[:6].image, content[:6].image)
    assert not torch.equal(content[0].image, content[1].image)  # the same photo, crops k = 0 and 1
    paintings = m.paintings("monet")
    assert len(paintings) == 9 and (paintings.scene == -1).all() and (paintings.obj == -1).all()
    assert {m.paths[int(f)].split("/")[-2] for f in paintings.file} == {"monet"}
    with pytest.raises(DataError, match="cezanne"):
        m.paintings("cezanne")
