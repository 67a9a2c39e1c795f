"""Triplets for learning characteristics shared across classes (Milbich et al., "Sharing Matters
for Generalization in Deep Metric Learning", arXiv 2004.05582).

Anchor and positive come from *different* classes: for every anchor a negative is drawn
distance-weighted among the samples of other classes, and the positive from a third class (neither
the anchor's nor the negative's), uniformly or also distance-weighted. The third variant permutes
the labels inside the batch and mines ordinary distance-weighted triplets on them.
"""

from __future__ import annotations

from typing import Literal

import torch

from reprlab.platform.dml.distance_weighted import distance_weighted_triplets, negative_log_weights
from reprlab.platform.dml.distances import pairwise_distances

SharedVariant = Literal["random_positive", "weighted_positive", "permuted_labels"]


def _draw(log_w: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One column per row drawn from softmax(log_w); rows with no finite entry are flagged."""
    ok = ~torch.isinf(log_w).all(dim=1)
    picks = torch.zeros(len(log_w), dtype=torch.long)
    if ok.any():
        picks[ok] = torch.multinomial(torch.softmax(log_w[ok], dim=1), 1, generator=generator)[:, 0]
    return picks, ok


@torch.no_grad()
def shared_triplets(
    emb: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    per_anchor: int = 1,
    variant: SharedVariant = "random_positive",
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors, ``per_anchor`` triplets per sample.

    Anchors whose negatives all lie beyond ``nonzero_loss_cutoff`` draw the negative uniformly
    among the other classes; an anchor without a third class in the batch gets no triplet.
    """
    emb, labels = emb.detach().float().cpu(), labels.cpu()
    if variant == "permuted_labels":
        perm = torch.randperm(len(labels), generator=generator)
        return distance_weighted_triplets(emb, labels[perm], generator, cutoff, nonzero_loss_cutoff)

    dim = emb.shape[1]
    dist = pairwise_distances(emb)
    anchors = torch.arange(len(labels)).repeat_interleave(per_anchor)
    d = dist[anchors]
    own = labels[anchors]

    same = own[:, None] == labels[None, :]
    log_w = negative_log_weights(d, same, dim, cutoff, nonzero_loss_cutoff)
    fallback = torch.isinf(log_w).all(dim=1, keepdim=True) & ~same
    log_w = torch.where(fallback, torch.zeros_like(log_w), log_w)
    negatives, has_neg = _draw(log_w, generator)

    third = ~same & (labels[None, :] != labels[negatives][:, None])
    if variant == "weighted_positive":
        log_p = negative_log_weights(d, ~third, dim, cutoff, float("inf"))
    else:
        log_p = torch.zeros_like(d).masked_fill(~third, float("-inf"))
    positives, has_pos = _draw(log_p, generator)

    keep = has_neg & has_pos
    return anchors[keep], positives[keep], negatives[keep]
