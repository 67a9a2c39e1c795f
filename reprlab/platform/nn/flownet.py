"""The semantic flow network of the dense-correspondence method (Ufer et al., GCPR 2019), its
correlation volume, flow warping and the terms of L_flow.

The abstract says a flow network on the learned features predicts dense, non-parametric
deformations and foreground regions jointly; architecture and losses are our reading
(**[design]**, ``specs/correspondence.md``).

Pixel convention (shared with ``matching`` and ``reprlab.platform.data.augment``): points are
(x, y) in image pixels, column first, pixel i's centre at ``i + 0.5``. A flow is N x 2 x h x w,
(dx, dy) in *image* pixels, on a grid of h x w cells covering the image (cell (i, j) centred at
((j + 0.5) W / w, (i + 0.5) H / h)); A's point p maps to p + u(p) in B. A flow at 1/4 resolution
and its bilinear upsampling (:func:`upsample_flow`) hold the same values in the same units.

Network (:class:`SemanticFlowNet`, **[design]**). The 4-D correlation of A and B at 1/4
resolution (:func:`correlation`: cosine of every cell of A with every cell of B, N x (Hb Wb) x Ha
x Wa) is not fed to convolutions as (Hb Wb) channels: that ties the net to one input size and to
B's cell order. Per cell of A it is summarised by

- the soft-argmax displacement: the softmax(corr / T)-weighted mean of B's cell centres minus the
  cell's own centre, in normalized units (T learned, 0.05 at the start);
- the ``topk`` largest correlations, sorted (how peaked, how ambiguous the match is);
- A's descriptor itself (what part of the object, or background, the cell shows).

A small dilated conv stack (dilations 1, 2, 4, 1: context over most of a 16 x 16 map) maps these
to a residual flow, added to the soft-argmax flow, and one foreground logit. The last layer starts
at zero, so an untrained net outputs the soft-argmax flow and p = 0.5 everywhere. The same weights
run B -> A, giving u_BA and B's foreground logits in the same batched call.

With ``init_input=True`` the net refines a given starting flow instead (e.g. the pair's affine fit
to its mined matches; the caller computes it): the residual is added to that flow, and the net
sees it and the soft-argmax's difference from it in place of the soft-argmax displacement. An
untrained net then outputs the starting flow exactly.

L_flow's terms, one function each (pixels throughout; the method weighs them with w_s, w_f, w_m,
w_a, w_c): :func:`charbonnier_match_loss` (mined matches), :func:`edge_aware_tv`,
:func:`feature_consistency_loss`, :func:`mask_consistency_loss`, :func:`area_prior_loss`, and one
term that is ours, not the spec's: :func:`contrast_loss` (the spec's terms alone left the masks
empty on synthcorr; docs/BENCHMARKS.md (o2), (o3)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def correlation(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """The 4-D correlation of descriptor maps (N x D x Ha x Wa, N x D x Hb x Wb) as
    N x (Hb Wb) x Ha x Wa: channel k at cell p of A is <f_A(p), f_B(cell k of B)>."""
    n, _, ha, wa = fa.shape
    return torch.bmm(fb.flatten(2).transpose(1, 2), fa.flatten(2)).view(n, -1, ha, wa)


def normalized_centers(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h w) x 2 cell centres (x, y) in normalized coordinates (align_corners=False), row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def _to_pixels(image_size: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
    """(W / 2, H / 2) as a 1 x 2 x 1 x 1 tensor: normalized displacements -> pixels."""
    h, w = image_size
    return torch.tensor([w / 2.0, h / 2.0], dtype=ref.dtype, device=ref.device).view(1, 2, 1, 1)


@dataclass
class FlowOutput:
    flow_ab: torch.Tensor  # N x 2 x h x w, pixels
    flow_ba: torch.Tensor  # N x 2 x h x w, pixels
    logit_a: torch.Tensor  # N x 1 x h x w foreground logits of A
    logit_b: torch.Tensor  # N x 1 x h x w


class SemanticFlowNet(nn.Module):
    """Descriptor maps of A and B (L2-normalized, N x dim x h x w) -> :class:`FlowOutput` at the
    maps' resolution (flows in pixels of an ``image_size`` image). Design in the module docstring."""

    def __init__(self, dim: int, width: int = 64, topk: int = 8, temperature: float = 0.05,
                 init_input: bool = False) -> None:
        super().__init__()
        self.topk, self.init_input = topk, init_input
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        layers: list[nn.Module] = []
        c = (4 if init_input else 2) + topk + dim
        for d in (1, 2, 4, 1):
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def soft_argmax(self, corr: torch.Tensor, hb: int, wb: int) -> torch.Tensor:
        """N x 2 x ha x wa normalized displacement to the softmax-weighted mean of B's cells."""
        n, _, ha, wa = corr.shape
        prob = torch.softmax(corr / self.log_temperature.exp(), dim=1)
        target = torch.einsum("nkhw,kc->nchw", prob, normalized_centers(hb, wb, corr.device, corr.dtype))
        own = normalized_centers(ha, wa, corr.device, corr.dtype).T.reshape(1, 2, ha, wa)
        return target - own

    def one_way(self, fa: torch.Tensor, fb: torch.Tensor, image_size: tuple[int, int],
                init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow A -> B (pixels) and A's foreground logits; ``init`` (pixels, N x 2 x h x w, with
        ``init_input``) is the flow the residual refines."""
        hb, wb = fb.shape[-2:]
        corr = correlation(fa, fb)
        soft = self.soft_argmax(corr, hb, wb)
        top = corr.topk(min(self.topk, hb * wb), dim=1).values
        if top.shape[1] < self.topk:
            top = F.pad(top, (0, 0, 0, 0, 0, self.topk - top.shape[1]))
        px = _to_pixels(image_size, soft)
        if (init is not None) != self.init_input:
            raise ValueError("SemanticFlowNet: a starting flow is needed exactly when the net was built with init_input")
        if init is None:
            base, cues = soft, [soft]
        else:
            base = init.to(soft.dtype) / px
            cues = [base, soft - base]
        y = self.out(self.body(torch.cat([*cues, top, fa], 1)))
        return (base + y[:, :2]) * px, y[:, 2:]

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, image_size: tuple[int, int],
                init_ab: torch.Tensor | None = None, init_ba: torch.Tensor | None = None) -> FlowOutput:
        n = len(fa)
        init = None if init_ab is None else torch.cat([init_ab, init_ba])
        flow, logit = self.one_way(torch.cat([fa, fb]), torch.cat([fb, fa]), image_size, init)
        return FlowOutput(flow[:n], flow[n:], logit[:n], logit[n:])


# ---- warping --------------------------------------------------------------------------------------


def grid_points(h: int, w: int, image_size: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """1 x 2 x h x w pixel coordinates (x, y) of the cell centres of an h x w grid over the image."""
    ih, iw = image_size
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (ih / h)
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (iw / w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])[None]


def _normalize(p: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates (..., 2) -> grid_sample's (align_corners=False) normalized ones."""
    h, w = image_size
    return p * torch.tensor([2.0 / w, 2.0 / h], dtype=p.dtype, device=p.device) - 1


