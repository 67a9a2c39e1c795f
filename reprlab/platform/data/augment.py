"""Joint geometric augmentation of image-to-image and dense-prediction samples.

A sample's input and its targets (a second image, a mask, an optical-flow field, keypoints) must
get the *same* crop and flip, or the target stops describing the input. :class:`JointAugment`
draws one affine map ``theta`` per sample; every ``warp_*`` function applies those maps to a whole
batch at once (one ``affine_grid`` + ``grid_sample``, or one batched matrix product, no
per-sample loop), and :func:`augment_sample` applies them to every entry of a batch by its kind.

Conventions, shared by every function here:

- ``theta`` (N x 2 x 3) is what ``F.affine_grid`` takes: it maps *output* normalized coordinates
  to *input* normalized coordinates, ``p_in = A p_out + t`` with ``A = theta[:, :, :2]`` and
  ``t = theta[:, :, 2]``. Coordinates are (x, y): column first.
- Normalized coordinates follow ``align_corners=False``: [-1, 1] spans the image edge to edge, and
  the centre of pixel i of W sits at ``(2i + 1) / W - 1``. Pixel coordinates (keypoints, flow
  vectors) put pixel i's centre at ``i + 0.5``, so ``u = 2x / W - 1`` at any resolution, and one
  theta serves entries stored at different resolutions.
- A random resized crop with half extents (w, h) in normalized units (a fraction of the image's
  width and height, at most 1) and centre (cx, cy) is ``[[w * flip, 0, cx], [0, h, cy]]``; a
  horizontal flip negates ``theta[:, 0, 0]`` (flip = -1), mirroring about the crop's centre.
- Outside the input, images and flows read zeros and masks read 0 / False (``padding_mode=
  "zeros"``); the crops :class:`JointAugment` draws lie inside the image, so only samples within
  half an input pixel of its edge blend with the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("image", "mask", "flow", "keypoints", "label", "other")


@dataclass(frozen=True)
class JointAugment:
    """Random resized crop to ``size`` x ``size`` plus a random horizontal flip (p = 0.5).

    The crop's area fraction ``s`` (uniform in ``scale``) and aspect ``r`` (log-uniform in
    ``ratio``) are relative to the input: half extents ``w = sqrt(s r)``, ``h = sqrt(s / r)`` in
    normalized units, each clipped to 1 (for a square input ``r`` is the crop's pixel w / h). So
    the maps need no input size, and a sample's entries may differ in resolution.
    """

    size: int
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < lo <= hi, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be 0 < lo <= hi, got {self.ratio}")

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n x 2 x 3 float32 maps on the generator's device, a function of its state only: five
        uniforms per sample, drawn whether or not ``flip`` is set (toggling it keeps the crops)."""
        u = torch.rand(n, 5, generator=gen, dtype=torch.float64, device=gen.device)
        s = self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + u[:, 1] * (hi - lo))
        w = (s * r).sqrt().clamp(max=1.0)
        h = (s / r).sqrt().clamp(max=1.0)
        cx = (1 - w) * (2 * u[:, 2] - 1)  # the crop [cx - w, cx + w] stays inside [-1, 1]
        cy = (1 - h) * (2 * u[:, 3] - 1)
        sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(w)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([w * sign, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
        return theta.float()

    def identity(self, n: int) -> torch.Tensor:
        """n x 2 x 3 maps of the whole image, unflipped (evaluation): a plain resize to ``size``."""
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(n, 1, 1)


def _inverse_linear(theta: torch.Tensor) -> torch.Tensor:
    """N x 2 x 2 inverse of theta's linear part (closed form: no solver, any device)."""
    a, b, c, d = theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1]
    det = a * d - b * c
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[:, None, None]


def _restore(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return y > 0.5
    return y.round().to(dtype)  # exact after "nearest"; the nearest integer after "bilinear"


def warp_images(x: torch.Tensor, theta: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """N x C x H x W -> N x C x size x size, sample i resampled through ``theta[i]``. Non-float
    input (masks, integer label maps; use ``mode="nearest"``) is sampled as float (float64 for 32-
    and 64-bit integers, exact to 2**53) and returned in its own dtype."""
    dtype = x.dtype
    work = dtype if dtype.is_floating_point else (torch.float64 if dtype in (torch.int32, torch.int64) else torch.float32)
    y = x.to(work)
    grid = F.affine_grid(theta.to(y.device, work), [x.shape[0], x.shape[1], size, size], align_corners=False)
    y = F.grid_sample(y, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return y if dtype.is_floating_point else _restore(y, dtype)


def warp_masks(m: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """N x H x W masks or label maps (bool, integer or float) -> N x size x size, nearest
    neighbour (no blended labels), same dtype."""
    return warp_images(m.unsqueeze(1), theta, size, mode="nearest").squeeze(1)


def warp_flow(flow: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """N x 2 x H x W flow (pixel displacements (dx, dy) from a pixel of the first image to its
    match in the second) -> N x 2 x size x size, for a pair whose two images both get ``theta``.

    A point p' of the output maps to p = T(p') in the input; its match p + f(p) maps back to
    T^-1(p + f(p)), so the output flow is f'(p') = L^-1 f(T(p')), with L the linear part of T in
    pixel units: the field is resampled at the warped positions (bilinear) and each vector is
    multiplied by ``diag(size / 2) A^-1 diag(2 / W, 2 / H)``. A flip thus negates dx, and
    zooming in by k scales vectors by k.
    """
    h, w = flow.shape[-2:]
    f = warp_images(flow, theta, size)
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=f.dtype, device=f.device)
    m = (size / 2) * _inverse_linear(theta.to(f)) * to_norm  # scales A^-1's columns: A^-1 diag(2/W, 2/H)
    return torch.einsum("nij,njhw->nihw", m, f)


def warp_keypoints(kp: torch.Tensor, theta: torch.Tensor, in_hw: tuple[int, int], size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x K x 2 pixel coordinates (x, y) in an H x W input (pixel centres at i + 0.5) -> the
    same points in the size x size output frame, and an N x K visibility mask (False when a point
    falls outside [0, size) in x or y, or is NaN)."""
    h, w = in_hw
    theta = theta.to(kp)
    u = kp * torch.tensor([2.0 / w, 2.0 / h], dtype=kp.dtype, device=kp.device) - 1
    u_out = torch.einsum("nij,nkj->nki", _inverse_linear(theta), u - theta[:, None, :, 2])
    out = (u_out + 1) * (size / 2)
    return out, ((out >= 0) & (out < size)).all(-1)


def augment_sample(batch: dict[str, torch.Tensor], theta: torch.Tensor, size: int,
                   kinds: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every entry of ``batch`` warped by its kind with the same per-sample ``theta``, so inputs
    and targets get the same crop and flip.

    Kinds: ``"image"`` (N x C x H x W, bilinear), ``"mask"`` (N x H x W, nearest, dtype kept),
    ``"flow"`` (N x 2 x H x W, :func:`warp_flow`), ``"keypoints"`` (N x K x 2 pixel coordinates in
    the frame of the first image entry, else of the first mask or flow entry; also returns
    ``key + "_visible"``, and-ed with an input ``key + "_visible"`` if the batch has one),
    ``"label"`` / ``"other"`` (unchanged). Every entry needs a kind: a target left out would keep
    its unaugmented geometry silently. ``kinds`` may name entries the batch lacks.
    """
    bad = {k: v for k, v in kinds.items() if v not in KINDS}
    if bad:
        raise ValueError(f"unknown kinds {bad}; expected one of {KINDS}")
    prior = {k + "_visible" for k, v in kinds.items() if v == "keypoints" and k in batch}
    missing = [k for k in batch if k not in kinds and k not in prior]
    if missing:
        raise ValueError(f"no kind given for batch entries {missing}")
    frame = None
    for wanted in ("image", "mask", "flow"):
        frame = frame or next((tuple(v.shape[-2:]) for k, v in batch.items() if kinds.get(k) == wanted), None)

    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        kind = kinds.get(key) if key not in prior else None
        if kind == "image":
            out[key] = warp_images(value, theta, size)
        elif kind == "mask":
            out[key] = warp_masks(value, theta, size)
        elif kind == "flow":
            out[key] = warp_flow(value, theta, size)
        elif kind == "keypoints":
            if frame is None:
                raise ValueError(f"keypoints {key!r} need an image, mask or flow entry for their frame")
            out[key], visible = warp_keypoints(value, theta, frame, size)
            seen = batch.get(key + "_visible")
            out[key + "_visible"] = visible if seen is None else visible & seen.to(visible.device, torch.bool)
        elif kind in ("label", "other"):
            out[key] = value
    return out
