"""Convolutional encoders and decoders of spatial codes, a diagonal Gaussian code, and the
two-encoder autoencoder of appearance / pose disentangling (Esser, Haux, Ommer, ICCV 2019; the
layout of the reference code's ``rodi/pt/models.py``, with its residual blocks made non-linear).

- :class:`ResBlock`: ``x + conv3x3(relu(x))``. The reference's block computed the activation and
  discarded it, so every residual branch was linear (docs/DEPARTURES.md).
- :class:`ConvEncoder`: conv 3x3, then ``downs`` x [residual block + conv 4x4 stride 2] with the
  width doubling (capped), then ``blocks`` residual blocks, ReLU, conv 3x3.
- :class:`ConvDecoder`: conv 3x3, ``blocks`` residual blocks, then ``ups`` x [residual block +
  conv to 4C' + PixelShuffle x2] with the width halving, a residual block and a conv 3x3.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.relu(x))


def _widths(width: int, max_width: int, steps: int) -> list[int]:
    """Widths after 0..steps halvings of resolution: ``width`` doubling, capped at ``max_width``."""
    return [min(max_width, width * 2**i) for i in range(steps + 1)]


class ConvEncoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int, max_width: int, downs: int, blocks: int) -> None:
        super().__init__()
        w = _widths(width, max_width, downs)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w[0], 3, padding=1)]
        for i in range(downs):
            layers += [ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1)]
        layers += [ResBlock(w[-1]) for _ in range(blocks)]
        layers += [nn.ReLU(), nn.Conv2d(w[-1], out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvDecoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int, max_width: int, ups: int, blocks: int) -> None:
        super().__init__()
        w = _widths(width, max_width, ups)[::-1]  # coarse to fine
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w[0], 3, padding=1)]
        layers += [ResBlock(w[0]) for _ in range(blocks)]
        for i in range(ups):
            layers += [ResBlock(w[i]), nn.Conv2d(w[i], 4 * w[i + 1], 3, padding=1), nn.PixelShuffle(2)]
        layers += [ResBlock(w[-1]), nn.Conv2d(w[-1], out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class DiagonalGaussian:
    """N(mean, diag exp(logvar)) from parameters split along the channels (log-variance clamped
    to [-30, 10], as in the reference)."""

    def __init__(self, params: torch.Tensor) -> None:
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 10.0)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over the code."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class AppearancePoseAutoencoder(nn.Module):
    """E_pi (a diagonal Gaussian pose code), E_alpha (a deterministic appearance code), the decoder
    D(pi, alpha) and, optionally, the auxiliary decoders D_alpha(alpha) and D_pi(sg(pi)). One
    ``forward`` runs them all, so DDP sees every parameter a step uses."""

    def __init__(self, channels: int, width: int, max_width: int, downs: int, encoder_blocks: int,
                 decoder_blocks: int, aux: bool) -> None:
        super().__init__()
        self.channels = channels
        self.pose_encoder = ConvEncoder(3, 2 * channels, width, max_width, downs, encoder_blocks)
        self.app_encoder = ConvEncoder(3, channels, width, max_width, downs, encoder_blocks)
        self.decoder = ConvDecoder(2 * channels, 3, width, max_width, downs, decoder_blocks)
        self.aux_app = ConvDecoder(channels, 3, width, max_width, downs, decoder_blocks) if aux else None
        self.aux_pose = ConvDecoder(channels, 3, width, max_width, downs, decoder_blocks) if aux else None

    def encode(self, x_pose: torch.Tensor, x_app: torch.Tensor) -> tuple[DiagonalGaussian, torch.Tensor]:
        return DiagonalGaussian(self.pose_encoder(x_pose)), self.app_encoder(x_app)

    def decode(self, pi: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([pi, alpha], 1))

    def forward(self, x_pose: torch.Tensor, x_app: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        q, alpha = self.encode(x_pose, x_app)
        pi = q.sample(noise)
        out = {"mean": q.mean, "kl": q.kl(), "pi": pi, "alpha": alpha, "x": self.decode(pi, alpha)}
        if self.aux_app is not None:
            out["aux_app"] = self.aux_app(alpha)
            out["aux_pose"] = self.aux_pose(pi.detach())
        return out
