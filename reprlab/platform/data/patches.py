"""Training patches of input/target image pairs: cut from stored pairs, or rendered on the fly by
the simulated camera from target photos (:mod:`reprlab.platform.data.camera`).

Both return dicts of N x 3 x patch x patch float tensors in [0, 1] (``input``, ``target``) plus
``ev`` and ``scene`` (N), a function of the torch generator they are given only, so a global batch
drawn from a generator seeded by (seed, epoch, iteration) is the same on one worker or many, and
after a resume.

- :class:`SimulatedExposures`: per sample a scene, a square crop of 0.5 to 1 of its shorter valid
  side (resized to the patch), one of the 8 flips/90-degree rotations, a channel permutation and a
  hue rotation of the target photo, then the camera at a random EV with random red/blue gains in
  [0.9, 1.1]. Candidates failing the patch filter are replaced by the next candidates.
- :class:`StoredPatches`: a random native-resolution crop of a stored pair (joint horizontal
  flip), as the reference code cuts its training patches.
- :func:`patch_filter` (the code's ``randPatchExtraction.m``): a patch is rejected when its
  channel-summed mean is below 0.02, its mean above 0.98, or its mean Sobel gradient magnitude
  (of the channel mean) below 0.06.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.platform.data.camera import EVS, expose, quantize, scene_of_photo
from reprlab.platform.data.types import ImageSet

DARK, BRIGHT, FLAT = 0.02, 0.98, 0.06
PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))
CANDIDATES = 2  # candidates drawn per wanted patch before the filter


def patch_filter(x: torch.Tensor) -> torch.Tensor:
    """N booleans: the patches (N x 3 x h x w in [0, 1]) the reference code keeps."""
    mean = x.mean((2, 3))
    gray = x.mean(1, keepdim=True)
    sx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
    g = torch.cat([F.conv2d(gray, sx.view(1, 1, 3, 3)), F.conv2d(gray, sx.T.reshape(1, 1, 3, 3))], 1)
    grad = g.pow(2).sum(1).sqrt().mean((1, 2))
    return (mean.sum(1) >= DARK) & (mean.mean(1) <= BRIGHT) & (grad >= FLAT)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """N x 3 x 3 rotations of RGB about the grey axis (Rodrigues)."""
    k = torch.full((3,), 1 / math.sqrt(3), dtype=angle.dtype)
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=angle.dtype)
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return c * torch.eye(3, dtype=angle.dtype) + s * kx + (1 - c) * torch.outer(k, k)


def _dihedral(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Sample i transformed by the code[i]-th of the 8 flips / 90-degree rotations (square x)."""
    out = x.clone()
    for c in range(1, 8):
        m = code == c
        if m.any():
            y = x[m].rot90(c % 4, (2, 3))
            out[m] = y.flip(3) if c >= 4 else y
    return out


