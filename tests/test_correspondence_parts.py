"""Building blocks of the dense-correspondence method: the multi-scale convolution and the matched
plain-conv ablations, match mining (mutual NN, RANSAC affine, hardest negatives, the contrastive
loss), the parametric fits, the flow network's warping and losses, and the metrics and figures.
Every test is seeded; tolerances follow from the arithmetic. Runs in seconds on one core."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprlab.platform.eval.correspondence import (
    epe,
    mask_box,
    mask_iou,
    match_precision,
    mining_png,
    mixture_png,
    pck,
    stereo_pck,
    transfer_by_flow,
    transfer_by_nn,
    transfers_png,
    warp_png,
)
from reprlab.platform.nn.flownet import (
    SemanticFlowNet,
    area_prior_loss,
    charbonnier_match_loss,
    contrast_loss,
    correlation,
    edge_aware_tv,
    feature_consistency_loss,
    mask_consistency_loss,
    upsample_flow,
    warp,
)
from reprlab.platform.nn.matching import (
    Matches,
    affine_flow,
    apply_affine,
    cell_centers,
    contrastive_loss,
    fit_affine,
    fit_tps,
    hardest_negatives,
    invert_affine,
    match_contrastive_loss,
    mine_matches,
    mutual_nn,
    ransac_affine,
    tps_flow,
)
from reprlab.platform.nn.msconv import (
    MSConv,
    build_feature_net,
    count_parameters,
    receptive_field,
)

# ---- MSConv -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixture", ["channel", "layer"])
def test_msconv_with_a_one_hot_mixture_is_that_branchs_dilated_conv(mixture):
    torch.manual_seed(0)
    conv = MSConv(3, 5, (1, 2, 4, 8), mixture=mixture, bias=True)
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 3, 20, 20)
    for k, d in enumerate(conv.dilations):
        with torch.no_grad():
            conv.mix_logits.fill_(-1e4)  # exp(-1e4) underflows to exactly 0
            conv.mix_logits[k] = 0.0
        ref = F.conv2d(x, conv.weight[k], conv.bias, padding=d, dilation=d)
        assert torch.allclose(conv(x), ref, atol=1e-5), f"branch {k} (dilation {d})"


def test_mixture_is_a_softmax_over_branches_per_output_channel():
    torch.manual_seed(1)
    conv = MSConv(3, 6, (1, 2, 4), mixture="channel", bias=False)
    with torch.no_grad():
        conv.mix_logits.normal_(0, 2)
    w = conv.mixture_weights()
    assert w.shape == (3, 6)
    assert torch.allclose(w.sum(0), torch.ones(6), atol=1e-6) and (w > 0).all()
    # the forward pass applies channel c's own weights to channel c of each branch
    x = torch.randn(1, 3, 12, 12)
    ref = sum(w[k].view(1, -1, 1, 1) * conv.branch_output(x, k) for k in range(3))
    assert torch.allclose(conv(x), ref, atol=1e-5)
    assert not torch.allclose(w[:, 0], w[:, 1]), "one weight vector per channel"
    layer = MSConv(3, 6, (1, 2, 4), mixture="layer")
    assert layer.mix_logits.shape == (3,) and layer.mixture_weights().shape == (3, 6)


def test_fixed_uniform_mixture_is_not_learned():
    conv = MSConv(3, 4, fixed_uniform=True)
    assert "mix_logits" not in dict(conv.named_parameters())
    assert torch.allclose(conv.mixture_weights(), torch.full((4, 4), 0.25))


def test_shared_kernel_has_one_kth_of_the_branch_parameters():
    sep = MSConv(8, 16, (1, 2, 4, 8), bias=False, fixed_uniform=True)
    shared = MSConv(8, 16, (1, 2, 4, 8), bias=False, fixed_uniform=True, shared_kernel=True)
    assert count_parameters(sep) == 4 * count_parameters(shared) == 4 * 16 * 8 * 9
    assert shared.kernel(0) is not None and torch.equal(shared.kernel(0), shared.kernel(3))


@pytest.mark.parametrize("size", [(16, 16), (17, 23)])
def test_strided_branch_returns_the_input_size(size):
    torch.manual_seed(2)
    conv = MSConv(3, 4, (1, 2, 4, 8), branch="strided")
    x = torch.randn(2, 3, *size)
    assert conv(x).shape == (2, 4, *size)
    coarse = F.conv2d(x, conv.kernel(2), None, stride=4, padding=1)
    ref = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    assert torch.allclose(conv.branch_output(x, 2), ref, atol=1e-6)


def _empirical_rf(head: nn.Module, channels: int, side: int = 41) -> int:
    """Width of the input region the centre output depends on: all weights positive and a positive
    input keep every ReLU open, so the gradient's support is exactly the receptive field."""
    head.eval()
    with torch.no_grad():
        for p in head.parameters():
            p.abs_().add_(1e-3)
    x = torch.rand(1, channels, side, side).add(0.1).requires_grad_(True)
    head(x)[0, :, side // 2, side // 2].sum().backward()
    cols = (x.grad[0].abs().sum((0, 1)) > 0).nonzero()
    return int(cols.max() - cols.min() + 1)


def test_plain_conv_ablations_match_parameters_and_receptive_field():
    torch.manual_seed(3)
    nets = {h: build_feature_net(width=4, dim=16, blocks=2, head=h) for h in ("msconv", "plain_params", "plain_rf")}
    heads = {h: count_parameters(n.head) + count_parameters(n.proj) for h, n in nets.items()}
    ms = heads["msconv"]
    assert abs(heads["plain_params"] - ms) / ms < 0.03, heads
    assert nets["plain_params"].match.depth == 2
    c = nets["msconv"].body_dim
    rf_ms = _empirical_rf(nets["msconv"].head, c)
    rf_plain = _empirical_rf(nets["plain_rf"].head, c)
    assert rf_ms == rf_plain == receptive_field(nets["msconv"].head)[0] == 1 + 2 * 2 * 8
    # the whole nets' receptive fields (in pixels, through the stride-4 trunk) agree too
    assert nets["msconv"].receptive_field() == nets["plain_rf"].receptive_field()
    assert nets["plain_params"].receptive_field() < nets["msconv"].receptive_field()


def test_feature_net_outputs_unit_descriptors_at_stride_4_and_reports_mixtures():
    torch.manual_seed(4)
    net = build_feature_net(width=4, dim=16, blocks=2)
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 16, 8, 8)
    assert torch.allclose(y.norm(dim=1), torch.ones(2, 8, 8), atol=1e-5)
    weights = net.mixture_weights()
    assert len(weights) == 2 and all(w.shape == (4,) for w in weights.values())


