"""The style-transfer networks (``reprlab/platform/nn/stylenet.py``): LFN against GroupNorm and
against an explicit loop computation, its locality, the identity-initialized content
transformation block, sizes across resolutions, the discriminators' outputs, the win-rate rule and
the losses against hand computations. Tiny widths; the file runs in seconds on 2 CPU cores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.platform.nn.stylenet import (
    ContentDiscriminator,
    ContentTransformBlock,
    LocalGroupNorm,
    StyleDecoder,
    StyleDiscriminator,
    StyleEncoder,
    WinRate,
    adversarial_accuracy,
    feature_l1,
    feature_mse,
    multiscale_bce,
    norm_layer,
    pooled_mse,
)


def _lfn_with_random_affine(channels, group_size, window):
    lfn = LocalGroupNorm(channels, group_size, window)
    with torch.no_grad():
        lfn.weight.normal_()
        lfn.bias.normal_()
    return lfn


@pytest.mark.parametrize("size,window", [((6, 6), 6), ((5, 7), 7), ((9, 4), 64), ((5, 7), None)])
def test_lfn_with_a_window_covering_the_map_is_group_norm(size, window):
    x = torch.randn(3, 8, *size) * 3 + 2
    lfn = _lfn_with_random_affine(8, 2, window)
    gn = nn.GroupNorm(8 // 2, 8, eps=lfn.eps)
    gn.load_state_dict(lfn.state_dict())
    assert (lfn(x) - gn(x)).abs().max() < 1e-5


def test_group_size_is_the_number_of_consecutive_channels_per_group():
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    y = LocalGroupNorm(8, group_size=2, window=None, affine=False).double()(x)
    for k in range(4):  # 4 groups: channels (0, 1), (2, 3), (4, 5), (6, 7)
        part = x[:, 2 * k: 2 * k + 2]
        mu = part.mean((1, 2, 3), keepdim=True)
        var = ((part - mu) ** 2).mean((1, 2, 3), keepdim=True)  # biased
        assert torch.allclose(y[:, 2 * k: 2 * k + 2], (part - mu) / torch.sqrt(var + 1e-5), atol=1e-12)
    with pytest.raises(ValueError, match="multiple of group_size"):
        LocalGroupNorm(12, group_size=8)


def _bilinear_half_pixel(a, out_h, out_w):
    """Bilinear resize with half-pixel centres (align_corners=False), written out."""
    in_h, in_w = a.shape

    def taps(out, inn):
        src = np.maximum((np.arange(out) + 0.5) * inn / out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, inn - 1), src - i0

    r0, r1, ry = taps(out_h, in_h)
    c0, c1, cx = taps(out_w, in_w)
    top = a[r0][:, c0] * (1 - cx) + a[r0][:, c1] * cx
    bottom = a[r1][:, c0] * (1 - cx) + a[r1][:, c1] * cx
    return top * (1 - ry[:, None]) + bottom * ry[:, None]


def _box_loops(a, k):
    """k x k box means, stride k // 2, no padding, with explicit loops."""
    s = k // 2
    h, w = a.shape
    return np.array([[a[i:i + k, j:j + k].mean() for j in range(0, w - k + 1, s)] for i in range(0, h - k + 1, s)])


def test_lfn_with_a_small_window_matches_a_loop_computation():
    x = torch.randn(1, 4, 8, 12, dtype=torch.float64)
    y = LocalGroupNorm(4, group_size=2, window=4, affine=False).double()(x)
    for k in range(2):
        g = x[0, 2 * k: 2 * k + 2].numpy()
        mu = _bilinear_half_pixel(_box_loops(g.mean(0), 4), 8, 12)
        var = _bilinear_half_pixel(_box_loops(((g - mu) ** 2).mean(0), 4), 8, 12)
        np.testing.assert_allclose(y[0, 2 * k: 2 * k + 2].numpy(), (g - mu) / np.sqrt(var + 1e-5), atol=1e-10)


def test_lfn_is_local_a_brightness_step_on_the_left_leaves_the_far_right_unchanged():
    x = torch.rand(2, 4, 16, 32)
    brighter = x.clone()
    brighter[..., :16] += 3.0  # a step on the left half
    lfn, gn = LocalGroupNorm(4, group_size=2, window=4), nn.GroupNorm(2, 4)
    right = (..., slice(24, None))
    assert (lfn(brighter)[right] - lfn(x)[right]).abs().max() < 1e-6
    assert (lfn(brighter)[..., :16] - lfn(x)[..., :16]).abs().max() > 0.1
    assert (gn(brighter)[right] - gn(x)[right]).abs().max() > 0.1


def test_norm_factory():
    assert isinstance(norm_layer("lfn", 8, 4, 2), LocalGroupNorm)
    inorm = norm_layer("instance", 8, 4, 2)
    assert isinstance(inorm, nn.InstanceNorm2d) and inorm.affine
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("batch", 8)


@pytest.mark.parametrize("kind", ["lfn", "instance"])
def test_content_transformation_block_is_the_identity_at_init_and_learns(kind):
    ctb = ContentTransformBlock(8, blocks=2, norm=kind, group_size=4, W=32, stride=8)
    z = torch.randn(2, 8, 8, 8)
    assert torch.equal(ctb(z), z)
    opt = torch.optim.Adam(ctb.parameters(), lr=1e-2)
    F.mse_loss(ctb(z), torch.randn_like(z)).backward()
    opt.step()
    assert (ctb(z) - z).abs().max() > 1e-4
    assert torch.equal(ContentTransformBlock(8, blocks=0)(z), z)


