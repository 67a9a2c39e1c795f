"""The correspondence data: the warps, the embedded ``synthcorr`` pairs and their exact ground
truth, the stereo sanity pair, and the PF-PASCAL / PF-WILLOW readers on a fabricated tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.data.sets import synthcorr as sc
from reprlab.platform.data.sets.pf_pascal import read_pf_pascal, read_pf_willow
from reprlab.platform.data.warps import (
    SmoothWarp,
    WarpSpec,
    compose,
    pixel_grid,
    random_warp,
    sample,
    to_normalized,
    to_pixels,
)

SIDE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster than two contending ones (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def truth() -> sc.PairTruth:
    return sc.draw_pair_truth(sc.build_material(SIDE, 0, (), "test"), 48, _gen(3), balanced=True)


@pytest.fixture(scope="module")
def plain() -> sc.PairTruth:
    return sc.draw_pair_truth(sc.build_material(SIDE, 0, (), "test"), 48, _gen(3), plain=True, balanced=True)


def _at(field: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``field`` (N x C x H x W) read at p + flow(p) for every pixel p (zeros outside)."""
    grid = pixel_grid(SIDE, SIDE, len(flow))
    target = to_normalized(to_pixels(grid, SIDE) + flow.permute(0, 2, 3, 1), SIDE)
    return sample(field.float(), target, mode)


