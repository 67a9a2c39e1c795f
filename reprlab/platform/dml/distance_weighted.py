"""Distance-weighted negative sampling (Wu et al., ICCV 2017), for a whole batch at once.

For D-dimensional unit vectors the density of pairwise distances is
q(d) ~ d^(D-2) (1 - d^2/4)^((D-3)/2); sampling negatives with weight 1/q(d) spreads them over all
distances instead of concentrating them near sqrt(2). Distances are clamped below at ``cutoff``
(variance), negatives at or beyond ``nonzero_loss_cutoff`` get weight 0 (they carry no loss).
"""

from __future__ import annotations

import torch

from reprlab.platform.dml.distances import pairwise_distances


def negative_log_weights(
    dist: torch.Tensor, same: torch.Tensor, dim: int, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4
) -> torch.Tensor:
    """log(1/q(d)) for every (anchor, candidate), -inf where the candidate may not be drawn."""
    d = dist.clamp_min(cutoff)
    log_w = (2.0 - dim) * d.log() - ((dim - 3) / 2.0) * (1.0 - 0.25 * d.pow(2)).clamp_min(1e-8).log()
    allowed = ~same & (dist < nonzero_loss_cutoff)
    return log_w.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def distance_weighted_triplets(
    emb: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One distance-weighted negative for every anchor-positive pair of the batch.

    Returns index tensors (anchor, positive, negative). An anchor whose negatives all lie beyond
    ``nonzero_loss_cutoff`` draws uniformly among its negatives.
    """
    emb = emb.detach().float()
    same = labels[:, None] == labels[None, :]
    log_w = negative_log_weights(pairwise_distances(emb), same, emb.shape[1], cutoff, nonzero_loss_cutoff)
    no_candidate = torch.isinf(log_w).all(dim=1, keepdim=True)
    log_w = torch.where(no_candidate & ~same, torch.zeros_like(log_w), log_w)
    probs = torch.softmax(log_w, dim=1).nan_to_num_(0.0)  # rows with no negative at all -> zeros

    pos_mask = same.clone().fill_diagonal_(False)
    anchors, positives = pos_mask.nonzero(as_tuple=True)
    has_neg = probs.sum(1) > 0
    keep = has_neg[anchors]
    anchors, positives = anchors[keep], positives[keep]
    if len(anchors) == 0:
        empty = labels.new_empty(0)
        return empty, empty, empty
    # draw per anchor once, enough for all of its positives, then hand them out
    per_anchor = torch.bincount(anchors, minlength=len(labels))
    draws = torch.multinomial(probs[has_neg], int(per_anchor.max()), replacement=True, generator=generator)
    row = torch.cumsum(has_neg.long(), 0) - 1
    rank = torch.arange(len(anchors), device=anchors.device) - (torch.cumsum(per_anchor, 0) - per_anchor)[anchors]
    negatives = draws[row[anchors], rank]
    return anchors, positives, negatives