def test_encoder_and_decoder_run_at_64_and_256_px_with_the_same_weights():
    enc = StyleEncoder(4, 3, norm="lfn", group_size=4, W=32)
    ctb = ContentTransformBlock(enc.out_channels, 1, group_size=4, W=32, stride=8)
    dec = StyleDecoder(4, 3, 1, norm="lfn", group_size=4, W=32)
    assert enc.windows == [16, 8, 4, 2]
    assert ctb.windows == [2, 2] and dec.windows == [2, 2, 4, 8, 16]
    for side in (64, 256):
        x = torch.rand(1, 3, side, side) * 2 - 1
        z = enc(x)
        assert z.shape == (1, 16, side // 8, side // 8)
        assert dec(ctb(z)).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        enc(torch.rand(1, 3, 60, 64))


def test_decoder_outputs_span_minus_one_to_one():
    dec = StyleDecoder(4, 2, 1, norm="instance")
    with torch.no_grad():
        dec.head.weight.mul_(100.0)  # saturate the output
    y = dec(torch.randn(2, 8, 8, 8))
    assert y.min() >= -1 and y.max() <= 1
    assert y.min() < -0.9 and y.max() > 0.9


def test_discriminator_outputs():
    disc = StyleDiscriminator((4, 4, 8, 8, 8), score_levels=3, scenes=6)
    maps, scenes = disc(torch.rand(2, 3, 64, 64))
    assert [m.shape for m in maps] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    assert scenes.shape == (2, 6)
    unnormed_first = StyleDiscriminator((4, 4, 8, 8, 8), score_levels=(0, 1, 3), norm_first=False)
    assert isinstance(unnormed_first.levels[0][1], nn.Identity)
    maps, scenes = unnormed_first(torch.rand(2, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [32, 16, 4] and scenes is None
    logit, classes = ContentDiscriminator(16, classes=2, width=8)(torch.randn(3, 16, 8, 8))
    assert logit.shape == (3,) and classes.shape == (3, 2)


def test_win_rate_follows_its_rule_and_round_trips():
    rate = WinRate(0.8, 0.05)
    ds, choices = 0.8, []
    for acc in [1.0, 0.9, 0.2, 0.95, 0.1, 0.0, 0.7, 1.0]:
        choice = rate.choose()
        choices.append(choice)
        assert choice == ("generator" if ds >= 0.8 else "discriminator")
        if choice == "generator":
            rate.after_generator(acc)
            ds = 0.95 * ds + 0.05 * (1 - acc)
        else:
            rate.after_discriminator(acc)
            ds = 0.95 * ds + 0.05 * acc
        assert float(rate.ds) == pytest.approx(ds, abs=1e-15)
    assert choices[0] == "generator" and {"generator", "discriminator"} <= set(choices)
    restored = WinRate(0.8, 0.05)
    restored.load_state_dict(rate.state_dict())
    assert float(restored.ds) == float(rate.ds) and restored.choose() == rate.choose()
    with pytest.raises(ValueError):
        rate.after_generator(float("nan"))


def test_multiscale_bce_is_the_sum_over_maps_of_each_maps_mean():
    a = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])  # N=2, 1 x 1 x 2
    b = torch.tensor([[[[3.0]]], [[[-0.5]]]])  # N=2, 1 x 1 x 1

    def nll(v, real):
        p = 1 / (1 + math.exp(-v))
        return -math.log(p if real else 1 - p)

    for real in (True, False):
        expect = [(nll(0.5, real) + nll(-1.0, real)) / 2 + nll(3.0, real),
                  (nll(2.0, real) + nll(0.0, real)) / 2 + nll(-0.5, real)]
        assert multiscale_bce([a, b], real).tolist() == pytest.approx(expect, rel=1e-6)


def test_pooled_mse():
    x, y = torch.randn(3, 2, 5, 6), torch.randn(3, 2, 5, 6)
    plain = torch.stack([F.mse_loss(x[i], y[i]) for i in range(3)])
    assert torch.allclose(pooled_mse(x, y, 1), plain)
    # pool 2, stride 1, TF SAME: pad 0 before and 1 after, the padding not counted
    d = (x - y).numpy()
    pooled = np.zeros_like(d)
    for i in range(5):
        for j in range(6):
            pooled[..., i, j] = d[..., i:i + 2, j:j + 2].mean((-2, -1))
    assert np.allclose(pooled_mse(x, y, 2).numpy(), (pooled ** 2).reshape(3, -1).mean(1), atol=1e-6)
    assert torch.allclose(feature_l1(x, y), (x - y).abs().mean((1, 2, 3)))
    assert torch.allclose(feature_mse(x, y), plain)


def test_adversarial_accuracy():
    real = [torch.tensor([[[[1.0, -1.0]]], [[[2.0, 3.0]]]])]  # shares > 0: .5, 1
    fake = [torch.tensor([[[[-1.0, -2.0]]], [[[1.0, -3.0]]]])]  # shares < 0: 1, .5; > 0: 0, .5
    photos = [torch.tensor([[[[1.0, 1.0]]], [[[1.0, 1.0]]]])]  # shares < 0: 0, 0
    disc, gen = adversarial_accuracy(real, fake)
    assert disc.item() == pytest.approx((0.75 + 0.75) / 2) and gen.item() == pytest.approx(0.25)
    disc, gen = adversarial_accuracy(real, fake, photos)
    assert disc.item() == pytest.approx((0.75 + 0.75 + 0.0) / 3) and gen.item() == pytest.approx(0.25)