@pytest.mark.parametrize("head,branch", [("msconv", "dilated"), ("msconv", "strided"), ("plain_rf", "dilated")])
def test_replicate_padding_leaves_no_trace_of_position_on_a_uniform_image(head, branch):
    """A constant image has one descriptor everywhere when every convolution replicates its border;
    with zero padding the border cells differ (the position cue that made synthcorr's mining match
    background cells to their own place). Catches a trunk conv, a plain-head conv or an MSConv
    branch left at zero padding."""
    torch.manual_seed(6)
    x = torch.full((1, 3, 32, 32), 0.7)
    spread = {}
    for padding in ("zeros", "replicate"):
        torch.manual_seed(6)
        net = build_feature_net(width=4, dim=16, blocks=2, head=head, branch=branch, padding=padding).eval()
        with torch.no_grad():
            for w in net.parameters():  # positive weights: no layer's ReLU can zero the whole map
                w.abs_()
            y = net(x)[0].flatten(1)
        spread[padding] = float((y - y[:, :1]).abs().max())
    assert spread["replicate"] < 1e-6, spread  # float32 rounding of unit vectors is ~1e-7
    assert spread["zeros"] > 1e-4, spread


# ---- mining -----------------------------------------------------------------------------------------


def _unit(*shape, gen):
    return F.normalize(torch.randn(*shape, generator=gen), dim=1)