def _inside(flow: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Pixels of A whose target lies inside B (``margin`` pixels from its edge)."""
    target = to_pixels(pixel_grid(SIDE, SIDE, len(flow)), SIDE) + flow.permute(0, 2, 3, 1)
    return ((target >= margin) & (target <= SIDE - margin)).all(-1)


# --------------------------------------------------------------------------------------------
# warps


def test_warp_conventions_identity_composition_and_pixel_centres():
    grid = pixel_grid(4, 4)
    assert torch.allclose(to_pixels(grid, 4)[0, :, 0], torch.tensor([0.5, 1.5, 2.5, 3.5]))  # centres at i + 0.5
    n = 3
    ident = SmoothWarp(torch.eye(2).expand(n, 2, 2), torch.zeros(n, 2), torch.zeros(n, 2, 4, 4))
    img = torch.rand(n, 2, 5, 7, generator=_gen(0))
    g = pixel_grid(5, 7, n)
    assert torch.allclose(sample(img, ident(g)), img, atol=1e-5)  # identity warp reproduces the image
    spec = WarpSpec(0.04, 30, (0.8, 1.2), 0.1)
    f, h = random_warp(n, spec, _gen(1)), random_warp(n, spec, _gen(2))
    pts = torch.rand(n, 10, 2, generator=_gen(4)) * 2 - 1
    assert torch.allclose(compose(f, h)(pts), f(h(pts)))  # rightmost first
    assert not torch.allclose(compose(f, h)(pts), compose(h, f)(pts), atol=1e-3)
    # dense maps and point evaluation agree: the warp at pixel centres equals its map there
    assert torch.allclose(f(g)[:, 2, 3], f(g[:, 2, 3][:, None])[:, 0], atol=1e-6)


# --------------------------------------------------------------------------------------------
# synthcorr: determinism, exactness, keypoints, photos, difficulty


def _small(seed: int):
    return sc.load_synthcorr.__wrapped__(SIDE, seed, val_pairs=6, test_pairs=8, train_images=2)


def test_same_seed_same_bytes_another_seed_differs():
    a, b, c = _small(0), _small(0), _small(1)
    for split in ("train", "val", "test"):
        x, y, z = getattr(a, split), getattr(b, split), getattr(c, split)
        assert x.pixels.tobytes() == y.pixels.tobytes()
        assert all(x.dense[k].values.tobytes() == y.dense[k].values.tobytes() for k in x.dense)
        assert x.pixels.tobytes() != z.pixels.tobytes()
    assert a.test.target.pixels.tobytes() == b.test.target.pixels.tobytes()
    m = sc.build_material(SIDE, 0, (), "train")
    first, again = sc.draw_pairs(m, 5, _gen(7)), sc.draw_pairs(m, 5, _gen(7))
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert not torch.equal(first[0], sc.draw_pairs(m, 5, _gen(8))[0])
    t = sc.draw_pair_truth(m, 5, _gen(7))  # the same generator state gives the same images
    assert torch.equal(t.img_a, first[0]) and torch.equal(t.img_b, first[1])


def test_training_pairs_carry_no_ground_truth():
    m = sc.build_material(SIDE, 0, (), "train")
    out = sc.draw_pairs(m, 4, _gen(0))
    assert isinstance(out, tuple) and len(out) == 3
    img_a, img_b, cat = out
    assert img_a.shape == img_b.shape == (4, 3, SIDE, SIDE) and cat.shape == (4,) and cat.dtype == torch.int64
    assert 0 <= img_a.min() and img_a.max() <= 1
    assert set(cat.tolist()) <= set(m.categories.tolist())


def test_flow_maps_a_foreground_onto_b_foreground(truth):
    # B's mask read at p + flow(p) (bilinear, then > 0.5) against A's mask, where the target is in
    # B. Both are the template's alpha at the same template point, except that B's is
    # interpolated from its pixel grid: only pixels whose alpha is within that interpolation
    # error of 0.5 (a thin band along the outline) can differ, so IoU stays close to 1.
    valid = _inside(truth.flow)
    warped = _at(truth.mask_b[:, None], truth.flow)[:, 0] > 0.5
    a = truth.mask_a & valid
    inter = (warped & a).sum((1, 2)).float()
    union = (warped & valid | a).sum((1, 2)).float()
    iou = inter / union
    assert iou.mean() > 0.93 and iou.min() > 0.8, iou


def test_part_brightness_of_a_equals_b_at_p_plus_flow(plain, truth):
    # plain renders the part-brightness channel alone, with the same geometry as truth
    assert torch.equal(plain.flow, truth.flow) and torch.equal(plain.mask_a, truth.mask_a)
    a = plain.img_a[:, 0]
    b_at = _at(plain.img_b[:, :1], plain.flow)[:, 0]
    # the interior: A's foreground away from the outline and from part boundaries, target in B
    parts = plain.parts_a[:, None].float()
    same = F.max_pool2d(parts, 3, 1, 1) == -F.max_pool2d(-parts, 3, 1, 1)  # one part in the 3x3
    interior = (same[:, 0] & (plain.parts_a >= 0) & _inside(plain.flow, 1.0))
    assert interior.sum() > 2000
    err = (a - b_at)[interior].abs()
    assert err.mean() < 0.01 and (err < 0.05).float().mean() > 0.97, (err.mean(), (err < 0.05).float().mean())
    # the template point each pixel shows agrees everywhere (a smooth field: interpolation error only)
    canon = (_at(plain.canonical_b, plain.flow) - plain.canonical_a).norm(dim=1)[_inside(plain.flow, 1.0)]
    assert canon.max() < 0.005, canon.max()  # measured 6e-4


def test_keypoints_lie_on_a_and_move_with_the_flow(truth):
    n, k, _ = truth.keypoints_a.shape
    assert k == sc.KEYPOINTS
    col, row = (truth.keypoints_a - 0.5).round().long().unbind(-1)
    rows = torch.arange(n)[:, None]
    assert truth.mask_a[rows, row, col].all()
    assert torch.allclose(truth.keypoints_a, torch.stack([col, row], -1).float() + 0.5)
    flow_at = truth.flow.permute(0, 2, 3, 1)[rows, row, col]
    assert torch.allclose(truth.keypoints_b, truth.keypoints_a + flow_at, atol=1e-4)
    assert ((truth.keypoints_b >= 0) & (truth.keypoints_b <= SIDE)).all()
    assert all(len(set(map(tuple, kp.tolist()))) == k for kp in truth.keypoints_a)  # distinct
    # the target box holds B's foreground, hence every target keypoint up to the outline's band
    box = truth.box_b[:, None]
    inside = (truth.keypoints_b[..., 0] >= box[..., 0] - 1) & (truth.keypoints_b[..., 0] <= box[..., 2] + 1)
    assert inside.float().mean() > 0.99


def test_train_and_test_photos_are_disjoint():
    assert not set(sc.PHOTO_SPLITS["train"]) & set(sc.PHOTO_SPLITS["test"])
    bench = _small(0)
    train_photos = set(bench.train.meta["photos"].ravel()) | set(bench.val.meta["photos"].ravel())
    test_photos = set(bench.test.meta["photos"].ravel())
    assert not train_photos & test_photos
    assert {sc.PHOTOS[i] for i in test_photos} <= set(sc.PHOTO_SPLITS["test"])


def test_identity_and_raw_pixel_matching_stay_weak_on_the_test_pairs():
    test = sc.load_synthcorr(SIDE, 0).test  # the shipped default: 400 pairs
    kp, tk = test.dense["keypoints"].values, test.dense["target_keypoints"].values
    box = test.meta["target_box"]
    limit = 0.1 * np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])[:, None]
    identity = (np.linalg.norm(kp - tk, axis=-1) <= limit).mean()
    assert 0.15 < identity < 0.35, identity  # the spec measured 0.25
    # raw 3x3-pixel nearest neighbour of each keypoint of A over all of B
    a = torch.from_numpy(test.pixels).permute(0, 3, 1, 2).float() / 255
    b = torch.from_numpy(test.target.pixels).permute(0, 3, 1, 2).float() / 255
    pa, pb = F.unfold(F.pad(a, (1,) * 4, mode="replicate"), 3), F.unfold(F.pad(b, (1,) * 4, mode="replicate"), 3)
    idx = torch.from_numpy((kp[..., 1] - 0.5).round() * SIDE + (kp[..., 0] - 0.5).round()).long()
    query = torch.gather(pa, 2, idx[:, None].expand(-1, pa.shape[1], -1))
    best = torch.cdist(query.transpose(1, 2), pb.transpose(1, 2)).argmin(-1)
    pred = torch.stack([best % SIDE, best // SIDE], -1).numpy() + 0.5
    nn = (np.linalg.norm(pred - tk, axis=-1) <= limit).mean()
    assert nn < identity, (nn, identity)  # the spec measured 0.05: appearance alone does not match


def test_the_set_loads_through_the_platform_and_holds_out_glyphs():
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import load_benchmark

    cfg = load_config(None, ["data.name=synthcorr", "data.synthcorr.val_pairs=13", "data.synthcorr.test_pairs=6",
                             "data.synthcorr.train_images=2", "data.synthcorr.held_out=[R, '5']"])
    bench = load_benchmark(cfg.data)  # check_benchmark: labels everywhere, A and B of one size
    held = {sc.CATEGORIES.index("R"), sc.CATEGORIES.index("5")}
    assert set(bench.test.labels) <= held and not held & set(bench.train.labels) and not held & set(bench.val.labels)
    test = bench.test
    assert test.pixels.shape == test.target.pixels.shape == (6, SIDE, SIDE, 3)
    assert test.dense["flow"].values.shape == (6, 2, SIDE, SIDE)
    assert test.dense["keypoints"].values.shape == test.dense["target_keypoints"].values.shape == (6, 20, 2)
    assert {d.kind for d in test.dense.values()} == {"flow", "mask", "keypoints"}
    assert test.meta["target_box"].shape == (6, 4) and set(test.meta["category"]) <= {"R", "5"}
    with pytest.raises(ConfigError, match="held_out"):
        load_config(None, ["data.name=synthcorr", "data.synthcorr.held_out=[Z]"])


# --------------------------------------------------------------------------------------------
# the stereo pair


def test_stereo_pair_matches_left_x_to_right_x_minus_d():
    left, right, disp = sc.stereo_motorcycle(0.25)
    assert left.shape == right.shape and left.dtype == np.uint8 and disp.shape == left.shape[:2]
    valid = np.isfinite(disp)
    assert 0.8 < valid.mean() < 0.99
    h, w = disp.shape
    l = torch.from_numpy(left).permute(2, 0, 1)[None].float()
    r = torch.from_numpy(right).permute(2, 0, 1)[None].float()
    grid = to_pixels(pixel_grid(h, w, 1), h, w)

    def error(shift: np.ndarray) -> float:
        moved = grid.clone()
        moved[..., 0] -= torch.from_numpy(np.nan_to_num(shift)).float()
        seen = sample(r, to_normalized(moved, h, w))
        inside = ((moved[..., 0] > 1) & (moved[..., 0] < w - 1))[0].numpy() & valid
        return float((seen - l).abs().mean(1)[0].numpy()[inside].mean())

    matched, identity, wrong_sign = error(disp), error(np.zeros_like(disp)), error(-disp)
    assert matched < 0.5 * identity and matched < 0.5 * wrong_sign, (matched, identity, wrong_sign)
    flow = sc.disparity_flow(disp)
    assert np.array_equal(np.isnan(flow[0]), ~valid) and np.allclose(flow[0][valid], -disp[valid])


# --------------------------------------------------------------------------------------------
# PF-PASCAL / PF-WILLOW readers on a fabricated tree


def _image(path, size=(20, 16)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)


def _pascal_tree(root, bad_row=None, missing=False):
    base = root / "PF-dataset-PASCAL"
    names = [f"2008_00{i}.jpg" for i in range(4)]
    for n in names[: 3 if missing else 4]:
        _image(base / "JPEGImages" / n)
    head = "source_image,target_image,class,XA,YA,XB,YB\n"
    img = [f"PF-dataset-PASCAL/JPEGImages/{n}" for n in names]
    rows = [f"{img[0]},{img[1]},13,1;5;9,2;6;4,3;7;8,1;1;2\n", f"{img[2]},{img[3]},1,4.5,3.5,6.5,2.5\n"]
    if bad_row is not None:
        rows[1] = bad_row
    for split in ("val", "test"):
        (base / f"{split}_pairs_pf_pascal.csv").write_text(head + "".join(rows))
    (base / "trn_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,flip\n"
        f"PF-dataset-PASCAL/JPEGImages/{names[0]},PF-dataset-PASCAL/JPEGImages/{names[2]},13,1\n")


def test_pf_pascal_reader_reads_pairs_keypoints_and_boxes(tmp_path):
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import load_benchmark

    _pascal_tree(tmp_path)
    bench = load_benchmark(load_config(None, ["data.name=pf_pascal", f"data.root={tmp_path}"]).data)
    assert bench.name == "pf_pascal" and len(bench.test) == 2 and len(bench.train) == 1
    test = bench.test
    assert list(test.labels) == [13, 1] and list(test.meta["category"]) == ["horse", "aeroplane"]
    kp, tk = test.dense["keypoints"].values, test.dense["target_keypoints"].values
    assert kp.shape == (2, 20, 2) and np.allclose(kp[0, :3], [[1, 2], [5, 6], [9, 4]])
    assert np.isnan(kp[0, 3:]).all() and list(test.meta["num_keypoints"]) == [3, 1]
    assert np.allclose(test.meta["target_box"][0], [3, 1, 8, 2])
    assert np.allclose(test.meta["box"][1], [4.5, 3.5, 4.5, 3.5])
    assert test.paths[0].endswith("PF-dataset-PASCAL/JPEGImages/2008_000.jpg")
    assert test.target.paths[1].endswith("2008_003.jpg")
    assert "keypoints" not in bench.train.dense and list(bench.train.meta["flip"]) == [1]
    assert read_pf_pascal(tmp_path / "PF-dataset-PASCAL").test.paths[0] == test.paths[0]  # root may be the folder


@pytest.mark.parametrize("bad, fragment", [
    ("PF-dataset-PASCAL/JPEGImages/2008_002.jpg,PF-dataset-PASCAL/JPEGImages/2008_003.jpg,1,4;5,3,6,2\n",
     "malformed line 3 in .*_pairs_pf_pascal.csv: XA, YA, XB, YB hold 2, 1, 1, 1"),
    ("PF-dataset-PASCAL/JPEGImages/2008_002.jpg,PF-dataset-PASCAL/JPEGImages/2008_003.jpg,21,4,3,6,2\n",
     "malformed line 3 in .*: class '21' is not in 1-20"),
    ("PF-dataset-PASCAL/JPEGImages/2008_002.jpg,PF-dataset-PASCAL/JPEGImages/2008_003.jpg,1,4,x,6,2\n",
     "malformed line 3 .*column YA holds a value that is not a number"),
])
def test_pf_pascal_bad_row_is_one_line_naming_file_and_line(tmp_path, bad, fragment):
    _pascal_tree(tmp_path, bad_row=bad)
    with pytest.raises(DataError, match=fragment) as err:
        read_pf_pascal(tmp_path)
    assert "\n" not in str(err.value)


def test_pf_pascal_missing_image_or_list_is_one_line(tmp_path):
    _pascal_tree(tmp_path / "a", missing=True)
    missing = r"1 of 2 images listed in .*_pairs_pf_pascal.csv are missing, first: .*2008_003.jpg"
    with pytest.raises(DataError, match=missing) as err:
        read_pf_pascal(tmp_path / "a")
    assert "\n" not in str(err.value)
    _pascal_tree(tmp_path / "b")
    (tmp_path / "b" / "PF-dataset-PASCAL" / "test_pairs_pf_pascal.csv").unlink()
    with pytest.raises(DataError, match="PF-PASCAL test pair list not found"):
        read_pf_pascal(tmp_path / "b")


def test_pf_willow_reader_reads_positional_columns(tmp_path):
    base = tmp_path / "PF-dataset"
    for n in ("a.png", "b.png"):
        _image(base / "duck(S)" / n)
    xa, ya, xb, yb = (np.arange(10) + o for o in (0, 100, 200, 300))
    header = "imageA,imageB," + ",".join(f"c{i}" for i in range(40))
    row = "PF-dataset/duck(S)/a.png,PF-dataset/duck(S)/b.png," + ",".join(map(str, np.concatenate([xa, ya, xb, yb])))
    (base / "test_pairs_pf.csv").write_text(header + "\n" + row + "\n")
    bench = read_pf_willow(tmp_path)
    test = bench.test
    assert list(test.labels) == [3] and test.meta["category"][0] == "duck(S)"
    assert np.allclose(test.dense["keypoints"].values[0, 2], [2, 102])
    assert np.allclose(test.dense["target_keypoints"].values[0, 9], [209, 309])
    assert np.allclose(test.meta["target_box"][0], [200, 300, 209, 309])
    assert "keypoints" not in bench.train.dense
    (base / "test_pairs_pf.csv").write_text(header + "\n" + row + "\n" + row.rsplit(",", 1)[0] + "\n")
    with pytest.raises(DataError, match="malformed line 3 in .*test_pairs_pf.csv: expected 42 fields"):
        read_pf_willow(tmp_path)
