"""Retrieval and clustering metrics for deep metric learning (protocol.md, "Metrics").

Definitions follow pytorch-metric-learning's ``AccuracyCalculator`` (PML 2.9) wherever it
defines a metric, so the numbers are comparable with published PML-based results:

* the k-nearest neighbours are found once with a faiss ``IndexFlatL2`` (Euclidean distance, as
  PML's default ``FaissKNN``) and shared by Recall@K, P@1 and MAP@R;
* with no gallery the set is searched against itself and each query's own index is removed
  from its neighbour list (if it is not among them, the last neighbour is dropped instead, as
  PML does), so ties are ordered by faiss exactly as PML sees them;
* R = number of *other* samples with the query's label in the gallery; queries with R = 0
  ("lone" queries) are left out of every retrieval metric, as PML leaves them out;
* NMI and F1 cluster the evaluated set with ``faiss.Kmeans`` using PML's settings (k = number
  of distinct classes, ``niter=20``, faiss's default seed 1234, the index's own assignment).

Everything is vectorised with numpy; the search runs in query chunks so a 60k x 60k distance
matrix never exists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it narrates every SIMD probe

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from reprlab.platform.core.config import METRIC_KEYS  # noqa: E402,F401  (re-exported)
from reprlab.platform.core.errors import ReprlabError  # noqa: E402

#: faiss's default ``ClusteringParameters.seed``, the seed PML's k-means runs with.
FAISS_DEFAULT_KMEANS_SEED = 1234
#: Queries per search call; a multiple of faiss's internal 4096-query BLAS block, so chunking
#: does not change which distances faiss computes.
SEARCH_CHUNK = 16384
#: Largest k a faiss GPU flat index accepts.
GPU_MAX_K = 2048


def compute_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    kmeans_niter: int = 20,
    seed: int = 0,
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """Recall@K for K in ``ks``, NMI, F1, P@1 and MAP@R as fractions in [0, 1].

    With no gallery the query set is its own gallery (self excluded); with a gallery
    (In-shop, VehicleID) queries retrieve from it and clustering runs on query + gallery.
    ``seed`` offsets faiss's default k-means seed: 0 reproduces PML's clustering.
    ``use_gpu=None`` uses faiss GPU indices when faiss sees a GPU; False never does.
    Retrieval metrics are NaN when no query has a relevant gallery item.
    """
    ks = _check_ks(ks)
    query_emb, query_labels = _check_set(query_emb, query_labels, "query")
    self_mode = gallery_emb is None
    if self_mode:
        if gallery_labels is not None:
            raise ReprlabError("compute_metrics: gallery_labels given without gallery_emb")
        gallery_emb, gallery_labels = query_emb, query_labels
    else:
        gallery_emb, gallery_labels = _check_set(gallery_emb, gallery_labels, "gallery")
        if gallery_emb.shape[1] != query_emb.shape[1]:
            raise ReprlabError(
                f"compute_metrics: query dim {query_emb.shape[1]} "
                f"!= gallery dim {gallery_emb.shape[1]}"
            )
    gpu = gpu_wanted(use_gpu)

    relevant = relevant_counts(query_labels, gallery_labels, self_mode)
    k = min(max(max(ks), int(relevant.max(initial=0))), len(gallery_emb) - int(self_mode))
    metrics: dict[str, float] = {}
    if k > 0:
        neighbours = knn_search(query_emb, gallery_emb, k, exclude_self=self_mode, use_gpu=gpu)
        hits = gallery_labels[neighbours] == query_labels[:, None]
    else:
        hits = np.zeros((len(query_emb), 0), dtype=bool)
    metrics.update(retrieval_metrics(hits, relevant, ks))

    if self_mode:
        cluster_x, cluster_y = query_emb, query_labels
    else:
        cluster_x = np.concatenate([query_emb, gallery_emb])
        cluster_y = np.concatenate([query_labels, gallery_labels])
    clusters = kmeans_assign(
        cluster_x, len(np.unique(cluster_y)), niter=kmeans_niter, seed=seed, use_gpu=gpu
    )
    metrics["nmi"] = nmi(cluster_y, clusters)
    metrics["f1"] = pairwise_f1(cluster_y, clusters)
    order = [f"recall@{k}" for k in ks] + ["nmi", "f1", "p@1", "map@r"]
    return {key: metrics[key] for key in order}


# ---------------------------------------------------------------------------------------------
# input checks


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Positive integer K values, at least one."""
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise ReprlabError(f"compute_metrics: ks must be positive integers, got {tuple(ks)}")
    return out


