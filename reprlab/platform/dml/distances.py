"""Pairwise Euclidean distances of L2-normalized embeddings."""

import torch


def pairwise_distances(x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Euclidean distances; for unit vectors ||a-b||^2 = 2 - 2 a.b, clamped and with a safe sqrt."""
    y = x if y is None else y
    sq = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.T).clamp_min(0.0)
    return (sq + eps).sqrt()
