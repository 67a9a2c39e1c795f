"""pytorch-metric-learning's ``AccuracyCalculator`` as an independent oracle for our metrics.

Recall@2/4/8 and F1 are added through PML's documented extension mechanism (``calculate_*``
methods plus ``requires_knn`` / ``requires_clustering``) and computed from PML's own neighbour
labels and cluster assignments, so nothing here depends on :mod:`reprlab.platform.eval.retrieval`.
PML is a test dependency and is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reprlab.platform.core.errors import ReprlabError

_MISSING = "bench: pytorch-metric-learning is not installed; pip install -e '.[test]'"
#: PML metric name -> our metric key (recall_at_K are added by the oracle subclass).
_KNN_KEYS = {"precision_at_1": "p@1", "mean_average_precision_at_r": "map@r"}
_CLUSTER_KEYS = {"NMI": "nmi", "f1": "f1"}


def import_pml() -> Any:
    """PML's accuracy_calculator module, or a ReprlabError telling how to install it."""
    try:
        from pytorch_metric_learning.utils import accuracy_calculator
    except ImportError as exc:
        raise ReprlabError(_MISSING) from exc
    return accuracy_calculator


def make_oracle(ks: Sequence[int] = (1, 2, 4, 8), **kwargs: Any) -> Any:
    """A PML AccuracyCalculator subclass computing recall@K for ``ks``, P@1, MAP@R, NMI, F1.

    k is PML's "max_bin_count" (what MAP@R needs), raised to max(ks) so recall@K is defined.
    ``kwargs`` go to ``AccuracyCalculator`` (e.g. ``device``).
    """
    ac = import_pml()
    import torch

    max_k = max(ks)

    class OracleCalculator(ac.AccuracyCalculator):
        """AccuracyCalculator + recall@K (any of the K nearest shares the label) + pairwise F1."""

        def requires_knn(self) -> list[str]:
            return super().requires_knn() + [f"recall_at_{k}" for k in ks]

        def requires_clustering(self) -> list[str]:
            return super().requires_clustering() + ["f1"]

        def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
            k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
            return min(max(k, max_k), num_reference_embeddings - int(ref_includes_query))

        def calculate_f1(self, query_labels, cluster_labels, **kw) -> float:
            return _sklearn_pair_f1(query_labels.cpu().numpy(), cluster_labels.cpu().numpy())

    def _recall_method(k: int):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kw) -> float:
            labels = knn_labels[not_lone_query_mask][:, :k]
            truth = query_labels[not_lone_query_mask][:, None]
            return torch.any(labels == truth, dim=1).double().mean().item()

        return calculate

    for k in ks:
        setattr(OracleCalculator, f"calculate_recall_at_{k}", _recall_method(k))
    include = tuple(f"recall_at_{k}" for k in ks) + tuple(_KNN_KEYS) + tuple(_CLUSTER_KEYS)
    return OracleCalculator(include=include, k="max_bin_count", **kwargs)


def _sklearn_pair_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Pairwise F1 from sklearn's pair confusion matrix (counts ordered pairs; ratios agree)."""
    from sklearn.metrics.cluster import pair_confusion_matrix

    (_, fp), (fn, tp) = pair_confusion_matrix(labels.astype(np.int64), clusters.astype(np.int64))
    if tp == 0:
        return 1.0 if fp == fn == 0 else 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return float(2 * precision * recall / (precision + recall))


def pml_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    **kwargs: Any,
) -> dict[str, float]:
    """PML's values under our metric keys, for the same arguments as ``compute_metrics``.

    Query/gallery mode: retrieval from PML's ``ref_includes_query=False`` call; clustering from
    a second PML call on query + gallery (PML itself would cluster only the queries).
    """
    oracle = make_oracle(ks, **kwargs)
    knn_names = tuple(f"recall_at_{k}" for k in ks) + tuple(_KNN_KEYS)
    if gallery_emb is None:
        raw = oracle.get_accuracy(query_emb, query_labels)
    else:
        raw = oracle.get_accuracy(
            query_emb, query_labels, gallery_emb, gallery_labels,
            ref_includes_query=False, include=knn_names,
        )
        union = np.concatenate([query_emb, gallery_emb])
        union_labels = np.concatenate([query_labels, gallery_labels])
        raw.update(oracle.get_accuracy(union, union_labels, include=tuple(_CLUSTER_KEYS)))
    names = {f"recall_at_{k}": f"recall@{k}" for k in ks} | _KNN_KEYS | _CLUSTER_KEYS
    order = [f"recall@{k}" for k in ks] + ["nmi", "f1", "p@1", "map@r"]
    ours = {names[name]: float(value) for name, value in raw.items()}
    return {key: ours[key] for key in order}
