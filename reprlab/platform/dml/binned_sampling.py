"""Negative sampling from a distribution over distance bins (PADS: Roth, Milbich, Ommer, CVPR 2020).

The support points ``linspace(low, high, n + 1)`` cut anchor-negative distances into ``n`` bins;
a distribution ``w`` over the bins (the teacher's action moves it) gives every candidate the
weight of its bin, and each anchor draws one negative with probability proportional to that
weight. Each anchor also gets one same-class positive drawn uniformly.

Out-of-range distances (below ``low`` or at/above ``high``) fall into no bin and are never drawn,
unless ``out_of_range="merge"`` puts them into the first or last bin. The PADS reference code
meant to mask them but combined the two conditions with AND (a distance cannot be both below the
lowest and above the highest support point), so its mask never fired; here the mask is an OR.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from reprlab.platform.dml.distances import pairwise_distances

OutOfRange = Literal["drop", "merge"]


def bin_edges(low: float, high: float, bins: int) -> np.ndarray:
    """The ``bins + 1`` support points."""
    return np.linspace(low, high, bins + 1)


def bin_centres(edges: np.ndarray) -> np.ndarray:
    return (edges[:-1] + edges[1:]) / 2


def initial_distribution(edges: np.ndarray, lo: float, hi: float, floor: float = 1e-10) -> np.ndarray:
    """Mass on the bins whose centres lie in [lo, hi], ``floor`` elsewhere, normalized."""
    centres = bin_centres(edges)
    w = np.where((centres >= lo) & (centres <= hi), 1.0, floor)
    if not (w == 1.0).any():
        raise ValueError(f"no bin centre lies in [{lo}, {hi}]")
    return w / w.sum()


def update_distribution(
    weights: np.ndarray, action: np.ndarray, multipliers: np.ndarray, clip: tuple[float, float] = (1e-25, 1e25)
) -> np.ndarray:
    """The teacher's action: multiply bin ``i`` by ``multipliers[action[i]]``, clip, renormalize."""
    w = np.clip(np.asarray(weights, np.float64) * np.asarray(multipliers, np.float64)[np.asarray(action)], *clip)
    return w / w.sum()


def bin_index(dist: torch.Tensor, edges: torch.Tensor, out_of_range: OutOfRange = "drop") -> torch.Tensor:
    """Bin of every distance (``edges[i] <= d < edges[i+1]``); -1 where out of range and dropped."""
    bins = len(edges) - 1
    idx = torch.bucketize(dist, edges, right=True) - 1
    outside = (dist < edges[0]) | (dist >= edges[-1])  # OR: below the support or beyond it
    if out_of_range == "merge":
        return idx.clamp(0, bins - 1)
    return idx.masked_fill(outside, -1)


def negative_mass(
    dist: torch.Tensor,
    same: torch.Tensor,
    weights: torch.Tensor | np.ndarray,
    edges: torch.Tensor | np.ndarray,
    *,
    self_regularization: bool = False,
    out_of_range: OutOfRange = "drop",
) -> torch.Tensor:
    """Unnormalized probability of drawing column j as anchor i's negative: the weight of the bin
    of d(i, j); 0 out of range (unless merged) and, without self-regularization, for ``same``."""
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    idx = bin_index(dist, torch.as_tensor(np.asarray(edges), dtype=dist.dtype), out_of_range)
    mass = torch.where(idx >= 0, w[idx.clamp_min(0)], torch.zeros((), dtype=torch.float64))
    return mass if self_regularization else mass.masked_fill(same, 0.0)


@torch.no_grad()
def binned_triplets(
    emb: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | np.ndarray,
    edges: torch.Tensor | np.ndarray,
    generator: torch.Generator | None = None,
    *,
    self_regularization: bool = False,
    out_of_range: OutOfRange = "drop",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors: one triplet per anchor that has a positive and a
    drawable negative.

    ``self_regularization``: like the reference code, the anchor's own class (the anchor included)
    may be drawn as "negative" too; otherwise only other classes are. Candidates whose bin has zero
    mass, or whose distance falls outside the support (unless merged), are never drawn; an anchor
    left without any candidate gets no triplet.
    """
    emb, labels = emb.detach().float().cpu(), labels.cpu()
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    mass = negative_mass(pairwise_distances(emb), same, weights, edges,
                         self_regularization=self_regularization, out_of_range=out_of_range)
    pos_mask = same & ~torch.eye(n, dtype=torch.bool)
    ok = pos_mask.any(1) & (mass.sum(1) > 0)
    anchors = torch.nonzero(ok).flatten()
    if len(anchors) == 0:
        empty = labels.new_empty(0)
        return empty, empty, empty
    positives = torch.multinomial(pos_mask[anchors].double(), 1, generator=generator)[:, 0]
    negatives = torch.multinomial(mass[anchors], 1, generator=generator)[:, 0]
    return anchors, positives, negatives
