"""Small batched image operations shared by generated data sets: colour spaces, edges, binary
dilation, and pasting tiles under elliptical masks.

Every function takes and returns torch tensors with a leading batch dimension (images N x C x H x W
in [0, 1], masks N x H x W bool) and runs vectorized over the batch. Pixel coordinates follow
:mod:`reprlab.platform.data.warps`: (x, y), the centre of pixel i at i + 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # Rec. 601, as YCbCr's Y


def luminance(img: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma (Rec. 601 weights) of N x 3 x H x W RGB."""
    w = img.new_tensor(LUMA).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB in [0, 1] -> HSV with hue in [0, 1) (a full turn = 1), saturation and value
    in [0, 1]. Grey pixels get hue 0 and saturation 0."""
    r, g, b = img.unbind(1)
    v, arg = img.max(1)
    c = v - img.min(1).values
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(arg == 0, ((g - b) / safe) % 6, torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h % 1.0, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv` (hue taken modulo 1)."""
    h, s, v = hsv.unbind(1)
    # channel r, g, b: v - v s max(0, min(k, 4 - k, 1)) with k = (5, 3, 1) + 6h modulo 6
    k = (torch.arange(3, device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1) * -2 + 5 + h[:, None] * 6) % 6
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def rotate_hue(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """RGB with every pixel's HSV hue turned by ``degrees`` (saturation and value kept)."""
    hsv = rgb_to_hsv(img)
    return hsv_to_rgb(torch.cat([(hsv[:, :1] + degrees / 360.0) % 1.0, hsv[:, 1:]], 1))


def _shifts(x: torch.Tensor, radius: int, dim: int) -> list[torch.Tensor]:
    """The 2r + 1 views of ``x`` shifted by -r..r along ``dim`` (-1: x, -2: y), edges replicated."""
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    p = F.pad(x, pad, mode="replicate")
    size = x.shape[dim]
    return [p.narrow(dim, k, size) for k in range(2 * radius + 1)]


def box_blur(img: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Mean over the (2r + 1)^2 window of every pixel (edges replicated; separable shifted sums,
    much faster than a pooling kernel on the CPU for small windows)."""
    rows = torch.stack(_shifts(img, radius, -1)).sum(0)
    return torch.stack(_shifts(rows, radius, -2)).sum(0) / (2 * radius + 1) ** 2


def sobel_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W gradient magnitude of N x 1 x H x W (Sobel kernels / 8: a ramp of slope 1 per
    pixel gives 1; edges replicated; separable)."""
    left, mid, right = _shifts(gray, 1, -1)
    dx, sx = right - left, left + 2 * mid + right  # x derivative, x smoothing
    up, _, down = _shifts(dx, 1, -2)
    gx = (up + 2 * dx + down) / 8
    up, _, down = _shifts(sx, 1, -2)
    gy = (down - up) / 8
    return (gx.square() + gy.square()).sqrt()


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """N x H x W bool masks grown by a (2r + 1)^2 square (Chebyshev distance <= r)."""
    if radius <= 0:
        return mask.clone()
    m = mask[:, None].to(torch.uint8)
    rows = torch.stack(_shifts(m, radius, -1)).amax(0)
    return torch.stack(_shifts(rows, radius, -2)).amax(0)[:, 0] > 0


def ellipse_distance(height: int, width: int, centre: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """N x H x W approximate signed distance in pixels from each pixel centre to N axis-aligned
    ellipses (``centre`` N x 2 (x, y), ``radii`` N x 2 (rx, ry), in pixels): negative inside. The
    first-order distance (rho - 1) / |grad rho| of the normalized radius rho; exact on circles and
    at the ends of the axes."""
    xs = torch.arange(width, dtype=centre.dtype, device=centre.device) + 0.5
    ys = torch.arange(height, dtype=centre.dtype, device=centre.device) + 0.5
    rx, ry = radii[:, 0, None, None], radii[:, 1, None, None]
    u = (xs[None, None, :] - centre[:, 0, None, None]) / rx  # N x 1 x W
    v = (ys[None, :, None] - centre[:, 1, None, None]) / ry  # N x H x 1
    rho2 = u.square() + v.square()  # N x H x W
    grad2 = (u / rx).square() + (v / ry).square()
    # (rho - 1) / (|grad rho|) with |grad rho| = sqrt(grad2) / rho
    rho = rho2.sqrt_()
    d = (rho - 1).mul_(rho).div_(grad2.sqrt_().clamp_min_(1e-12))
    return torch.where(rho > 1e-6, d, -radii.min(1).values[:, None, None])


def ellipse_alpha(height: int, width: int, centre: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """N x H x W coverage of filled ellipses with a one-pixel linear edge: 1 inside, 0 from half a
    pixel outside the boundary."""
    return (0.5 - ellipse_distance(height, width, centre, radii)).clamp(0, 1)


def band_alpha(height: int, width: int, centre: torch.Tensor, radii: torch.Tensor, thickness: float
               ) -> torch.Tensor:
    """N x H x W coverage of an elliptical band (a ring or outline) ``thickness`` pixels wide,
    centred on the ellipses' boundaries, with a one-pixel linear edge."""
    d = ellipse_distance(height, width, centre, radii).abs()
    return (thickness / 2 + 0.5 - d).clamp(0, 1)


def paste_under_ellipse(canvas: torch.Tensor, tiles: torch.Tensor, index: torch.Tensor, centre: torch.Tensor,
                        size: torch.Tensor, colour: torch.Tensor | None = None, axes: tuple[float, float] = (1.0, 1.0),
                        present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste tile ``index[i]`` of ``tiles`` (K x C x h x w, C = 1 or the canvas's channels) onto
    ``canvas[i]`` (N x 3 x H x W), stretched (bilinear) to a box of ``size[i]`` = (w, h) pixels
    centred at ``centre[i]`` = (x, y), seen through the ellipse inscribed in that box with its
    axes scaled by ``axes`` (1, 1: touching the box's sides). ``colour`` (N x 3) multiplies the
    tile (a tint); rows where ``present`` (N bool) is False are left as they are. Returns the
    composite (a new tensor) and the alpha (N x H x W): pixels with alpha 0 keep the canvas's
    exact values.

    One ``grid_sample`` over the rows present (the tiles are gathered per row, so K is never
    copied N times at canvas size)."""
    n, _, height, width = canvas.shape
    out = canvas.clone()
    alpha = canvas.new_zeros(n, height, width)
    rows = torch.arange(n, device=canvas.device) if present is None else torch.nonzero(present).flatten()
    if not len(rows):
        return out, alpha
    centre, half = centre[rows].to(canvas.dtype), size[rows].to(canvas.dtype) / 2
    a = ellipse_alpha(height, width, centre, half * half.new_tensor(axes))
    xs = torch.arange(width, dtype=canvas.dtype, device=canvas.device) + 0.5
    ys = torch.arange(height, dtype=canvas.dtype, device=canvas.device) + 0.5
    m = len(rows)
    gx = ((xs[None, :] - centre[:, :1]) / half[:, :1])[:, None, :].expand(m, height, width)  # tile frame, [-1, 1]
    gy = ((ys[None, :] - centre[:, 1:]) / half[:, 1:])[:, :, None].expand(m, height, width)
    tile = F.grid_sample(tiles[index[rows]].to(canvas.dtype), torch.stack([gx, gy], -1), mode="bilinear",
                         padding_mode="border", align_corners=False)
    if colour is not None:
        tile = tile * colour[rows][:, :, None, None].to(canvas.dtype)
    base = canvas[rows]
    out[rows] = base + a[:, None] * (tile - base)
    alpha[rows] = a
    return out, alpha
