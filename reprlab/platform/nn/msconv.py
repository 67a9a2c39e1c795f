"""The multi-scale convolution of the dense-correspondence method (Ufer et al., GCPR 2019 /
arXiv 1906.06978) and the dense feature net built from it.

The paper's abstract names "a learned mixture of differently strided convolutions"; a third-party
survey reads it as K parallel convolutions at different dilations combined by learned weights.
Everything below beyond that sentence is **[design]** (``specs/correspondence.md``); shared vs
separate kernels, the normalization of the weights and stride vs dilation are **[unverified]**,
hence options:

    MSConv(x) = sum_k softmax(a)_{k,c} * Conv3x3_{dil d_k}(x; W_k),   d = (1, 2, 4, 8)

- ``mixture="channel"``: one logit vector per output channel c (a is K x C_out); ``"layer"``: one
  for the whole layer (a is K). The softmax runs over the K branches, so every channel's weights
  are a convex combination. Logits start at 0 (the uniform mixture).
- ``fixed_uniform=True``: a stays 0 and is a buffer, not a parameter (the ablation).
- ``shared_kernel=True``: one W for all branches (1/K of the branch parameters).
- ``branch="strided"``: branch k is a 3 x 3 convolution with stride d_k (padding 1), bilinearly
  upsampled (``align_corners=False``) back to the input's size, instead of a dilated one.
- One bias, added after the mixture (a convex mix of per-branch biases is one bias anyway).
- ``padding_mode``: ``"zeros"`` (PyTorch's default) or ``"replicate"`` (the border pixels repeated).

The feature net (:func:`build_feature_net`): a trunk to stride 4 (SmallCNN's first three stages on
the CPU; a ResNet's stem and ``layer1`` for the paper preset), ``blocks`` x [MSConv, BatchNorm,
ReLU] at the trunk's width, a 1 x 1 projection to ``dim`` and per-pixel L2 normalization. Every
padded convolution of the net pads with ``padding`` (:data:`PADDINGS`): zero padding lets a net's
descriptors encode where a cell is in the image (the border is the only place the input is known
to be 0), and on synthcorr's pairs, whose backgrounds are unrelated photos, that made most mined
matches background cells matched to their own position (BENCHMARKS (o)); ``"replicate"`` removes
most of that cue. For the
ablation the MSConv blocks are replaced by plain 3 x 3 convolutions, either matched in parameter
count (same depth, the width derived) or in receptive field (same width, the depth derived); both
are derived from :func:`count_parameters` and :func:`receptive_field`, not tuned by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reprlab.platform.core.errors import ConfigError
from reprlab.platform.nn.backbones import (
    ResNetTrunk,
    SmallCNN,
    freeze_batchnorm,
    keep_frozen_batchnorm_in_eval,
)

BRANCHES = ("dilated", "strided")
MIXTURES = ("layer", "channel")
HEADS = ("msconv", "plain_params", "plain_rf")
PADDINGS = ("zeros", "replicate")
TRUNK_STRIDE = 4


class MSConv(nn.Module):
    """A learned softmax mixture of K 3 x 3 convolutions at dilations (or strides) ``dilations``;
    N x C_in x H x W -> N x C_out x H x W (the input's size for every branch option)."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2, 4, 8), *,
                 shared_kernel: bool = False, branch: str = "dilated", mixture: str = "channel",
                 fixed_uniform: bool = False, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding_mode not in PADDINGS:
            raise ConfigError(f"config: msconv padding must be one of {PADDINGS}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        if branch not in BRANCHES:
            raise ConfigError(f"config: msconv branch must be one of {BRANCHES}, got {branch!r}")
        if mixture not in MIXTURES:
            raise ConfigError(f"config: msconv mixture must be one of {MIXTURES}, got {mixture!r}")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1 or len(set(dilations)) != len(dilations):
            raise ConfigError(f"config: msconv dilations must be distinct integers >= 1, got {dilations}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dilations, self.branch, self.mixture = dilations, branch, mixture
        self.shared_kernel, self.fixed_uniform = shared_kernel, fixed_uniform
        k = len(dilations)
        self.weight = nn.Parameter(torch.empty(1 if shared_kernel else k, out_channels, in_channels, 3, 3))
        for w in self.weight.data:  # nn.Conv2d's initialization, per kernel (fan-in 9 C_in)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        logits = torch.zeros((k,) if mixture == "layer" else (k, out_channels))
        if fixed_uniform:
            self.register_buffer("mix_logits", logits)
        else:
            self.mix_logits = nn.Parameter(logits)

    def kernel(self, k: int) -> torch.Tensor:
        """Branch k's C_out x C_in x 3 x 3 kernel (the shared one when ``shared_kernel``)."""
        return self.weight[0 if self.shared_kernel else k]

    def branch_output(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Branch k alone, without bias: a dilated convolution, or a strided one upsampled back."""
        d = self.dilations[k]
        if self.branch == "dilated":
            return self._conv(x, k, d, dilation=d)
        y = self._conv(x, k, 1, stride=d)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y

    def _conv(self, x: torch.Tensor, k: int, pad: int, **conv: int) -> torch.Tensor:
        """Kernel k over ``x`` padded by ``pad`` on each side (zeros by the convolution itself)."""
        if self.padding_mode == "zeros":
            return F.conv2d(x, self.kernel(k), None, padding=pad, **conv)
        return F.conv2d(F.pad(x, (pad,) * 4, mode=self.padding_mode), self.kernel(k), None, **conv)

    def mixture_weights(self) -> torch.Tensor:
        """softmax(a) over the branches as K x C_out (a ``"layer"`` mixture repeated per channel);
        differentiable (``.detach()`` it to record it)."""
        w = torch.softmax(self.mix_logits, dim=0)
        return w[:, None].expand(-1, self.out_channels) if self.mixture == "layer" else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.mixture_weights().to(x.dtype)
        out = sum(w[k].view(1, -1, 1, 1) * self.branch_output(x, k) for k in range(len(self.dilations)))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extent(self) -> int:
        """How far (in input pixels) the widest branch reaches beyond a 1 x 1 footprint: receptive
        field growth ``rf += extent * jump``. Dilated: 2 d. Strided (d > 1): the two coarse cells a
        bilinear output pixel mixes lie d apart and each reads 3 pixels, so d + 2 (an upper bound)."""
        if self.branch == "dilated":
            return 2 * max(self.dilations)
        return max(2 if d == 1 else d + 2 for d in self.dilations)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, dilations={self.dilations}, branch={self.branch}, "
                f"mixture={self.mixture}, shared_kernel={self.shared_kernel}, fixed_uniform={self.fixed_uniform}, "
                f"padding_mode={self.padding_mode}")


# ---- parameter counts and receptive fields ----------------------------------------------------------

_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.GroupNorm)


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or frozen; buffers such as a fixed mixture's logits excluded)."""
    return sum(p.numel() for p in module.parameters())


def receptive_field(layers: nn.Module | Iterable[nn.Module], rf: int = 1, jump: int = 1) -> tuple[int, int]:
    """(receptive field side, jump) after ``layers`` in order, starting from ``rf`` and ``jump``
    (input pixels per cell): each layer adds ``(k - 1) d jump`` and multiplies ``jump`` by its
    stride. Knows convolutions, max / average pooling, :class:`MSConv`, pointwise layers,
    containers, and torchvision's residual blocks (their main path; the shortcut is narrower)."""
    modules = [layers] if isinstance(layers, nn.Module) else list(layers)
    for m in modules:
        if isinstance(m, MSConv):
            rf += m.extent() * jump
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _first(m.kernel_size), _first(m.stride)
            d = _first(getattr(m, "dilation", 1))
            rf += (k - 1) * d * jump
            jump *= s
        elif isinstance(m, _POINTWISE):
            pass
        elif hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "downsample"):
            main = [m.conv1, m.conv2] + ([m.conv3] if hasattr(m, "conv3") else [])
            rf, jump = receptive_field(main, rf, jump)
        elif isinstance(m, (nn.Sequential, nn.ModuleList)):
            rf, jump = receptive_field(list(m.children()), rf, jump)
        else:
            raise ValueError(f"receptive_field: no rule for {type(m).__name__}")
    return rf, jump


def _first(v: int | tuple[int, ...]) -> int:
    return v if isinstance(v, int) else v[0]


# ---- the dense feature net ------------------------------------------------------------------------


def msconv_head(channels: int, blocks: int, **msconv: object) -> nn.Sequential:
    """``blocks`` x [MSConv(channels, channels), BatchNorm, ReLU]."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [MSConv(channels, channels, bias=False, **msconv), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def plain_head(in_channels: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` x [Conv3x3, BatchNorm, ReLU], the first from ``in_channels`` to ``width``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _head_and_projection_params(head: nn.Sequential, width: int, dim: int) -> int:
    return count_parameters(head) + count_parameters(nn.Conv2d(width, dim, 1))


def param_matched_width(in_channels: int, depth: int, dim: int, target: int) -> int:
    """The width of a ``depth``-layer plain head (plus its 1 x 1 projection to ``dim``) whose
    parameter count is nearest ``target``: bisection over the (increasing) count, each candidate
    built on the meta device and counted."""
    def params(width: int) -> int:
        with torch.device("meta"):
            return _head_and_projection_params(plain_head(in_channels, width, depth), width, dim)

    lo, hi = 1, 2
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(params(w) - target))


def rf_matched_depth(width: int, target_rf: int) -> int:
    """The smallest depth of plain 3 x 3 layers whose receptive field (in cells) reaches
    ``target_rf``; equal to it when ``target_rf`` is odd (every dilated MSConv head)."""
    depth = 0
    while True:
        depth += 1
        with torch.device("meta"):
            rf, _ = receptive_field(plain_head(width, width, depth))
        if rf >= target_rf:
            return depth


@dataclass(frozen=True)
class HeadMatch:
    """How an ablation head was derived: its width and depth and the numbers it matched."""

    kind: str
    width: int
    depth: int
    params: int  # head + projection
    reference_params: int  # the MSConv head + projection
    rf: int  # head receptive field in trunk cells
    reference_rf: int


def match_plain_head(kind: str, channels: int, blocks: int, dim: int, **msconv: object) -> HeadMatch:
    """Derive the plain-conv head that matches the MSConv head (``blocks`` blocks at ``channels``,
    options ``msconv``) in parameters (``plain_params``: same depth, width derived) or in
    receptive field (``plain_rf``: same width, depth derived)."""
    with torch.device("meta"):
        ref = msconv_head(channels, blocks, **msconv)
        ref_params = _head_and_projection_params(ref, channels, dim)
        ref_rf, _ = receptive_field(ref)
    if kind == "plain_params":
        width, depth = param_matched_width(channels, blocks, dim, ref_params), blocks
    elif kind == "plain_rf":
        width, depth = channels, rf_matched_depth(channels, ref_rf)
    else:
        raise ConfigError(f"config: plain head must be plain_params or plain_rf, got {kind!r}")
    with torch.device("meta"):
        head = plain_head(channels, width, depth)
        params = _head_and_projection_params(head, width, dim)
        rf, _ = receptive_field(head)
    return HeadMatch(kind, width, depth, params, ref_params, rf, ref_rf)


class DenseFeatureNet(nn.Module):
    """image N x 3 x H x W -> descriptors N x dim x H/4 x W/4, L2-normalized per pixel."""

    def __init__(self, trunk: nn.Module, head: nn.Sequential, head_width: int, dim: int,
                 match: HeadMatch | None = None) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head
        self.proj = nn.Conv2d(head_width, dim, 1)
        self.body_dim, self.out_dim, self.stride = head_width, dim, TRUNK_STRIDE
        self.match = match  # how a plain ablation head was derived (None for MSConv)

    def train(self, mode: bool = True) -> DenseFeatureNet:
        super().train(mode)
        keep_frozen_batchnorm_in_eval(self)
        return self

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output before the projection (N x body_dim x H/4 x W/4): what a warm-up
        classifier pools."""
        return self.head(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.body(x)), dim=1)

    def msconvs(self) -> dict[str, MSConv]:
        return {name: m for name, m in self.named_modules() if isinstance(m, MSConv)}

    def mixture_weights(self) -> dict[str, torch.Tensor]:
        """Per MSConv layer, its branch weights averaged over output channels (K values, detached,
        on the CPU): one point per layer of the mixture-over-epochs figure."""
        return {name: m.mixture_weights().detach().float().mean(1).cpu() for name, m in self.msconvs().items()}

    def receptive_field(self) -> int | None:
        """The descriptors' receptive field in input pixels (None if the trunk has a layer
        :func:`receptive_field` has no rule for)."""
        try:
            return receptive_field([self.trunk, self.head])[0]
        except ValueError:
            return None


def build_trunk(backbone: str = "small_cnn", width: int = 16, pretrained: str = "none",
                freeze_bn: bool | None = None) -> tuple[nn.Module, int]:
    """A stride-4 trunk and its output channels: SmallCNN's first three stages (4 ``width``), or a
    torchvision ResNet's stem and ``layer1`` (64 for resnet18, 256 for resnet50). BatchNorm is
    frozen by default for the ResNets, as in :func:`~reprlab.platform.nn.backbones.build_backbone`."""
    if backbone == "small_cnn":
        if pretrained != "none":
            raise ConfigError("config: model.pretrained: small_cnn has no pretrained weights; use none")
        trunk: nn.Module = SmallCNN(width).features[:9]  # three conv-BN-ReLU stages: strides 1, 2, 2
        channels = width * 4
    elif backbone in ("resnet18", "resnet50"):
        net = ResNetTrunk(backbone, pretrained).net
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        channels = net.layer1[-1].bn2.num_features if backbone == "resnet18" else net.layer1[-1].bn3.num_features
    else:
        raise ConfigError(f"config: model.backbone: the feature net takes small_cnn, resnet18 or resnet50, got {backbone!r}")
    freeze = freeze_bn if freeze_bn is not None else backbone != "small_cnn"
    return (freeze_batchnorm(trunk) if freeze else trunk), channels


def build_feature_net(backbone: str = "small_cnn", width: int = 16, pretrained: str = "none", dim: int = 64,
                      blocks: int = 2, head: str = "msconv", dilations: Sequence[int] = (1, 2, 4, 8),
                      shared_kernel: bool = False, branch: str = "dilated", mixture: str = "channel",
                      fixed_uniform: bool = False, freeze_bn: bool | None = None, padding: str = "zeros"
                      ) -> DenseFeatureNet:
    """The feature net: trunk, then ``blocks`` MSConv blocks (``head="msconv"``) or the plain
    ablation heads derived to match them (``plain_params`` / ``plain_rf``, from the same MSConv
    options), 1 x 1 projection to ``dim``, L2 normalization; every padded convolution pads with
    ``padding`` (``zeros`` or ``replicate``)."""
    if padding not in PADDINGS:
        raise ConfigError(f"config: feature net padding must be one of {PADDINGS}, got {padding!r}")
    if head not in HEADS:
        raise ConfigError(f"config: feature head must be one of {HEADS}, got {head!r}")
    if blocks < 1:
        raise ConfigError(f"config: feature head needs at least one block, got {blocks}")
    trunk, channels = build_trunk(backbone, width, pretrained, freeze_bn)
    opts = dict(dilations=dilations, shared_kernel=shared_kernel, branch=branch, mixture=mixture,
                fixed_uniform=fixed_uniform)
    if head == "msconv":
        net = DenseFeatureNet(trunk, msconv_head(channels, blocks, padding_mode=padding, **opts), channels, dim)
    else:
        match = match_plain_head(head, channels, blocks, dim, **opts)
        net = DenseFeatureNet(trunk, plain_head(channels, match.width, match.depth), match.width, dim, match)
    for conv in net.modules():  # the trunk's and the plain heads' convolutions (MSConv pads itself)
        if isinstance(conv, nn.Conv2d) and any(conv.padding):
            conv.padding_mode = padding
    return net
