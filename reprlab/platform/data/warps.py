"""Smooth random geometric warps, batched: drawing them, evaluating them at points, composing
them, and sampling images through the coordinate maps they produce.

A warp here is a *coordinate map*: it takes points of one frame (the image being rendered) to
points of another (the image or template read from), as ``grid_sample`` wants it. Rendering an
image through a warp ``W`` reads the source at ``W(p)`` for every output pixel ``p``; a point
``p`` of the output corresponds to ``W(p)`` of the source, so no warp is ever inverted.

Conventions (the same as :mod:`reprlab.platform.data.augment`):

- Points are (x, y), column first, in **normalized** coordinates with ``align_corners=False``:
  [-1, 1] spans the image edge to edge and the centre of pixel i of W sits at ``(2i + 1) / W - 1``.
- **Pixel** coordinates put the centre of pixel i at ``i + 0.5`` (edges at integers), so
  ``u = 2x / W - 1``; keypoints and flow vectors are in pixels.
- :func:`sample` uses ``grid_sample(..., align_corners=False)``; points outside the source read
  zeros (``padding="zeros"``) or the nearest edge value (``"border"``).

:class:`SmoothWarp` is ``p -> s R (p + D(p)) + t``: a displacement field ``D`` interpolated
bicubically (``grid_sample`` ``mode="bicubic"``, ``align_corners=True``: the control points sit
on a g x g lattice from edge to edge, held constant beyond it) from Gaussian offsets at the
control points, then a rotation ``R``, an isotropic scale ``s`` and a shift ``t``. Everything
random comes from the ``torch.Generator`` passed in, never from the global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Warp = Callable[[torch.Tensor], torch.Tensor]  # N x ... x 2 points -> N x ... x 2 points


@dataclass(frozen=True)
class WarpSpec:
    """The distribution of a random :class:`SmoothWarp`. ``sigma``: std of the control-point
    offsets as a fraction of the image side; ``rotation``: uniform in +-degrees; ``scale``:
    uniform in [lo, hi]; ``shift``: uniform in +- that fraction of the side, per axis."""

    sigma: float
    rotation: float
    scale: tuple[float, float]
    shift: float
    grid: int = 4


@dataclass(frozen=True)
class SmoothWarp:
    """N warps ``p -> s R (p + D(p)) + t`` in normalized coordinates. ``linear`` (N x 2 x 2) is
    ``s R``, ``shift`` (N x 2) is ``t``, ``control`` (N x 2 x g x g) holds ``D``'s (dx, dy) at the
    control lattice (row = y, column = x)."""

    linear: torch.Tensor
    shift: torch.Tensor
    control: torch.Tensor

    def __len__(self) -> int:
        return len(self.linear)

    def displacement(self, points: torch.Tensor) -> torch.Tensor:
        """``D`` at N x ... x 2 points (bicubic in the lattice, constant beyond it)."""
        n = len(points)
        flat = points.reshape(n, 1, -1, 2).to(self.control.dtype)
        d = F.grid_sample(self.control, flat, mode="bicubic", padding_mode="border", align_corners=True)
        return d[:, :, 0].transpose(1, 2).reshape(points.shape)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        moved = points + self.displacement(points)
        n = len(points)
        flat = moved.reshape(n, -1, 2)
        out = flat @ self.linear.transpose(1, 2) + self.shift[:, None]
        return out.reshape(points.shape)

    def __getitem__(self, index) -> SmoothWarp:
        return SmoothWarp(self.linear[index], self.shift[index], self.control[index])


def random_warp(n: int, spec: WarpSpec, generator: torch.Generator) -> SmoothWarp:
    """N random warps of ``spec`` (a fixed number of draws from ``generator`` per call)."""
    g = spec.grid
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    control = torch.randn(n, 2, g, g, generator=generator, dtype=torch.float64) * (2 * spec.sigma)
    angle = (2 * u[:, 0] - 1) * math.radians(spec.rotation)
    lo, hi = spec.scale
    s = lo + (hi - lo) * u[:, 1]
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    linear = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shift = (2 * u[:, 2:4] - 1) * (2 * spec.shift)  # a fraction of the side = 2 normalized units
    return SmoothWarp(linear.float(), shift.float(), control.float())


def replace_rows(warp: SmoothWarp, rows: torch.Tensor, new: SmoothWarp) -> SmoothWarp:
    """``warp`` with rows ``rows`` taken from ``new`` (one row of ``new`` per index)."""
    parts = []
    for k in ("linear", "shift", "control"):
        v = getattr(warp, k).clone()
        v[rows] = getattr(new, k)
        parts.append(v)
    return SmoothWarp(*parts)


def compose(*warps: Warp) -> Warp:
    """``compose(f, g)(p) = f(g(p))``: the rightmost warp is applied first. For coordinate maps
    ``g: frame A -> frame B`` and ``f: frame B -> template``, ``compose(f, g)`` maps A to the
    template."""

    def chained(points: torch.Tensor) -> torch.Tensor:
        for w in reversed(warps):
            points = w(points)
        return points

    return chained


def pixel_grid(height: int, width: int | None = None, n: int | None = None) -> torch.Tensor:
    """Normalized (x, y) of every pixel centre, H x W x 2 (N x H x W x 2 with ``n``)."""
    width = height if width is None else width
    xs = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)
    return grid if n is None else grid.expand(n, height, width, 2)


def to_pixels(points: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Normalized (x, y) -> pixel (x, y) (pixel i's centre at i + 0.5)."""
    width = height if width is None else width
    scale = points.new_tensor([width / 2, height / 2])
    return (points + 1) * scale


