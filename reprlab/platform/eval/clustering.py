"""Clustering a whole split for the cluster-driven methods (Divide & Conquer, MIC).

- :func:`kmeans`: faiss k-means with restarts, deterministic for a seed.
- :func:`match_clusters`: relabel a new clustering so that each label keeps the data it had
  (Hungarian algorithm on the L1 distance between membership vectors).
- :func:`drop_singleton_classes`: per cluster, drop the classes with a single sample there.
- :func:`remove_class_means`: subtract each class's mean so that class identity leaves features.
- :func:`cluster_split`: the distributed recipe: every rank embeds its shard of the training set,
  all ranks gather, rank 0 clusters once, and the assignment is broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from reprlab.platform.eval.retrieval import gpu_wanted, kmeans_assign

if TYPE_CHECKING:
    from reprlab.platform.contract.context import Context


def kmeans(
    x: np.ndarray, k: int, *, niter: int = 100, nredo: int = 5, seed: int = 0, use_gpu: bool | None = False
) -> np.ndarray:
    """Cluster id (0..k-1) of every row of ``x``; the best of ``nredo`` restarts."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k > len(x):
        raise ValueError(f"k-means: {k} clusters asked for {len(x)} points")
    labels = kmeans_assign(x, k, niter=niter, nredo=nredo, seed=seed, use_gpu=gpu_wanted(use_gpu), subsample=False)
    return labels.astype(np.int64)


def match_clusters(previous: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """``new`` relabelled so that label j covers the data label j covered in ``previous``.

    Cost of giving new cluster b the old label a: the L1 distance between their membership
    vectors, |A| + |B| - 2 |A and B|; the Hungarian algorithm finds the cheapest relabelling.
    """
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (previous, new), 1)
    sizes_old, sizes_new = np.bincount(previous, minlength=k), np.bincount(new, minlength=k)
    cost = sizes_old[:, None] + sizes_new[None, :] - 2 * overlap
    old_label, new_label = linear_sum_assignment(cost)
    relabel = np.empty(k, dtype=np.int64)
    relabel[new_label] = old_label
    return relabel[new]


def drop_singleton_classes(clusters: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``clusters`` with -1 for every sample whose class has no other sample in its cluster."""
    k = int(clusters.max()) + 1
    cell = targets.astype(np.int64) * k + clusters
    _, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
    return np.where(counts[inverse.ravel()] > 1, clusters, -1)


def remove_class_means(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Features minus the mean of their class: what is left is what classes share."""
    _, inverse = np.unique(targets, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.zeros((inverse.max() + 1, features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, features)
    means = sums / np.bincount(inverse)[:, None]
    return (features - means[inverse]).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_split(
    ctx: Context,
    fn: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    niter: int = 100,
    nredo: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Cluster the training set in the space of ``fn`` (evaluated without augmentation).

    Embedding is sharded over the ranks and gathered; k-means runs once, on rank 0, and every
    rank receives the same assignment.
    """
    feats = ctx.embed(fn, ctx.data.train)
    clusters = None
    if ctx.is_main:
        if transform is not None:
            feats = transform(feats)
        clusters = kmeans(feats, k, niter=niter, nredo=nredo, seed=seed,
                          use_gpu=None if ctx.device.type == "cuda" else False)
    return ctx.broadcast(clusters)
