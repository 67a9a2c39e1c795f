"""Margin loss (Wu et al., ICCV 2017) with an optional learnable boundary beta per class."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reprlab.platform.dml.distances import pairwise_distances


class MarginLoss(nn.Module):
    """relu(d(a,p) - beta + margin) + relu(beta - d(a,n) + margin), summed and divided by the
    number of non-zero terms (``normalization="active_terms"``: Wu et al. and
    pytorch-metric-learning) or by the number of triplets with any non-zero term
    (``"active_triplets"``: the PyTorch reference codes of D&C, MIC, PADS and Revisiting DML);
    beta is the anchor class's (or a single shared) learnable boundary, with an optional
    ``nu * sum(beta)`` regularizer."""

    def __init__(
        self, num_classes: int, margin: float = 0.2, beta: float = 1.2, learn_beta: bool = True, nu: float = 0.0,
        normalization: str = "active_terms",
    ) -> None:
        super().__init__()
        if normalization not in ("active_terms", "active_triplets"):
            raise ValueError(f"normalization must be active_terms or active_triplets, got {normalization!r}")
        self.margin, self.nu, self.normalization = margin, nu, normalization
        self.beta = nn.Parameter(torch.full((num_classes if learn_beta else 1,), float(beta)), requires_grad=learn_beta)

    def forward(
        self, emb: torch.Tensor, labels: torch.Tensor, triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        a, p, n = triplets
        if len(a) == 0:
            return emb.sum() * 0.0
        beta = self.beta[labels[a]] if len(self.beta) > 1 else self.beta.expand(len(a))
        d_ap = (emb[a] - emb[p]).pow(2).sum(1).add(1e-8).sqrt()
        d_an = (emb[a] - emb[n]).pow(2).sum(1).add(1e-8).sqrt()
        pos = F.relu(d_ap - beta + self.margin)
        neg = F.relu(beta - d_an + self.margin)
        if self.normalization == "active_terms":
            active = (pos > 0).sum() + (neg > 0).sum()
        else:
            active = ((pos > 0) | (neg > 0)).sum()
        loss = (pos.sum() + neg.sum()) / active.clamp_min(1)
        if self.nu:
            loss = loss + self.nu * beta.sum() / active.clamp_min(1)
        return loss


__all__ = ["MarginLoss", "pairwise_distances"]