def test_mutual_nn_recovers_a_known_integer_shift():
    gen = torch.Generator().manual_seed(5)
    h = w = 16
    stride = 4
    fa = _unit(2, 32, h, w, gen=gen)
    fb = _unit(2, 32, h, w, gen=gen)
    shifts = [(3, 2), (-2, 5)]  # (dx, dy) in cells: B(q) = A(q - s)
    overlap = torch.zeros(2, h, w, dtype=torch.bool)
    for i, (dx, dy) in enumerate(shifts):
        ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
        ya, xa = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
        fb[i, :, ys, xs] = fa[i, :, ya, xa]
        overlap[i, ya, xa] = True
    m = mutual_nn(fa, fb, stride)
    ov = overlap.flatten(1)
    assert m.valid[ov].all()
    for i, (dx, dy) in enumerate(shifts):
        d = m.pos_b[i] - m.pos_a[i]
        assert torch.equal(d[ov[i]], torch.tensor([dx * stride, dy * stride], dtype=d.dtype).expand(int(ov[i].sum()), 2))
    # a cell of A without a counterpart can only be mutual with a cell of B that has none either
    # (a counterpart's nearest neighbour is its exact copy); without the mutual test all would be kept
    counterpart_b = torch.stack([torch.roll(overlap[i], shifts[i][::-1], (0, 1)) for i in range(2)]).flatten(1)
    assert not torch.gather(counterpart_b, 1, m.idx_b)[~ov & m.valid].any()
    assert m.valid[~ov].float().mean() < 0.5


def _affine_matches(gen, n_slots=256, outlier_frac=0.4, invalid_frac=0.5):
    theta = torch.tensor([[[0.9, -0.25, 6.0], [0.2, 1.1, -4.0]], [[1.15, 0.1, -3.0], [-0.15, 0.85, 5.0]]])
    n = len(theta)
    pa = torch.rand(n, n_slots, 2, generator=gen) * 64
    truth = torch.einsum("nij,nmj->nmi", theta[:, :, :2], pa) + theta[:, None, :, 2]
    pb = truth + (torch.rand(n, n_slots, 2, generator=gen) - 0.5) * 0.6  # |noise| < 0.43 px
    valid = torch.rand(n, n_slots, generator=gen) >= invalid_frac
    outlier = (torch.rand(n, n_slots, generator=gen) < outlier_frac) & valid
    # outliers 12-30 px away from their true match in a random direction
    ang = torch.rand(n, n_slots, generator=gen) * 2 * math.pi
    r = 12 + 18 * torch.rand(n, n_slots, generator=gen)
    pb = torch.where(outlier[..., None], truth + r[..., None] * torch.stack([ang.cos(), ang.sin()], -1), pb)
    # invalid slots (half of them) agree with a decoy affine map: a RANSAC that counted them would
    # prefer the decoy (50% support against 30%)
    decoy = theta.flip(0)
    pb = torch.where(valid[..., None], pb, torch.einsum("nij,nmj->nmi", decoy[:, :, :2], pa) + decoy[:, None, :, 2])
    return theta, pa, pb, valid, outlier


def test_ransac_recovers_a_known_affine_with_40_percent_outliers_and_drops_them():
    gen = torch.Generator().manual_seed(6)
    theta, pa, pb, valid, outlier = _affine_matches(gen)
    assert 0.35 < outlier.sum() / valid.sum() < 0.45
    est, inl = ransac_affine(pa, pb, valid, tau_px=3.2, hypotheses=512, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inl, valid & ~outlier)
    # least squares over ~75 points with uniform noise of sd 0.17 px: sub-pixel everywhere
    flow_err = (affine_flow(est, 16, 16, 4.0) - affine_flow(theta, 16, 16, 4.0)).norm(dim=1).max()
    assert flow_err < 0.3, float(flow_err)
    again, inl2 = ransac_affine(pa, pb, valid, 3.2, 512, torch.Generator().manual_seed(0))
    assert torch.equal(again, est) and torch.equal(inl2, inl), "seeded: reproducible"