def to_normalized(points: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Pixel (x, y) -> normalized (x, y); the inverse of :func:`to_pixels`."""
    width = height if width is None else width
    scale = points.new_tensor([2 / width, 2 / height])
    return points * scale - 1


def displacement_field(warp: Warp, n: int, height: int, width: int | None = None) -> torch.Tensor:
    """N x 2 x H x W pixel displacements ``warp(p) - p`` at every pixel centre ``p``, for a warp
    between two frames of the same size (a flow field: pixel p of the first frame corresponds to
    p + flow(p) of the second)."""
    width = height if width is None else width
    grid = pixel_grid(height, width, n)
    moved = warp(grid)
    return (to_pixels(moved, height, width) - to_pixels(grid, height, width)).permute(0, 3, 1, 2).contiguous()


def sample(images: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Read N x C x h x w ``images`` at N x H x W x 2 normalized ``coords`` -> N x C x H x W
    (``align_corners=False``)."""
    return F.grid_sample(images, coords.to(images.dtype), mode=mode, padding_mode=padding, align_corners=False)


def sample_bank(bank: torch.Tensor, index: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
                padding: str = "zeros") -> torch.Tensor:
    """Read entry ``index[i]`` of a K x C x h x w ``bank`` at ``coords[i]`` (N x H x W x 2) for every
    i, one ``grid_sample`` per distinct entry (so the bank is never copied N times)."""
    n, h, w, _ = coords.shape
    out = bank.new_zeros(n, bank.shape[1], h, w)
    for k in torch.unique(index).tolist():
        rows = torch.nonzero(index == k).flatten()
        grid = coords[rows].reshape(1, len(rows) * h, w, 2)
        got = sample(bank[k : k + 1], grid, mode, padding)
        out[rows] = got.reshape(bank.shape[1], len(rows), h, w).transpose(0, 1)
    return out


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """N x H x W masks -> N x 4 boxes (x0, y0, x1, y1) in pixel edges (NaN for an empty mask)."""
    m = mask.bool()
    n, h, w = m.shape
    cols, rows = m.any(1), m.any(2)
    xs = torch.arange(w, device=m.device, dtype=torch.float32)
    ys = torch.arange(h, device=m.device, dtype=torch.float32)
    inf = torch.tensor(float("inf"), device=m.device)
    x0 = torch.where(cols, xs, inf).amin(1)
    x1 = torch.where(cols, xs, -inf).amax(1) + 1
    y0 = torch.where(rows, ys, inf).amin(1)
    y1 = torch.where(rows, ys, -inf).amax(1) + 1
    box = torch.stack([x0, y0, x1, y1], 1)
    return torch.where(m.flatten(1).any(1)[:, None], box, float("nan"))