class SimulatedExposures:
    """Renders (input, target) patches from target photos: uint8 S x H x W x 3 (padded), valid
    ``heights`` / ``widths`` (S) and a scene id per photo."""

    def __init__(self, photos: np.ndarray, heights: np.ndarray, widths: np.ndarray, scenes: np.ndarray) -> None:
        self.photos = torch.from_numpy(np.ascontiguousarray(photos)).permute(0, 3, 1, 2)
        self.heights, self.widths = torch.as_tensor(heights), torch.as_tensor(widths)
        self.scenes = torch.as_tensor(scenes)

    @classmethod
    def from_pairs(cls, images: ImageSet) -> SimulatedExposures:
        """The distinct target photos of a paired in-memory set (one per ``meta['scene']``)."""
        target = images.target
        if target is None or target.pixels is None:
            raise ValueError("simulated exposures need a paired set with targets in memory")
        n, h, w = target.pixels.shape[:3]
        scene = images.meta.get("scene", np.arange(n))
        _, first = np.unique(scene, return_index=True)
        heights = images.meta.get("height", np.full(n, h))[first]
        widths = images.meta.get("width", np.full(n, w))[first]
        return cls(target.pixels[first], heights, widths, np.asarray(scene)[first])

    def _candidates(self, n: int, patch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
        which = torch.randint(0, len(self.photos), (n,), generator=gen)
        code = torch.randint(0, 8, (n,), generator=gen)
        perm = torch.randint(0, 6, (n,), generator=gen)
        ev = torch.tensor(EVS)[torch.randint(0, len(EVS), (n,), generator=gen)]
        h, w = self.heights[which].double(), self.widths[which].double()
        side = (0.5 + 0.5 * u[:, 0]) * torch.minimum(h, w)
        top, left = (h - side) * u[:, 1], (w - side) * u[:, 2]
        big_h, big_w = self.photos.shape[2:]
        # affine_grid maps output [-1, 1] to input normalized coordinates (align_corners=False)
        sx, sy = side / big_w, side / big_h
        cx, cy = (2 * left + side) / big_w - 1, (2 * top + side) / big_h - 1
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1).float()
        src = self.photos[which].float() / 255
        grid = F.affine_grid(theta, [n, 3, patch, patch], align_corners=False)
        x = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = _dihedral(x, code)
        mix = _hue_rotation((2 * u[:, 3] - 1) * math.pi).float() @ torch.eye(3)[PERMUTATIONS[perm]]
        target = quantize(torch.einsum("nij,njhw->nihw", mix, x).clamp(0, 1))
        wb = (0.9 + 0.2 * u[:, 4:6]).float()
        noise = torch.randn(target.shape, generator=gen)
        return {"input": expose(scene_of_photo(target), ev, wb, noise), "target": target, "ev": ev,
                "scene": self.scenes[which]}

    def sample(self, n: int, patch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cand = self._candidates(CANDIDATES * n, patch, gen)
        keep = patch_filter(cand["target"])
        order = torch.argsort((~keep).to(torch.int8), stable=True)[:n]  # accepted first, in draw order
        return {k: v[order] for k, v in cand.items()}


class StoredPatches:
    """Native-resolution crops of stored pairs (files or pixels), a joint horizontal flip; a pair
    smaller than the patch is resized up first."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images
        self.ev = images.meta.get("ev")
        self.scene = images.meta.get("scene")

    def _pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = self.images
        out = []
        for s in (imgs, imgs.target):
            px = s.pixels[i] if s.pixels is not None else np.asarray(s.load(i))
            out.append(torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1).float() / 255)
        x, t = out
        if "height" in imgs.meta:
            h, w = int(imgs.meta["height"][i]), int(imgs.meta["width"][i])
            x, t = x[:, :h, :w], t[:, :h, :w]
        return x, t

    def sample(self, index: np.ndarray, patch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        u = torch.rand(len(index), 3, generator=gen, dtype=torch.float64)
        xs, ts = [], []
        for k, i in enumerate(index):
            x, t = self._pair(int(i))
            h, w = x.shape[-2:]
            if min(h, w) < patch:
                scale = patch / min(h, w)
                size = (max(patch, math.ceil(h * scale)), max(patch, math.ceil(w * scale)))
                x, t = (F.interpolate(v[None], size=size, mode="bilinear", align_corners=False)[0] for v in (x, t))
                h, w = size
            top, left = int(u[k, 0] * (h - patch + 1)), int(u[k, 1] * (w - patch + 1))
            x, t = x[:, top : top + patch, left : left + patch], t[:, top : top + patch, left : left + patch]
            if u[k, 2] < 0.5:
                x, t = x.flip(-1), t.flip(-1)
            xs.append(x)
            ts.append(t)
        out = {"input": torch.stack(xs), "target": torch.stack(ts)}
        out["ev"] = torch.as_tensor(self.ev[index]).float() if self.ev is not None else torch.zeros(len(index))
        out["scene"] = torch.as_tensor(self.scene[index]) if self.scene is not None else torch.as_tensor(index)
        return out