def test_ransac_with_too_few_matches_gives_identity_and_no_inliers():
    pa = torch.rand(1, 10, 2) * 64
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, :2] = True
    est, inl = ransac_affine(pa, pa + 1, valid, 3.2, 64, torch.Generator().manual_seed(0))
    assert not inl.any() and torch.equal(est[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))


def test_mining_filters_mutual_nn_to_geometrically_consistent_matches():
    gen = torch.Generator().manual_seed(7)
    fa = _unit(1, 16, 16, 16, gen=gen)
    fb = _unit(1, 16, 16, 16, gen=gen)
    fb[:, :, 2:, 1:] = fa[:, :, :14, :15]  # shift (1, 2) cells
    fb[:, :, 0, 0] = fa[:, :, 9, 9]  # a spurious mutual match far from the shift
    raw = mine_matches(fa, fb, 4, 3.2, geometric=False)
    mined = mine_matches(fa, fb, 4, 3.2, 256, torch.Generator().manual_seed(0))
    spurious = 9 * 16 + 9
    assert raw.valid[0, spurious] and not mined.valid[0, spurious]
    assert mined.count() >= 14 * 15 - 1 and (mined.count() < raw.count()).all()
    assert torch.equal(Matches.from_state_dict(mined.state_dict()).valid, mined.valid)


