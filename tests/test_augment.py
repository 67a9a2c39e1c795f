"""Joint augmentation (reprlab/platform/data/augment.py): every entry of a sample gets the same
crop and flip. Each test names, in a comment, the mutation of augment.py it is there to catch."""

import math

import pytest
import torch
import torch.nn.functional as F

from reprlab.platform.data.augment import (
    JointAugment,
    augment_sample,
    warp_flow,
    warp_images,
    warp_keypoints,
    warp_masks,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _centres(n: int) -> torch.Tensor:
    """Pixel-centre coordinates i + 0.5 of a side of n pixels."""
    return torch.arange(n, dtype=torch.float64) + 0.5


def test_draw_is_a_function_of_the_generator():
    # mutation: draw() ignores ``gen`` (global RNG) -> two equal seeds disagree;
    # mutation: draw() returns fixed maps -> two seeds agree
    aug = JointAugment(32)
    a, b, c = aug.draw(8, _gen(0)), aug.draw(8, _gen(0)), aug.draw(8, _gen(1))
    assert a.shape == (8, 2, 3) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_draw_stays_in_its_ranges():
    # mutation: the centre drawn over the whole image (crop leaves it), or the area / aspect
    # ranges not honoured, or the flip applied always / never
    aug = JointAugment(32, scale=(0.3, 0.9), ratio=(0.5, 2.0))
    t = aug.draw(4000, _gen(2)).double()
    w, h, cx, cy = t[:, 0, 0].abs(), t[:, 1, 1], t[:, 0, 2], t[:, 1, 2]
    assert (t[:, 0, 1] == 0).all() and (t[:, 1, 0] == 0).all()
    assert (w <= 1).all() and (h <= 1).all()
    assert (cx.abs() + w <= 1 + 1e-6).all() and (cy.abs() + h <= 1 + 1e-6).all(), "crop inside the image"
    free = (w < 1) & (h < 1)  # not clipped: area and aspect as drawn
    assert free.float().mean() > 0.5
    assert ((w * h)[free] >= 0.3 - 1e-5).all() and ((w * h)[free] <= 0.9 + 1e-5).all()
    assert ((w / h)[free] >= 0.5 - 1e-5).all() and ((w / h)[free] <= 2.0 + 1e-5).all()
    assert 0.45 < (t[:, 0, 0] < 0).float().mean() < 0.55, "flip with p = 0.5"
    plain = JointAugment(32, scale=(0.3, 0.9), ratio=(0.5, 2.0), flip=False).draw(4000, _gen(2))
    assert (plain[:, 0, 0] > 0).all()
    assert torch.equal(plain[:, 0, 0], t[:, 0, 0].abs().float()), "toggling flip keeps the crops"


def test_identity_and_a_pure_flip_are_exact():
    # mutation: affine_grid / grid_sample with align_corners=True (or mixed) -> identity blurs;
    # mutation: the flow's x component not negated under a flip
    size, n = 24, 3
    aug = JointAugment(size)
    x = torch.rand(n, 3, size, size, generator=_gen(3))
    m = torch.rand(n, size, size, generator=_gen(4)) > 0.5
    flow = torch.randn(n, 2, size, size, generator=_gen(5))
    kp = torch.rand(n, 7, 2, generator=_gen(6)) * size
    eye = aug.identity(n)
    # float32 grid coordinates carry ~size * eps32 ~ 3e-6 px of rounding (values in [0, 1]);
    # in float64 the identity is exact to rounding
    torch.testing.assert_close(warp_images(x, eye, size), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(warp_images(x.double(), eye, size), x.double(), rtol=0, atol=1e-12)
    assert torch.equal(warp_masks(m, eye, size), m)
    torch.testing.assert_close(warp_flow(flow, eye, size), flow, rtol=0, atol=1e-5)
    kp2, vis = warp_keypoints(kp, eye, (size, size), size)
    torch.testing.assert_close(kp2, kp, rtol=0, atol=1e-5)
    assert vis.all()

    flip = eye.clone()
    flip[:, 0, 0] = -1
    torch.testing.assert_close(warp_images(x, flip, size), x.flip(-1), rtol=0, atol=1e-5)
    assert torch.equal(warp_masks(m, flip, size), m.flip(-1))
    torch.testing.assert_close(warp_flow(flow, flip, size), flow.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1),
                               rtol=0, atol=1e-5)
    kp2, _ = warp_keypoints(kp, flip, (size, size), size)
    torch.testing.assert_close(kp2, torch.stack([size - kp[..., 0], kp[..., 1]], -1), rtol=0, atol=1e-5)


def test_masks_follow_images():
    # mutation: the mask warped unflipped (|theta[:, 0, 0]|) or with another sample's theta.
    # A white rectangle's bilinear warp thresholded at 0.5 switches where its nearest-neighbour
    # warp does (the rectangle's edges lie on pixel boundaries), except at the corners, where
    # the product of two ramps crosses 0.5 differently: so equality off a 1-pixel band.
    n, hh, ww, size = 32, 48, 64, 40
    g = _gen(7)
    x0 = torch.randint(0, ww // 2, (n, 1, 1), generator=g)
    x1 = x0 + torch.randint(6, ww // 2, (n, 1, 1), generator=g)
    y0 = torch.randint(0, hh // 2, (n, 1, 1), generator=g)
    y1 = y0 + torch.randint(6, hh // 2, (n, 1, 1), generator=g)
    xs, ys = torch.arange(ww).view(1, 1, ww), torch.arange(hh).view(1, hh, 1)
    mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    theta = JointAugment(size, scale=(0.3, 1.0)).draw(n, _gen(8))
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any(), "both flipped and plain samples"

    img = warp_images(mask.float().unsqueeze(1), theta, size).squeeze(1) > 0.5
    wm = warp_masks(mask, theta, size)
    assert wm.dtype == torch.bool and wm.flatten(1).any(1).float().mean() > 0.7
    fm = wm.float().unsqueeze(1)
    edge = (F.max_pool2d(fm, 3, 1, 1) != -F.max_pool2d(-fm, 3, 1, 1)).squeeze(1)  # 3x3 not uniform
    assert not ((img != wm) & ~edge).any()


def _blobs(kp: torch.Tensor, hh: int, ww: int, sigma: float) -> torch.Tensor:
    """N x K x H x W: channel k a unit-peak Gaussian at keypoint k (pixel centres at i + 0.5)."""
    dx = _centres(ww).view(1, 1, 1, ww) - kp[..., 0, None, None].double()
    dy = _centres(hh).view(1, 1, hh, 1) - kp[..., 1, None, None].double()
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).float()


def test_keypoints_follow_images():
    # mutations: the flip not applied to keypoints (|A| for A), A for A^-1 (wrong scale), the
    # half-pixel convention off ((2x + 1) / W - 1), W and H swapped, visibility always True.
    # Each keypoint gets its own channel holding a Gaussian dot at it; the warped dot's centroid
    # must be the warped keypoint. For a dot far from the output's border (its 1-pixel rim below
    # 1e-3: centre > 3.7 sigma inside) the centroid of a bilinearly resampled Gaussian of sigma
    # >= 1.9 output pixels is exact to ~0.01 px; 0.1 px leaves margin and still rejects the
    # half-pixel error (>= 0.3 output px here). A dot absent from the output (peak < 1e-3) is
    # far outside the crop, so its keypoint must be invisible.
    n, k, hh, ww, size, sigma = 32, 8, 48, 64, 40, 2.5
    kp = torch.rand(n, k, 2, generator=_gen(9)) * torch.tensor([ww, hh])
    theta = JointAugment(size, scale=(0.25, 0.5)).draw(n, _gen(10))
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any()

    dots = warp_images(_blobs(kp, hh, ww, sigma), theta, size).double()  # N x K x size x size
    kp2, vis = warp_keypoints(kp, theta, (hh, ww), size)
    assert kp2.shape == (n, k, 2) and vis.shape == (n, k) and vis.dtype == torch.bool

    rim = torch.ones(size, size, dtype=torch.bool)
    rim[1:-1, 1:-1] = False
    peak = dots.flatten(2).amax(-1)
    inside = (peak > 0.5) & (dots[..., rim].amax(-1) < 1e-3)
    outside = peak < 1e-3
    assert inside.sum() >= 20 and outside.sum() >= 20, "both cases exercised"
    mass = dots.sum((-2, -1))
    cx = (dots.sum(-2) * _centres(size)).sum(-1) / mass
    cy = (dots.sum(-1) * _centres(size)).sum(-1) / mass
    centroid = torch.stack([cx, cy], -1).float()
    assert (kp2[inside] - centroid[inside]).abs().max() < 0.1
    assert vis[inside].all()
    assert not vis[outside].any()


def _waves(seed: int, comps: int = 6):
    """A smooth random image as a sum of sinusoids with periods of 16-32 px: its value anywhere
    (so a translated copy is exact) and the bound on bilinear interpolation error at unit pixel
    spacing, sum |a| |k|^2 / 8 (|f_xx| + |f_yy| <= |a| |k|^2 per sinusoid)."""
    g = _gen(seed)
    period = 16 + 16 * torch.rand(comps, generator=g, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(comps, generator=g, dtype=torch.float64)
    kvec = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * (2 * math.pi / period)[:, None]
    phase = 2 * math.pi * torch.rand(comps, generator=g, dtype=torch.float64)
    amp = torch.rand(comps, generator=g, dtype=torch.float64) + 0.5
    amp = amp / amp.sum()

    def image(n: int, hh: int, ww: int, shift=(0.0, 0.0)) -> torch.Tensor:
        x = _centres(ww).view(1, ww, 1) - shift[0]
        y = _centres(hh).view(hh, 1, 1) - shift[1]
        v = (amp * torch.sin(x * kvec[:, 0] + y * kvec[:, 1] + phase)).sum(-1)
        return v.float().expand(n, 1, hh, ww).clone()

    return image, float((amp * (kvec**2).sum(-1)).sum() / 8)


def _flow_residual(flow_fn=warp_flow) -> float:
    """Max |A' - B'(p + f'(p))| in the interior, where B is A translated by d and the flow d is
    warped together with both images (non-square input, output size unlike either side)."""
    n, hh, ww, size, d = 16, 48, 64, 40, (4.5, -4.0)
    image, _ = _waves(11)
    a, b = image(n, hh, ww), image(n, hh, ww, shift=d)  # B(p + d) = A(p)
    flow = torch.tensor(d).view(1, 2, 1, 1).expand(n, 2, hh, ww).clone()
    theta = JointAugment(size, scale=(0.3, 0.7)).draw(n, _gen(12))
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any()
    a2, b2, f2 = warp_images(a, theta, size), warp_images(b, theta, size), flow_fn(flow, theta, size)
    px = torch.stack(torch.meshgrid(_centres(size), _centres(size), indexing="xy"), 0).float()  # 2 x S x S (x, y)
    target = px + f2  # where each output pixel's match sits in B'
    back = F.grid_sample(b2, (2 * target / size - 1).permute(0, 2, 3, 1), align_corners=False)
    # interior: 2 px off A''s border (zero-padding rim) and the match 1 px inside B''s border
    ok = ((target >= 1) & (target <= size - 1)).all(1)
    ok[:, :2], ok[:, -2:], ok[:, :, :2], ok[:, :, -2:] = False, False, False, False
    assert ok.float().mean() > 0.3
    return float((a2 - back).squeeze(1)[ok].abs().max())


def test_flow_follows_images():
    # mutations: the flow's x component not negated under a flip; vectors not converted from
    # input to output pixels (A^-1 alone, or W and H swapped). Tolerance: the residual is three
    # bilinear interpolations of a smooth image, A -> A', B -> B' (each <= e, the bound at input
    # spacing) and B' at p + f' (carries B''s error, plus the bound at output spacing, at most
    # max(H, W) / size input pixels: e * (64 / 40)^2), so <= e * (2 + 2.56) ~ 0.04 for values of
    # amplitude <= 1; the mutations misplace matches by >= 0.5 input px, i.e. errors of ~0.1-1.
    _, e = _waves(11)
    tol = e * (2 + (64 / 40) ** 2)
    assert tol < 0.1
    assert _flow_residual() < tol


@pytest.mark.parametrize("mutant", ["x sign kept", "no unit conversion", "W and H swapped"])
def test_flow_check_rejects_wrong_flows(mutant):
    # the flow check itself must fail for the classic mistakes (built here from the right flow)
    def wrong(flow, theta, size):
        if mutant == "x sign kept":
            t = theta.clone()
            t[:, 0, 0] = t[:, 0, 0].abs()
            return warp_flow(flow, t, size)  # the field is constant: only the vectors change
        f = warp_flow(flow, theta, size)
        hh, ww = flow.shape[-2:]
        s = torch.tensor([ww, hh]) / size if mutant == "no unit conversion" else torch.tensor([ww / hh, hh / ww])
        return f * s.view(1, 2, 1, 1)

    _, e = _waves(11)
    assert _flow_residual(wrong) > 2 * e * (2 + (64 / 40) ** 2)


def test_batch_equals_per_sample():
    # mutation: one sample's map used for the whole batch in some kind (e.g. the flow's matrix
    # or the keypoints' inverse taken from theta[0], broadcast)
    n, hh, ww, size = 6, 48, 64, 32
    g = _gen(13)
    batch = {
        "image": torch.rand(n, 3, hh, ww, generator=g),
        "target": torch.rand(n, 1, hh, ww, generator=g),
        "seg": torch.randint(0, 21, (n, hh, ww), generator=g),
        "flow": torch.randn(n, 2, hh, ww, generator=g) * 3,
        "kp": torch.rand(n, 5, 2, generator=g) * torch.tensor([ww, hh]),
        "kp_visible": torch.rand(n, 5, generator=g) > 0.2,
        "cls": torch.arange(n),
    }
    kinds = {"image": "image", "target": "image", "seg": "mask", "flow": "flow", "kp": "keypoints", "cls": "label"}
    theta = JointAugment(size, scale=(0.3, 1.0)).draw(n, _gen(14))
    full = augment_sample(batch, theta, size, kinds)
    parts = [augment_sample({k: v[i : i + 1] for k, v in batch.items()}, theta[i : i + 1], size, kinds) for i in range(n)]
    assert set(full) == set(batch)
    for key, value in full.items():
        torch.testing.assert_close(value, torch.cat([p[key] for p in parts]), rtol=0, atol=1e-5)
    assert full["image"].shape == (n, 3, size, size) and full["seg"].shape == (n, size, size)
    assert full["seg"].dtype == torch.int64 and full["kp_visible"].dtype == torch.bool
    assert torch.equal(full["cls"], batch["cls"])
    assert not (full["kp_visible"] & ~batch["kp_visible"]).any(), "input visibility carried"


def test_masks_keep_dtype_and_values():
    # mutation: masks not restored to their dtype, or 64-bit labels sampled in float32
    # (2**40 + 1 is not a float32); nearest neighbour never invents a value
    theta = JointAugment(20).draw(4, _gen(15))
    labels = torch.tensor([0, 3, 2**40 + 1])
    for m in [torch.rand(4, 32, 32, generator=_gen(16)) > 0.5,
              torch.randint(0, 255, (4, 32, 32), generator=_gen(17), dtype=torch.uint8),
              labels[torch.randint(0, 3, (4, 32, 32), generator=_gen(18))],
              torch.rand(4, 32, 32, generator=_gen(19))]:
        out = warp_masks(m, theta, 20)
        assert out.dtype == m.dtype and out.shape == (4, 20, 20)
        got, have = (out, m) if m.is_floating_point() else (out.long(), m.long())
        assert torch.isin(got, have).all()


def test_augment_sample_refuses_unnamed_entries():
    # mutation: an entry without a kind passed through silently (a target left unaugmented)
    batch = {"image": torch.rand(2, 3, 8, 8), "depth": torch.rand(2, 1, 8, 8)}
    theta = JointAugment(8).identity(2)
    with pytest.raises(ValueError, match="depth"):
        augment_sample(batch, theta, 8, {"image": "image"})
    with pytest.raises(ValueError, match="unknown kinds"):
        augment_sample(batch, theta, 8, {"image": "image", "depth": "dense"})


def test_class_balanced_batches_are_augmented_the_same_on_any_number_of_workers():
    """Rank r of W holds columns [r x w, (r + 1) x w) of every global batch; each image's affine is
    drawn from its slot in the global batch, so the two ranks' shares, stacked, are the one
    process's batch to the bit.
    Mutation: seeding by rank again, or drawing per share (slots ignored), fails both."""
    import numpy as np

    from reprlab.platform.contract.context import Context
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import DataBundle
    from reprlab.platform.data.types import ImageSet

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 12, 12, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 4)
    cfg = load_config(None, ["data.image_size=12", "data.augment=true", "data.classes_per_batch=4",
                             "data.samples_per_class=2", "scaling.num_workers=0"])
    bundle = DataBundle("x", ImageSet(labels=labels, pixels=pixels), labels, np.arange(6), {})
    batches = rng.permutation(24)[:16].reshape(2, 8)  # two global batches of 8
    one = [x for x, _ in Context(cfg, bundle, torch.device("cpu")).train_batches(batches, epoch=3)]
    shares = [[x for x, _ in Context(cfg, bundle, torch.device("cpu"), rank=r, world_size=2).train_batches(
        batches[:, r * 4 : (r + 1) * 4], epoch=3)] for r in range(2)]
    for i in range(2):
        assert torch.equal(torch.cat([shares[0][i], shares[1][i]]), one[i])
    assert not torch.equal(one[0][:4], shares[1][0]), "different slots, different draws"