def _check_set(emb: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous float32 N x D embeddings and length-N int64 labels, all finite."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ReprlabError(
            f"compute_metrics: {name} embeddings must be a non-empty N x D array, "
            f"got shape {emb.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(emb):
        raise ReprlabError(
            f"compute_metrics: {name} has {len(emb)} embeddings but labels of shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ReprlabError(f"compute_metrics: {name} labels must be integers, got {labels.dtype}")
    if not np.isfinite(emb).all():
        raise ReprlabError(f"compute_metrics: {name} embeddings contain NaN or infinite values")
    return emb, labels.astype(np.int64, copy=False)


def gpu_wanted(use_gpu: bool | None) -> bool:
    """Whether to use faiss GPU indices: only if faiss sees a GPU and the caller allows it."""
    return use_gpu is not False and faiss.get_num_gpus() > 0


# ---------------------------------------------------------------------------------------------
# retrieval


def relevant_counts(
    query_labels: np.ndarray, gallery_labels: np.ndarray, self_mode: bool
) -> np.ndarray:
    """R per query: gallery items sharing its label, itself not counted in self mode."""
    classes, gallery_counts = np.unique(gallery_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    counts = np.where(classes[pos] == query_labels, gallery_counts[pos], 0)
    return counts - int(self_mode)


def knn_search(
    query: np.ndarray, gallery: np.ndarray, k: int, *, exclude_self: bool, use_gpu: bool = False
) -> np.ndarray:
    """Indices (N x k) of each query's k nearest gallery items by Euclidean distance.

    With ``exclude_self`` the query set is the gallery: k + 1 neighbours are searched and the
    query's own index is removed (the last one when the query is not among them, as PML does).
    """
    k_search = k + int(exclude_self)
    index = _flat_index(gallery, gpu=use_gpu and k_search <= GPU_MAX_K)
    chunks = [
        index.search(query[start : start + SEARCH_CHUNK], k_search)[1]
        for start in range(0, len(query), SEARCH_CHUNK)
    ]
    neighbours = np.concatenate(chunks)
    return _drop_self(neighbours) if exclude_self else neighbours


def _flat_index(gallery: np.ndarray, *, gpu: bool) -> faiss.Index:
    """An exact L2 faiss index holding the gallery, on all GPUs if asked."""
    index = faiss.IndexFlatL2(gallery.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    return index


def _drop_self(neighbours: np.ndarray) -> np.ndarray:
    """Remove each row's own index (row i is query i); rows without it lose their last column."""
    n, k = neighbours.shape
    is_self = neighbours == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    # a row can hold its own index only once, so exactly one entry per row is removed
    return neighbours[~is_self].reshape(n, k - 1)


def retrieval_metrics(
    hits: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@K, P@1 and MAP@R from the N x k neighbour-hit matrix, over queries with R > 0."""
    valid = relevant > 0
    if not valid.any() or hits.shape[1] == 0:
        nan = float("nan")
        return {**{f"recall@{k}": nan for k in ks}, "p@1": nan, "map@r": nan}
    hits, relevant = hits[valid], relevant[valid]
    out = {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    out["p@1"] = float(hits[:, 0].mean())
    out["map@r"] = float(_map_at_r(hits, relevant).mean())
    return out


def _map_at_r(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-query MAP@R: mean over the first R ranks of precision@i at each relevant rank i."""
    rank = np.arange(1, hits.shape[1] + 1)
    within_r = hits & (rank <= relevant[:, None])
    precision = np.cumsum(within_r, axis=1) / rank
    return (precision * within_r).sum(axis=1) / relevant


# ---------------------------------------------------------------------------------------------
# clustering


def kmeans_assign(
    x: np.ndarray, n_clusters: int, *, niter: int = 20, nredo: int = 1, seed: int = 0, use_gpu: bool = False,
    subsample: bool = True,
) -> np.ndarray:
    """Cluster ids from faiss k-means, by default with PML's settings; ``seed`` offsets faiss's
    default, ``nredo`` keeps the best of several restarts, ``subsample=False`` trains on every
    point instead of faiss's sample of 256 per centroid."""
    kmeans = faiss.Kmeans(
        x.shape[1], n_clusters, niter=niter, nredo=nredo, seed=FAISS_DEFAULT_KMEANS_SEED + seed, gpu=use_gpu,
        min_points_per_centroid=1,  # only silences faiss' small-set warning; results unchanged
        **({} if subsample else {"max_points_per_centroid": max(256, len(x))}),
    )
    kmeans.train(x)
    return kmeans.index.search(x, 1)[1][:, 0]


def contingency(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sparse contingency table: (cell counts, cell rows, cell columns, row sums, column sums)."""
    _, rows = np.unique(labels, return_inverse=True)
    _, cols = np.unique(clusters, return_inverse=True)
    rows, cols = rows.ravel().astype(np.int64), cols.ravel().astype(np.int64)
    n_cols = int(cols.max()) + 1
    cells, counts = np.unique(rows * n_cols + cols, return_counts=True)
    return counts, cells // n_cols, cells % n_cols, np.bincount(rows), np.bincount(cols)


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalized mutual information with arithmetic averaging of the two entropies."""
    counts, rows, cols, row_sums, col_sums = contingency(labels, clusters)
    if len(row_sums) == len(col_sums) == 1:
        return 1.0  # both partitions are trivial and identical
    n = float(len(labels))
    p = counts / n
    outer = row_sums[rows].astype(np.float64) * col_sums[cols]
    mi = float(np.sum(p * (np.log(counts) + np.log(n) - np.log(outer))))
    if mi <= 0.0:
        return 0.0
    normalizer = 0.5 * (_entropy(row_sums, n) + _entropy(col_sums, n))
    return float(min(mi / normalizer, 1.0))


def _entropy(sizes: np.ndarray, n: float) -> float:
    """Shannon entropy (nats) of a partition given its part sizes."""
    p = sizes / n
    return float(-np.sum(p * np.log(p)))


def pairwise_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Pair-counting F-measure of a clustering against class labels.

    precision = same-class pairs in a common cluster / pairs in a common cluster,
    recall = same-class pairs in a common cluster / same-class pairs.
    """
    counts, _, _, row_sums, col_sums = contingency(labels, clusters)
    together = _pairs(counts)
    same_cluster, same_class = _pairs(col_sums), _pairs(row_sums)
    if same_cluster == 0 and same_class == 0:
        return 1.0  # all singletons on both sides: the partitions agree
    if together == 0:
        return 0.0
    precision, recall = together / same_cluster, together / same_class
    return float(2 * precision * recall / (precision + recall))


def _pairs(sizes: np.ndarray) -> int:
    """Number of unordered pairs inside groups of the given sizes."""
    sizes = sizes.astype(np.int64)
    return int(np.sum(sizes * (sizes - 1) // 2))


# ---------------------------------------------------------------------------------------------
# class geometry (part of the PADS teacher's state)


def class_distances(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``intra_distance``: mean Euclidean distance of a sample to its class centroid;
    ``inter_distance``: mean distance between the centroids of two different classes.
    Centroid-based, so O(N + C^2) instead of all N^2 pairs."""
    emb = np.asarray(emb, np.float64)
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.ravel()
    sizes = np.bincount(inverse)
    centroids = np.zeros((len(sizes), emb.shape[1]))
    np.add.at(centroids, inverse, emb)
    centroids /= sizes[:, None]
    intra = float(np.linalg.norm(emb - centroids[inverse], axis=1).mean())
    if len(sizes) < 2:
        return {"intra_distance": intra, "inter_distance": 0.0}
    sq = (centroids**2).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * centroids @ centroids.T, 0.0, None)
    off = ~np.eye(len(sizes), dtype=bool)
    return {"intra_distance": intra, "inter_distance": float(np.sqrt(d2[off]).mean())}