def test_hardest_negatives_respect_r_neg():
    gen = torch.Generator().manual_seed(8)
    h = w = 8
    stride, r_neg = 4.0, 8.0  # exactly two cells
    fa = _unit(2, 16, h, w, gen=gen)
    fb = _unit(2, 16, h, w, gen=gen)
    idx_a = torch.arange(h * w).expand(2, -1)
    idx_b = torch.randint(0, h * w, (2, h * w), generator=gen)
    cb = cell_centers(h, w, stride)
    # B's matched cell and the cell two to its right (exactly r_neg away) copy A's descriptor for a
    # few slots: the most similar cells overall are not allowed as negatives
    for i, slot in ((0, 5), (1, 20)):
        j = int(idx_b[i, slot])
        if j % w >= w - 2:
            j -= 2
            idx_b[i, slot] = j
        fb[i, :, j // w, j % w] = fa[i, :, slot // w, slot % w]
        fb[i, :, j // w, j % w + 2] = fa[i, :, slot // w, slot % w]
    m = Matches(idx_a, idx_b, cb[idx_a], cb[idx_b], torch.ones(2, h * w), torch.ones(2, h * w, dtype=torch.bool))
    neg, ok = hardest_negatives(fa, fb, m, r_neg, stride)
    assert ok.all()
    assert ((cb[neg] - cb[idx_b]).norm(dim=-1) > r_neg).all()
    # brute force: the most similar descriptor among the cells farther than r_neg
    sim = torch.einsum("ndm,ndk->nmk", fa.flatten(2), fb.flatten(2))
    far = torch.cdist(cb[idx_b], cb[None].expand(2, -1, -1)) > r_neg
    best = sim.masked_fill(~far, -2).max(-1).values
    assert torch.allclose(torch.gather(sim, 2, neg[..., None])[..., 0], best)


def test_contrastive_loss_against_a_hand_computation():
    a = torch.zeros(3, 2)
    b = torch.tensor([[0.3, 0.4], [0.0, 0.6], [1.2, 0.0]])  # d = 0.5, 0.6, 1.2
    y = torch.tensor([1.0, 0.0, 0.0])
    # 0.5^2 + (1 - 0.6)^2 + relu(1 - 1.2)^2 = 0.25 + 0.16 + 0
    assert contrastive_loss(a, b, y, margin=1.0).item() == pytest.approx(0.41 / 3, abs=1e-7)
    assert contrastive_loss(a, b, y, 1.0, weights=torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(0.41 / 2, abs=1e-7)


def test_match_contrastive_loss_is_zero_for_aligned_matches_and_far_negatives():
    f = torch.zeros(1, 2, 1, 2)
    f[0, 0, 0, 0] = 1.0
    f[0, 1, 0, 1] = 1.0  # two orthogonal unit descriptors: distance sqrt(2) > m
    m = Matches(torch.tensor([[0]]), torch.tensor([[0]]), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1),
                torch.ones(1, 1, dtype=torch.bool))
    assert match_contrastive_loss(f, f, m, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool)).item() == 0.0


# ---- parametric fits --------------------------------------------------------------------------------


def test_affine_fit_and_flow_are_exact_for_an_affine_map():
    gen = torch.Generator().manual_seed(9)
    theta = torch.tensor([[[1.1, 0.2, 3.0], [-0.1, 0.9, -2.0]]])
    pa = torch.rand(1, 30, 2, generator=gen) * 64
    pb = torch.einsum("nij,nmj->nmi", theta[:, :, :2], pa) + theta[:, None, :, 2]
    est, ok = fit_affine(pa, pb, torch.ones(1, 30))
    assert ok.all() and torch.allclose(est, theta, atol=1e-4)
    flow = affine_flow(theta, 4, 4, 16.0)  # cell (0, 0) sits at (8, 8)
    assert torch.allclose(flow[0, :, 0, 0], torch.tensor([1.1 * 8 + 0.2 * 8 + 3 - 8, -0.1 * 8 + 0.9 * 8 - 2 - 8]))


def test_tps_fit_reproduces_an_exactly_tps_displacement():
    gen = torch.Generator().manual_seed(10)
    g = torch.Generator().manual_seed(11)
    c = (torch.rand(12, 2, generator=gen, dtype=torch.float64) * 48 + 8)  # control points, pixels
    p = torch.cat([torch.ones(12, 1, dtype=torch.float64), c], 1)
    w = torch.randn(12, 2, generator=g, dtype=torch.float64) * 0.05
    w = w - p @ torch.linalg.solve(p.T @ p, p.T @ w)  # side conditions: sum w = 0, sum w c = 0
    a = torch.tensor([[2.0, -1.0], [0.95, 0.1], [-0.05, 1.05]], dtype=torch.float64)

    def f(q):  # written out independently: U(r) = r^2 log r, pixel coordinates
        r = (q[:, None] - c[None]).norm(dim=-1)
        u = torch.where(r > 0, r**2 * torch.log(r.clamp_min(1e-300)), torch.zeros_like(r))
        return torch.cat([torch.ones(len(q), 1, dtype=q.dtype), q], 1) @ a + u @ w

    # the matches: the control points plus extra points of the same spline, and padding slots
    extra = torch.rand(20, 2, generator=gen, dtype=torch.float64) * 64
    pa = torch.cat([c, extra, torch.zeros(5, 2, dtype=torch.float64)])[None].float()
    pb = torch.cat([f(c), f(extra), torch.full((5, 2), 99.0, dtype=torch.float64)])[None].float()
    valid = torch.ones(1, 37, dtype=torch.bool)
    valid[0, 32:] = False
    tps = fit_tps(pa, pb, valid, side=64, reg=0.0)
    grid = cell_centers(64, 64).double()
    truth = (f(grid) - grid).T.reshape(2, 64, 64)
    assert truth.abs().max() > 3, "a non-trivial warp"
    nonaffine = (truth - affine_flow(fit_affine(grid[None].float(), (grid + truth.flatten(1).T)[None].float(),
                                                torch.ones(1, 4096))[0], 64, 64)[0]).abs().max()
    assert nonaffine > 0.5, "not just an affine map"
    # float32 inputs (positions up to 64, eps 4e-6 px) amplified through the solve: ~1e-3 px
    assert (tps_flow(tps, 64, 64)[0].double() - truth).abs().max() < 5e-3


# ---- flow network, warping, L_flow ------------------------------------------------------------------


def test_warp_by_a_known_constant_flow():
    gen = torch.Generator().manual_seed(12)
    src = torch.rand(1, 3, 16, 16, generator=gen)
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # A's p -> p + (3, -2) in B
    out = warp(src, flow)
    assert torch.allclose(out[..., 2:, :13], src[..., :14, 3:], atol=1e-6)
    assert (out[..., :2, :] == 0).all() and (out[..., :, 13:] == 0).all()


def test_warp_pixel_convention_across_resolutions():
    # a linear ramp is reproduced exactly by bilinear sampling away from the border
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = ((xs + 0.5) + 100 * (ys + 0.5))[None, None]  # value = x + 100 y at pixel centres
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0], flow[:, 1] = 2.5, -1.25
    out = warp(ramp, flow, image_size=(32, 32))  # flow on 8 x 8 cells of 4 px
    centre = (torch.arange(8.0) + 0.5) * 4
    ex, ey = centre[None, :] + 2.5, centre[:, None] - 1.25
    expect = ex + 100 * ey
    assert torch.allclose(out[0, 0, 1:, :7], expect[1:, :7], atol=1e-3)
    assert torch.equal(upsample_flow(flow, (32, 32))[:, 0], torch.full((1, 32, 32), 2.5))


