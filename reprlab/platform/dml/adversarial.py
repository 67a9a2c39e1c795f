"""Gradient reversal and the adversarial decorrelation criterion (MIC, ICCV 2019; reused by
Sharing Matters).

A projection R learns to predict one embedding from the other; both embeddings enter through a
gradient-reversal layer, so the same loss that teaches R to correlate them teaches the encoders
to decorrelate them:

    L_adv = -mean( (n(GR(f_a)) * n(R(n(GR(f_b)))))^2 ),   n = L2 normalization.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the incoming gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


class AdversarialDecorrelation(nn.Module):
    """``forward(target, source)``: how well R maps ``source`` onto ``target`` (negative squared
    correlation; R descends it, the encoders ascend it through the reversed gradient)."""

    def __init__(self, dim: int, hidden: int = 512, target_dim: int | None = None) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, target_dim or dim))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        a = F.normalize(grad_reverse(target), dim=-1)
        b = F.normalize(self.projection(F.normalize(grad_reverse(source), dim=-1)), dim=-1)
        return -(a * b).pow(2).mean()
