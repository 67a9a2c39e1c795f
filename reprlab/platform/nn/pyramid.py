"""Image pyramids and the multi-scale exposure network (Afifi et al., CVPR 2021).

- :func:`gaussian_pyramid`, :func:`laplacian_pyramid`, :func:`reconstruct`: Burt-Adelson pyramids
  with the 5-tap filter (.05 .25 .4 .25 .05), replicate borders. ``down`` blurs and keeps every
  second pixel (ceil(n / 2)); ``expand`` inserts zeros up to a given size and blurs with 4 x the
  filter. A Laplacian band is ``G_l - expand(G_{l+1})``, so reconstruction is exact for any size,
  odd or even (to float rounding).
- :class:`UNet`: MATLAB's ``unetLayers`` as the reference code uses it: 3 x 3 convolutions, two per
  stage, LeakyReLU 0.2, filters doubling per stage, 2 x 2 max-pool, 2 x 2 transposed convolutions
  up, skip concatenation, a 1 x 1 head; no BatchNorm, no dropout [unverified: the defaults].
- :class:`PyramidExposureNet`: one U-Net per level, coarse to fine::

      R_L = U_L(X_L); Up_L = TConv(R_L)
      R_l = U_l(X_l + Up_{l+1}) + Up_{l+1};  Up_l = TConv(R_l) for l >= 2
      Y = R_1

- :class:`SingleScaleNet`: one U-Net, the ablation at (about) the same parameter count.
- :class:`PatchDiscriminator`: blocks of [conv 4 x 4, stride 2], BatchNorm in block 2 only,
  LeakyReLU 0.01, a final 2 x 2 convolution to one logit (input side ``2 ** (blocks + 1)``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BURT_ADELSON = (0.05, 0.25, 0.4, 0.25, 0.05)


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5-tap blur of N x C x H x W, replicate borders."""
    k = torch.tensor(BURT_ADELSON, dtype=x.dtype, device=x.device) * gain ** 0.5
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then every second pixel: H x W -> ceil(H / 2) x ceil(W / 2)."""
    return _blur(x)[..., ::2, ::2]


def expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Burt-Adelson expand to ``size``: zeros between the samples, blurred with 4 x the filter."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, *size)
    up[..., ::2, ::2] = x[..., : (size[0] + 1) // 2, : (size[1] + 1) // 2]
    return _blur(up, gain=4.0)


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[G_1 = x, G_2, ..., G_levels], each ``down`` of the previous."""
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(down(pyr[-1]))
    return pyr


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[X_1 (finest band), ..., X_levels (the coarsest Gaussian level)]."""
    g = gaussian_pyramid(x, levels)
    return [g[i] - expand(g[i + 1], g[i].shape[-2:]) for i in range(levels - 1)] + [g[-1]]


def reconstruct(pyr: list[torch.Tensor]) -> torch.Tensor:
    """The image a Laplacian pyramid was built from (exact up to float rounding)."""
    x = pyr[-1]
    for band in reversed(pyr[:-1]):
        x = band + expand(x, band.shape[-2:])
    return x


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """``depth`` encoder stages of ``width * 2**i`` filters, a bridge, ``depth`` decoder stages;
    3 -> 3 channels. Input sides must be divisible by ``2 ** depth``."""

    def __init__(self, depth: int, width: int, channels: int = 3) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_double_conv(channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth))
        self.bridge = _double_conv(widths[depth - 1] if depth else channels, widths[depth])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bridge(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class PyramidExposureNet(nn.Module):
    """The paper's coarse-to-fine network over a Laplacian pyramid of ``len(depths)`` levels.
    ``depths`` / ``widths``: of U_1 (finest) ... U_L (coarsest). ``forward`` returns the output
    Y and [Up_2, ..., Up_L] (Up_l at the size of level l - 1), which the pyramid loss compares with
    the target's upsampled Gaussian levels."""

    def __init__(self, depths: list[int], widths: list[int]) -> None:
        super().__init__()
        if len(depths) != len(widths) or not depths:
            raise ValueError(f"one depth and one width per level, got depths {depths} and widths {widths}")
        self.levels = len(depths)
        self.nets = nn.ModuleList(UNet(d, w) for d, w in zip(depths, widths))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(3, 3, 2, stride=2) for _ in range(self.levels - 1))
        # inputs must survive levels - 1 halvings and then each level's U-Net
        self.multiple = max(2 ** (i + d) for i, d in enumerate(depths))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        bands = laplacian_pyramid(x, self.levels)
        r = self.nets[-1](bands[-1])
        ups: list[torch.Tensor] = []
        for level in reversed(range(self.levels - 1)):  # 0-based: the finer band being refined
            up = self.ups[level](r)
            ups.insert(0, up)
            r = self.nets[level](bands[level] + up) + up
        return r, ups


class SingleScaleNet(nn.Module):
    """One U-Net on the whole image (the ablation without the pyramid); no pyramid outputs."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.net = UNet(depth, width)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net(x), []


def single_scale_width(depth: int, target: int) -> int:
    """The U-Net width whose parameter count is closest to ``target`` (widths 2..256)."""
    return min(range(2, 257), key=lambda w: abs(parameter_count(UNet(depth, w)) - target))


def run_padded(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``net`` on ``x`` replicate-padded at the bottom and right to a multiple of ``net.multiple``;
    the output cropped back (pyramid outputs stay padded)."""
    m = net.multiple
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    y, ups = net(F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x)
    return y[..., :h, :w], ups


class PatchDiscriminator(nn.Module):
    """``len(widths)`` blocks of [conv 4 x 4, stride 2 (+ BatchNorm in block 2), LeakyReLU 0.01],
    then a 2 x 2 convolution to one logit per image. The paper: widths 8, 16, 32, 64, 128, 128,
    256 on 256 x 256 inputs."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(cin, w, 4, stride=2, padding=1))
            if i == 1:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.01))
            cin = w
        layers.append(nn.Conv2d(cin, 1, 2))
        self.net = nn.Sequential(*layers)
        self.side = 2 ** (len(widths) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)[:, 0]