def test_flow_net_starts_at_the_soft_argmax_flow_in_both_directions():
    gen = torch.Generator().manual_seed(13)
    fa = _unit(2, 8, 8, 8, gen=gen)
    fb = torch.roll(fa, shifts=(1, 2), dims=(2, 3))  # B(q) = A(q - (2, 1) cells), circular
    net = SemanticFlowNet(8, width=8, topk=4, temperature=0.01)
    out = net(fa, fb, (32, 32))
    assert out.flow_ab.shape == out.flow_ba.shape == (2, 2, 8, 8)
    assert out.logit_a.shape == out.logit_b.shape == (2, 1, 8, 8) and (out.logit_a == 0).all()
    # interior cells: the sharp soft-argmax lands on the shifted cell (8, 4 px)
    shift = torch.tensor([8.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(out.flow_ab[:, :, 2:6, 2:5], shift.expand(2, 2, 4, 3), atol=0.05)
    assert torch.allclose(out.flow_ba[:, :, 2:6, 3:6], -shift.expand(2, 2, 4, 3), atol=0.05)
    corr = correlation(fa, fb)
    assert corr.shape == (2, 64, 8, 8) and torch.allclose(corr[0, 9, 3, 5], (fb[0, :, 1, 1] * fa[0, :, 3, 5]).sum())
    out.flow_ab.sum().backward()
    assert net.log_temperature.grad is not None


def test_flow_net_refining_a_given_flow_returns_it_untrained_and_inverse_affines_undo_their_map():
    gen = torch.Generator().manual_seed(14)
    fa, fb = _unit(2, 8, 8, 8, gen=gen), _unit(2, 8, 8, 8, gen=gen)
    theta = torch.tensor([[[1.1, 0.2, 3.0], [-0.1, 0.9, -2.0]], [[0.8, 0.0, 5.0], [0.1, 1.2, 1.0]]])
    p = torch.rand(2, 20, 2, generator=gen) * 32
    assert torch.allclose(apply_affine(invert_affine(theta), apply_affine(theta, p)), p, atol=1e-4)
    init_ab, init_ba = affine_flow(theta, 8, 8, 4.0), affine_flow(invert_affine(theta), 8, 8, 4.0)
    net = SemanticFlowNet(8, width=8, topk=4, init_input=True)
    out = net(fa, fb, (32, 32), init_ab, init_ba)
    # an untrained net adds nothing to the flow it refines, in both directions (not the soft-argmax)
    assert torch.allclose(out.flow_ab, init_ab, atol=1e-5) and torch.allclose(out.flow_ba, init_ba, atol=1e-5)
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([0.25, -0.5, 0.0]))  # a residual of (0.25, -0.5) normalized units
    moved = net(fa, fb, (32, 32), init_ab, init_ba).flow_ab - init_ab
    assert torch.allclose(moved, torch.tensor([4.0, -8.0]).view(1, 2, 1, 1).expand_as(moved), atol=1e-5)
    with pytest.raises(ValueError, match="starting flow"):
        net(fa, fb, (32, 32))


def test_flow_losses_by_hand():
    gen = torch.Generator().manual_seed(14)
    size = (16, 16)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 4.0  # one cell to the right
    pa = cell_centers(4, 4, 4.0)[None]
    pb = pa + torch.tensor([4.0, 0.0])
    valid = torch.ones(1, 16, dtype=torch.bool)
    assert charbonnier_match_loss(flow, pa, pb, valid, size, eps=0.1).item() == pytest.approx(0.1, abs=1e-6)
    pb_bad = pb + torch.tensor([3.0, 4.0])
    assert charbonnier_match_loss(flow, pa, pb_bad, valid, size, eps=0.0).item() == pytest.approx(5.0, abs=1e-5)
    # edge-aware TV: 0 for a constant flow; a jump costs less across an image edge
    guide = torch.zeros(1, 1, 4, 4)
    guide[..., 2:] = 1.0
    step = torch.zeros(1, 2, 4, 4)
    step[:, 0, :, 2:] = 1.0
    assert edge_aware_tv(flow, guide).item() == 0.0
    assert edge_aware_tv(step, guide, beta=10.0).item() == pytest.approx(4 * math.exp(-10) / 12, rel=1e-5)
    assert edge_aware_tv(step, torch.zeros(1, 1, 4, 4)).item() == pytest.approx(4 / 12, rel=1e-6)
    # feature consistency: B = A shifted one cell right, the flow above aligns them where inside
    fa = _unit(1, 8, 4, 4, gen=gen)
    fb = torch.roll(fa, 1, dims=3)
    fg = torch.ones(1, 1, 4, 4)
    assert feature_consistency_loss(fa, fb, flow, fg, size).item() == pytest.approx(0.0, abs=1e-5)
    assert feature_consistency_loss(fa, fb, torch.zeros_like(flow), fg, size).item() > 0.5
    # mask consistency: BCE of logits against B's probability pulled back
    la, lb = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 50.0)
    assert mask_consistency_loss(la, lb, torch.zeros_like(flow), size).item() == pytest.approx(math.log(2), abs=1e-6)
    logit = torch.tensor([0.0, 0.0, 50.0, -50.0]).view(1, 1, 2, 2)
    assert area_prior_loss(logit, 0.3).item() == pytest.approx((0.5 - 0.3) ** 2, abs=1e-6)


