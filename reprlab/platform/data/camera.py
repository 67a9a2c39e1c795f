"""A simulated camera for exposure correction: a rendered photo back to linear light, then
re-exposed, noisy, clipped and 8-bit, as a camera at the wrong exposure would record it.

The constants are fixed here (``specs/exposure.md``, "Simulation"); every function is a batched
torch operation on N x 3 x H x W tensors in [0, 1], so training batches are rendered on the fly.

- ``finish(y) = y + 0.6 y (1 - y) (2y - 1)``: Expert C's S-curve, monotone on [0, 1] and inverted
  by table lookup (:func:`unfinish`). A shipped photo is Expert C's rendering, so its scene is
  ``L = srgb_to_linear(unfinish(photo))``.
- Experts A, B, D, E: four fixed variants of the C rendering (contrast, white balance +-5 %,
  gamma +-0.1), :data:`EXPERTS`.
- The input at EV ``e``: ``E = wb * L * 2**e`` (per-scene red/blue gains), plus noise
  N(0, 0.01**2 E + 0.002**2), clipped to [0, 1], the plain sRGB curve (a flatter "camera" look than
  the experts'), quantized to 8 bits. Over-exposure loses what clipping removed; under-exposure
  what noise and quantization removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EVS = (-1.5, -1.0, 0.0, 1.0, 1.5)
EV_NAMES = ("N1.5", "N1", "0", "P1", "P1.5")  # the real data's file suffixes
CONTRAST = 0.6
SHOT, READ = 0.01, 0.002


@dataclass(frozen=True)
class Expert:
    """A rendering of linear light: white balance (R, G, B gains), sRGB, S-curve of ``contrast``,
    then a gamma ``1 + gamma_shift``."""

    contrast: float
    wb: tuple[float, float, float]
    gamma_shift: float


EXPERTS = {  # C is the shipped photo itself; the others are fixed variants of it
    "a": Expert(0.35, (1.05, 1.0, 0.96), 0.1),
    "b": Expert(0.80, (0.97, 1.0, 1.05), -0.05),
    "c": Expert(CONTRAST, (1.0, 1.0, 1.0), 0.0),
    "d": Expert(0.50, (1.0, 1.0, 0.95), -0.1),
    "e": Expert(0.70, (1.04, 1.0, 1.0), 0.05),
}


def finish(y: torch.Tensor, contrast: float = CONTRAST) -> torch.Tensor:
    return y + contrast * y * (1 - y) * (2 * y - 1)


_TABLE = 4096


def unfinish(y: torch.Tensor, contrast: float = CONTRAST) -> torch.Tensor:
    """The inverse of :func:`finish` on [0, 1] by linear interpolation in a 4,097-entry table."""
    grid = torch.linspace(0, 1, _TABLE + 1, dtype=torch.float64)
    values = finish(grid, contrast)
    y64 = y.double().clamp(0, 1)
    i = torch.searchsorted(values, y64.reshape(-1).contiguous()).clamp(1, _TABLE).view_as(y64)
    lo, hi = values[i - 1], values[i]
    t = (y64 - lo) / (hi - lo).clamp_min(1e-12)
    return ((i - 1 + t) / _TABLE).to(y.dtype)


def srgb_to_linear(y: torch.Tensor) -> torch.Tensor:
    y = y.clamp(0, 1)
    return torch.where(y <= 0.04045, y / 12.92, ((y + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def quantize(y: torch.Tensor) -> torch.Tensor:
    """To 8 bits and back: round(255 y) / 255."""
    return (y.clamp(0, 1) * 255).round() / 255


def scene_of_photo(photo: torch.Tensor) -> torch.Tensor:
    """Linear light of a photo rendered by Expert C."""
    return srgb_to_linear(unfinish(photo))


def render_expert(linear: torch.Tensor, name: str) -> torch.Tensor:
    """Expert ``name``'s 8-bit rendering of linear light."""
    e = EXPERTS[name]
    wb = torch.tensor(e.wb, dtype=linear.dtype, device=linear.device).view(1, 3, 1, 1)
    y = finish(linear_to_srgb(linear * wb), e.contrast).clamp(0, 1) ** (1 + e.gamma_shift)
    return quantize(y)


def expose(linear: torch.Tensor, ev: torch.Tensor, wb: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The camera's 8-bit sRGB image of linear light at ``ev`` stops (N), with per-image R/B gains
    ``wb`` (N x 2) and standard normal ``noise`` (like ``linear``)."""
    gains = torch.stack([wb[:, 0], torch.ones_like(wb[:, 0]), wb[:, 1]], 1)[:, :, None, None]
    e = linear * gains * torch.pow(2.0, ev.to(linear.dtype))[:, None, None, None]
    e = e + noise * (SHOT**2 * e.clamp_min(0) + READ**2).sqrt()
    return quantize(linear_to_srgb(e.clamp(0, 1)))
