"""The metric-learning side of the context: class-balanced batches and retrieval evaluation.

Functions of a :class:`~reprlab.platform.contract.context.Context`, used by the DML method base
(:mod:`reprlab.platform.dml.method`) and the methods built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from reprlab.platform.dml.samplers import ClassBalancedSampler, ClusterRoundRobinSampler

if TYPE_CHECKING:
    from reprlab.platform.contract.context import Context


def class_balanced_sampler(
    ctx: Context, targets: np.ndarray | None = None, iterations: int | None = None, *, stream: int = 0,
    repeat_classes: bool = False,
) -> ClassBalancedSampler:
    """P x M batches over the training set's classes, or over other ``targets`` (e.g. cluster
    labels); see :class:`ClassBalancedSampler`."""
    d = ctx.cfg.data
    return ClassBalancedSampler(
        ctx.data.targets if targets is None else targets,
        d.classes_per_batch,
        d.samples_per_class,
        iterations or ctx.iterations_per_epoch(),
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=ctx.cfg.experiment.seed,
        stream=stream,
        repeat_classes=repeat_classes,
    )


def cluster_sampler(ctx: Context, clusters: np.ndarray) -> ClusterRoundRobinSampler:
    """Class-balanced batches inside each cluster, the clusters taking turns."""
    d = ctx.cfg.data
    return ClusterRoundRobinSampler(
        ctx.data.targets, clusters, d.classes_per_batch, d.samples_per_class, ctx.iterations_per_epoch(),
        rank=ctx.rank, world_size=ctx.world_size, seed=ctx.cfg.experiment.seed,
    )


def evaluate_embeddings(
    ctx: Context, fn: Callable[[torch.Tensor], torch.Tensor], split: str, *, class_geometry: bool = False
) -> dict[str, float]:
    """Retrieval and clustering metrics of ``fn``'s embeddings on an evaluation split (computed on
    rank 0, broadcast); ``class_geometry`` adds the mean intra- and inter-class distances of the
    query set."""
    from reprlab.platform.eval.retrieval import class_distances, compute_metrics

    es = ctx.data.eval_splits[split]
    q = ctx.embed(fn, es.query)
    g = ctx.embed(fn, es.gallery) if es.gallery is not None else None
    metrics = None
    if ctx.is_main:
        metrics = compute_metrics(
            q,
            es.query.labels,
            g,
            None if es.gallery is None else es.gallery.labels,
            kmeans_niter=ctx.cfg.eval.kmeans_niter,
            seed=ctx.cfg.experiment.seed,
            use_gpu=None if ctx.device.type == "cuda" else False,
        )
        if class_geometry:
            metrics.update(class_distances(q, es.query.labels))
        if ctx.cfg.eval.probes:
            metrics.update(probe_metrics(q, es.query.labels))
    return ctx.broadcast(metrics)


def probe_metrics(emb: np.ndarray, labels: np.ndarray, k: int = 5) -> dict[str, float]:
    """``knn_acc``: how often the majority class of an image's ``k`` nearest other images (ties: the
    nearest of the tied classes) is its own; ``probe_acc``: accuracy of a linear classifier
    (:func:`probe_accuracy`) fitted on one fixed half of the split (every other image of each class,
    in index order) and scored on the other half. Both read the query set only."""
    from reprlab.platform.eval.interpretation import probe_accuracy
    from reprlab.platform.eval.retrieval import knn_search

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    near = labels[knn_search(emb, emb, k, exclude_self=True)]  # N x k, nearest first
    votes = (near[:, :, None] == near[:, None, :]).sum(axis=2)  # how often each neighbour's class occurs
    best = votes.max(axis=1, keepdims=True)
    first = np.argmax(votes == best, axis=1)  # the nearest neighbour among the most frequent classes
    knn_acc = float((near[np.arange(len(near)), first] == labels).mean())
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
    fit = rank % 2 == 0
    probe = probe_accuracy(emb[fit], labels[fit], emb[~fit], labels[~fit]) if (~fit).any() else float("nan")
    return {"knn_acc": knn_acc, "probe_acc": probe}