def test_contrast_targets_the_cells_least_like_the_other_image():
    # A: 4 of 16 cells show the object (e1), the rest background (e0); B is 3/4 background. The
    # target is the prior's fraction of A's cells least similar to B's mean descriptor: the object.
    e0, e1 = torch.eye(2)[0], torch.eye(2)[1]
    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[1:3, 1:3] = True
    fa = torch.where(obj[None], e1[:, None, None], e0[:, None, None])[None]
    fb = torch.cat([e0.expand(12, 2), e1.expand(4, 2)]).T.reshape(1, 2, 4, 4)
    right = torch.where(obj, 50.0, -50.0)[None, None]
    assert contrast_loss(fa, fb, right, 0.25).item() == pytest.approx(0.0, abs=1e-6)
    assert contrast_loss(fa, fb, -right, 0.25).item() == pytest.approx(50.0, rel=1e-4)  # 100 % wrong at |logit| 50
    # 0.5 everywhere: BCE log 2 whatever the target; the gradient raises the object's logits only
    logit = torch.zeros(1, 1, 4, 4, requires_grad=True)
    loss = contrast_loss(fa, fb, logit, 0.25)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert (logit.grad[0, 0][obj] < 0).all() and (logit.grad[0, 0][~obj] > 0).all()


# ---- metrics ----------------------------------------------------------------------------------------