def warp(src: torch.Tensor, flow: torch.Tensor, image_size: tuple[int, int] | None = None,
         mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """``src`` (N x C x any size, covering the same image as the flow) sampled at p + u(p) for
    every cell p of the flow's grid: N x C x h x w. With the flow A -> B and src an image,
    descriptors or mask of B, this is B pulled back onto A's grid. ``image_size`` (H, W): the
    image whose pixels the flow counts in (default: the flow's own grid)."""
    h, w = flow.shape[-2:]
    image_size = image_size or (h, w)
    target = grid_points(h, w, image_size, flow.device, flow.dtype) + flow
    grid = _normalize(target.permute(0, 2, 3, 1), image_size)
    return F.grid_sample(src, grid.to(src.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


def inside(flow: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """N x 1 x h x w: whether p + u(p) lies inside the image, [0, W) x [0, H)."""
    h, w = flow.shape[-2:]
    ih, iw = image_size or (h, w)
    t = grid_points(h, w, (ih, iw), flow.device, flow.dtype) + flow
    return ((t[:, :1] >= 0) & (t[:, :1] < iw) & (t[:, 1:] >= 0) & (t[:, 1:] < ih))


def sample_at(field: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int],
              padding_mode: str = "border") -> torch.Tensor:
    """Bilinear lookup of a field N x C x h x w (covering the image) at pixel points N x P x 2:
    N x P x C."""
    grid = _normalize(points, image_size)[:, :, None, :].to(field.dtype)
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out[..., 0].transpose(1, 2)


def upsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A flow on a coarse grid -> the same flow on a ``size`` grid (values are image pixels, so
    only resampled, not rescaled)."""
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False)


# ---- L_flow ---------------------------------------------------------------------------------------


def charbonnier_match_loss(flow: torch.Tensor, pos_a: torch.Tensor, pos_b: torch.Tensor, valid: torch.Tensor,
                           image_size: tuple[int, int], eps: float = 0.1) -> torch.Tensor:
    """Mean over valid matches of rho(p + u(p) - q), rho(r) = sqrt(|r|^2 + eps^2) (pixels; u
    looked up bilinearly at p)."""
    u = sample_at(flow, pos_a, image_size)
    rho = ((pos_a + u - pos_b).square().sum(-1) + eps**2).sqrt()
    v = valid.to(rho.dtype)
    return (rho * v).sum() / v.sum().clamp_min(1.0)


def edge_aware_tv(flow: torch.Tensor, guide: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """Edge-aware total variation: |u(p + e) - u(p)|_1 weighted by exp(-beta |g(p + e) - g(p)|)
    (the guide's mean absolute difference over channels), over horizontal and vertical neighbours,
    averaged. ``guide`` (e.g. image A) is resized to the flow's grid (area averaging)."""
    if guide.shape[-2:] != flow.shape[-2:]:
        guide = F.interpolate(guide, size=flow.shape[-2:], mode="area")
    tv = flow.new_zeros(())
    for dim in (-1, -2):
        du = flow.diff(dim=dim).abs().sum(1)
        wgt = torch.exp(-beta * guide.diff(dim=dim).abs().mean(1))
        tv = tv + (wgt * du).mean()
    return tv


def feature_consistency_loss(fa: torch.Tensor, fb: torch.Tensor, flow: torch.Tensor, fg_a: torch.Tensor,
                             image_size: tuple[int, int]) -> torch.Tensor:
    """1 - cos(f_A(p), f_B(p + u(p))), averaged with weights ``fg_a`` (N x 1 x h x w, A's predicted
    foreground probability; the caller decides whether it carries gradients) over the cells whose
    target lies inside B. B's descriptors are sampled bilinearly and renormalized."""
    fbw = F.normalize(warp(fb, flow, image_size), dim=1)
    cos = (fa * fbw).sum(1, keepdim=True)
    wgt = fg_a * inside(flow, image_size).to(fg_a.dtype)
    return (wgt * (1 - cos)).sum() / wgt.sum().clamp_min(1e-6)


def mask_consistency_loss(logit_a: torch.Tensor, logit_b: torch.Tensor, flow: torch.Tensor,
                          image_size: tuple[int, int]) -> torch.Tensor:
    """BCE(mask_A(p), mask_B(p + u(p))): A's logits against B's foreground probability pulled back
    by the flow (0 outside B: outside the image is background), gradients into both."""
    target = warp(torch.sigmoid(logit_b), flow, image_size)
    return F.binary_cross_entropy_with_logits(logit_a, target)


def contrast_loss(fa: torch.Tensor, fb: torch.Tensor, logit_a: torch.Tensor, prior: float) -> torch.Tensor:
    """Figure-ground contrast (**[design]**, ours): BCE of A's foreground logits (N x 1 x h x w)
    against the cells whose mean similarity to B, <f_A(p), mean_q f_B(q)>, is among the lowest
    ``prior`` fraction of A's cells. B is mostly background, so those are the cells unlike most of
    B: the object. Descriptors are taken as given (the caller detaches them)."""
    s = (fa * fb.mean((2, 3), keepdim=True)).sum(1).flatten(1)  # N x hw
    k = max(1, round(prior * s.shape[1]))
    cut = s.kthvalue(k, dim=1, keepdim=True).values
    target = (s <= cut).to(logit_a.dtype).view_as(logit_a)
    return F.binary_cross_entropy_with_logits(logit_a, target)


def area_prior_loss(logit: torch.Tensor, prior: float) -> torch.Tensor:
    """(mean foreground probability of each image - prior)^2, averaged over images."""
    return (torch.sigmoid(logit).flatten(1).mean(1) - prior).square().mean()