def test_pck_by_hand_uses_max_of_box_height_and_width():
    box = torch.tensor([[10.0, 20.0, 50.0, 30.0]])  # w = 40, h = 10: thresholds 2, 4, 6 px
    true = torch.zeros(1, 6, 2) + 30
    err = torch.tensor([[0.0, 0.0], [3.9, 0.0], [4.0, 0.0], [0.0, 5.0], [0.6, 0.8], [0.0, 7.0]])
    out = pck(true + err, true, box)
    assert out == pytest.approx({"pck@0.05": 2 / 6, "pck@0.1": 4 / 6, "pck@0.15": 5 / 6})
    vis = torch.tensor([[True, True, True, True, True, False]])
    assert pck(true + err, true, box, alphas=(0.15,), visible=vis)["pck@0.15"] == pytest.approx(1.0)
    mask = torch.zeros(1, 40, 60, dtype=torch.bool)
    mask[0, 20:30, 10:50] = True
    assert torch.equal(mask_box(mask), box)


def test_epe_counts_only_foreground_pixels():
    true = torch.zeros(1, 2, 8, 8)
    pred = torch.zeros(1, 2, 8, 8)
    fg = torch.zeros(1, 8, 8, dtype=torch.bool)
    fg[0, 2:5, 3:6] = True
    pred[0, 0][fg[0]] = 1.0
    pred[0, 1][~fg[0]] = 100.0
    assert epe(pred, true, fg) == pytest.approx(1.0)


def test_keypoint_transfer_by_flow_and_by_nearest_neighbour():
    gen = torch.Generator().manual_seed(15)
    # a linear flow u(p) = (0.25 x + 2, -0.1 y) on 4 x 4 cells of 4 px: bilinear lookup is exact
    # between the outer cell centres (2 to 14 px)
    centres = cell_centers(4, 4, 4.0)
    flow = torch.stack([0.25 * centres[:, 0] + 2, -0.1 * centres[:, 1]]).reshape(1, 2, 4, 4)
    kp = torch.tensor([[[3.0, 5.0], [10.2, 13.7]]])
    expect = kp + torch.stack([0.25 * kp[..., 0] + 2, -0.1 * kp[..., 1]], -1)
    assert torch.allclose(transfer_by_flow(kp, flow, (16, 16)), expect, atol=1e-5)
    fa = _unit(1, 16, 8, 8, gen=gen)
    fb = torch.roll(fa, shifts=(2, 1), dims=(2, 3))  # one cell right, two down
    kp = (torch.tensor([[[2, 3], [4, 1]]]) + 0.5) * 4  # cell centres of A
    assert torch.allclose(transfer_by_nn(kp, fa, fb, (32, 32)), kp + torch.tensor([4.0, 8.0]))


def test_mask_iou_match_precision_and_stereo_pck():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, 1:3] = True, True  # 4 / 12
    assert mask_iou(a, b) == pytest.approx((4 / 12 + 1.0) / 2)
    flow = torch.zeros(1, 2, 16, 16)
    pa = torch.tensor([[[4.0, 4.0], [8.0, 8.0], [9.0, 9.0]]])
    pb = pa + torch.tensor([[[0.0, 0.0], [0.0, 0.9], [3.0, 0.0]]])  # 0.05 x 20 = 1 px
    valid, box = torch.tensor([[True, True, False]]), torch.tensor([[0.0, 0.0, 20.0, 10.0]])
    res = match_precision(pa, pb, valid, flow, box, (16, 16))
    assert res == {"precision": 1.0, "count": 2.0}
    res = stereo_pck(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.zeros(2, 2), side=100)
    assert res == {"stereo_pck@0.02": 0.5, "stereo_pck@0.05": 1.0}


def test_figures_are_png_bytes():
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 16, 16, 3))
    kp = rng.random((2, 5, 2)) * 16
    box = np.array([[0, 0, 16, 16]] * 2, float)
    m = rng.random((2, 16, 16)) > 0.5
    pngs = [
        transfers_png(imgs, imgs, kp, kp + 1, kp, box),
        warp_png(imgs, imgs, imgs, rng.normal(size=(2, 2, 4, 4)), {"mask A": (m, m), "mask B": (m, ~m)}),
        mixture_png(np.arange(3), {"head.0": rng.dirichlet(np.ones(4), 3)}, (1, 2, 4, 8)),
        mining_png(np.arange(3), {"filtered": rng.random(3), "raw": rng.random(3)}, {"filtered": rng.random(3) * 50}),
    ]
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
