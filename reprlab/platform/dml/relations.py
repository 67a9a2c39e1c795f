"""Reliable image relations without labels: the pieces of the relations method (Milbich, Ghori,
Diego, Ommer, Pattern Recognition 2020) as ``specs/relations.md`` reads them. The paper's body
could not be read: every step below is our reading of its abstract and highlights [design].

- :func:`find_groups`: compact groups of mutual nearest neighbours (reliable similarities),
  accepted greedily by compactness, disjoint, until a coverage of the data set is reached;
- :func:`partition_groups`: the groups spread over subsets so that the groups of one subset are
  far apart (reliable dissimilarities);
- :func:`random_targets`: per subset, one seeded random unit vector per group (the target space a
  local head is matched to);
- :func:`confident_assignments`, :func:`coassignment_components`, :func:`split_components`:
  inference with the local heads, co-assignment across subsets and transitivity (connected
  components of the co-assignment graph) into pseudo-classes for the global head;
- diagnostics that read the true labels (never used for training): :func:`pair_precision`,
  :func:`subset_dissimilarity`, :func:`neighbour_precision`.

Plain numpy / scipy / faiss functions of features, run once on rank 0 and broadcast by the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from reprlab.platform.eval.clustering import kmeans
from reprlab.platform.eval.retrieval import knn_search

CHUNK = 65536  # rows per block when distances of candidate members are computed


@dataclass(frozen=True)
class Groups:
    """Accepted groups: ``members`` (G x n image indices, disjoint) and their ``compactness``
    (mean distance between members; smaller is tighter)."""

    members: np.ndarray
    compactness: np.ndarray

    def __len__(self) -> int:
        return len(self.members)

    def labels(self, n_images: int) -> np.ndarray:
        """Group id of every image (-1: in no group)."""
        out = np.full(n_images, -1, dtype=np.int64)
        out[self.members.ravel()] = np.repeat(np.arange(len(self.members)), self.members.shape[1])
        return out


def neighbours(feats: np.ndarray, k: int) -> np.ndarray:
    """N x k indices of every row's k nearest other rows (exact, faiss)."""
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    return knn_search(feats, feats, min(k, len(feats) - 1), exclude_self=True)


def mutual_within(knn: np.ndarray, members: np.ndarray) -> np.ndarray:
    """For every candidate (a row of ``members``), whether each pair of its members are in each
    other's neighbour lists."""
    ok = np.ones(len(members), dtype=bool)
    n = members.shape[1]
    for p in range(n):
        for q in range(p + 1, n):
            a, b = members[:, p], members[:, q]
            ok &= (knn[a] == b[:, None]).any(axis=1) & (knn[b] == a[:, None]).any(axis=1)
    return ok


def compactness(feats: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance over the pairs of members of every candidate."""
    n = members.shape[1]
    iu = np.triu_indices(n, k=1)
    out = np.empty(len(members), dtype=np.float64)
    for start in range(0, len(members), CHUNK):
        pts = feats[members[start : start + CHUNK]].astype(np.float64)  # c, n, d
        d2 = ((pts[:, :, None, :] - pts[:, None, :, :]) ** 2).sum(-1)
        out[start : start + CHUNK] = np.sqrt(np.maximum(d2[:, iu[0], iu[1]], 0.0)).mean(axis=1)
    return out


def find_groups(feats: np.ndarray, size: int, k_nn: int, coverage: float, *, compact: bool = True,
                seed: int = 0, knn: np.ndarray | None = None) -> Groups:
    """Disjoint groups of ``size`` images covering at least ``coverage`` of the rows (or as many
    as there are candidates).

    ``compact``: candidate i = image i and its ``size - 1`` nearest mutual neighbours (i and j in
    each other's ``k_nn`` lists); it counts only if all its members are pairwise mutual neighbours,
    and candidates are accepted in order of compactness (tightest first). Otherwise (the raw-kNN ablation) every candidate counts and
    they are accepted in a seeded random order. A candidate overlapping an accepted group is
    skipped."""
    n_images = len(feats)
    if size < 2 or size > k_nn + 1:
        raise ValueError(f"group size {size} must be in [2, k_nn + 1 = {k_nn + 1}]")
    knn = neighbours(feats, k_nn) if knn is None else knn
    if compact:  # the seed's nearest mutual neighbours (j in i's list and i in j's), nearest first
        mutual = (knn[knn] == np.arange(n_images)[:, None, None]).any(axis=2)  # N x k
        near = np.take_along_axis(knn, np.argsort(~mutual, axis=1, kind="stable"), axis=1)
        enough = mutual.sum(axis=1) >= size - 1
    else:
        near, enough = knn, np.ones(n_images, dtype=bool)
    members = np.concatenate([np.arange(n_images)[:, None], near[:, : size - 1]], axis=1)
    score = compactness(feats, members)
    if compact:
        valid = np.flatnonzero(enough & mutual_within(knn, members))
        order = valid[np.argsort(score[valid], kind="stable")]
    else:
        order = np.random.default_rng(seed).permutation(n_images)
    wanted = int(np.ceil(coverage * n_images))
    used = np.zeros(n_images, dtype=bool)
    accepted: list[int] = []
    for i in order.tolist():
        row = members[i]
        if used[row].any():
            continue
        used[row] = True
        accepted.append(i)
        if len(accepted) * size >= wanted:
            break
    idx = np.asarray(accepted, dtype=np.int64)
    return Groups(members[idx].copy(), score[idx])


def centroids(feats: np.ndarray, groups: Groups) -> np.ndarray:
    return feats[groups.members].mean(axis=1).astype(np.float32)


def partition_groups(centres: np.ndarray, tightness: np.ndarray, subsets: int, delta_quantile: float,
                     seed: int = 0) -> np.ndarray:
    """Subset id (0..subsets-1) of every group, -1 for a group dropped: :func:`spread_over_subsets`,
    then :func:`drop_close` at ``delta`` = the ``delta_quantile`` of the distances between group
    centroids (estimated on up to 200,000 random pairs). One subset: no partitioning, nothing
    dropped."""
    g = len(centres)
    if subsets == 1:
        return np.zeros(g, dtype=np.int64)
    rng = np.random.default_rng([seed, 0xD17])
    pairs = rng.integers(0, g, size=(min(200_000, g * g), 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    dists = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
    delta = float(np.quantile(dists, delta_quantile)) if len(dists) else 0.0
    return drop_close(centres, tightness, spread_over_subsets(centres, subsets, seed), delta)


def spread_over_subsets(centres: np.ndarray, subsets: int, seed: int = 0) -> np.ndarray:
    """The group centroids clustered (k-means) into G / subsets regions; the groups of a region go
    to different subsets (a round robin from a random subset, in a seeded random order), so that
    the groups of one subset come from different regions."""
    g = len(centres)
    rng = np.random.default_rng(seed)
    regions = kmeans(centres, max(1, g // subsets), niter=25, nredo=5, seed=seed)
    order = np.lexsort((rng.random(g), regions))  # by region, shuffled within
    rank = np.arange(g) - np.searchsorted(regions[order], regions[order])  # position within the region
    offset = rng.integers(0, subsets, int(regions.max()) + 1)
    subset = np.empty(g, dtype=np.int64)
    subset[order] = (rank + offset[regions[order]]) % subsets
    return subset


def drop_close(centres: np.ndarray, tightness: np.ndarray, subset: np.ndarray, delta: float) -> np.ndarray:
    """Per subset, groups visited from the tightest: one closer than ``delta`` to a group already
    kept in its subset is dropped (-1). Checked against the 32 nearest centroids of the subset."""
    subset = subset.copy()
    for s in range(int(subset.max()) + 1 if len(subset) else 0):
        idx = np.flatnonzero(subset == s)
        if len(idx) < 2:
            continue
        mine = np.ascontiguousarray(centres[idx], dtype=np.float32)
        near = knn_search(mine, mine, min(32, len(idx) - 1), exclude_self=True)
        dist = np.linalg.norm(mine[:, None, :] - mine[near], axis=2)
        kept = np.zeros(len(idx), dtype=bool)
        for j in np.argsort(tightness[idx], kind="stable").tolist():
            if not kept[near[j][dist[j] < delta]].any():
                kept[j] = True
        subset[idx[~kept]] = -1
    return subset


def random_targets(count: int, dim: int, seed: int) -> torch.Tensor:
    """``count`` x ``dim`` rows uniform on the unit sphere, a function of ``seed`` only."""
    gen = torch.Generator().manual_seed(int(seed))
    t = torch.randn(count, dim, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(t, dim=1).float()


def confident_assignments(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Per row the column of the highest score when it beats the second by ``gamma`` or more,
    else -1 (scores: N x G similarities to a subset's targets)."""
    if scores.shape[1] == 1:
        return np.zeros(len(scores), dtype=np.int64)
    top2 = np.partition(scores, scores.shape[1] - 2, axis=1)[:, -2:]
    best = scores.argmax(axis=1)
    return np.where(top2[:, 1] - top2[:, 0] >= gamma, best, -1).astype(np.int64)


def coassignment_components(assign: np.ndarray, votes: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-classes from co-assignment: images x and y are related when they are assigned to the
    same group in at least ``votes`` subsets (assign: N x S, -1 unassigned), or (``groups``: group
    id per image, -1 none) when they share a group, the relations found reliable before; the
    connected components of that graph (transitivity) with two images or more, numbered 0..,
    others -1."""
    n, s = assign.shape
    counts = sp.csr_matrix((n, n), dtype=np.int32)
    if groups is not None and (groups >= 0).any():
        rows = np.flatnonzero(groups >= 0)
        onehot = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, groups[rows])), shape=(n, int(groups.max()) + 1))
        counts = counts + votes * (onehot @ onehot.T)
    for j in range(s):
        rows = np.flatnonzero(assign[:, j] >= 0)
        onehot = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, assign[rows, j])),
                               shape=(n, int(assign[:, j].max()) + 1 if len(rows) else 1))
        counts = counts + onehot @ onehot.T
    edges = counts >= votes
    edges.setdiag(False)
    edges.eliminate_zeros()
    _, comp = connected_components(edges, directed=False)
    sizes = np.bincount(comp)
    keep = sizes[comp] >= 2
    out = np.full(n, -1, dtype=np.int64)
    _, out[keep] = np.unique(comp[keep], return_inverse=True)
    return out


def split_components(labels: np.ndarray, feats: np.ndarray, max_size: int, seed: int = 0) -> np.ndarray:
    """Components larger than ``max_size`` cut by k-means into ceil(size / max_size) parts (a chain
    of transitive relations can join unrelated images); renumbered 0..; parts of one image -1."""
    out = labels.copy()
    if (labels < 0).all():
        return out
    sizes = np.bincount(labels[labels >= 0])
    nxt = len(sizes)
    for c in np.flatnonzero(sizes > max_size).tolist():
        idx = np.flatnonzero(labels == c)
        parts = kmeans(feats[idx], int(np.ceil(len(idx) / max_size)), niter=20, nredo=1, seed=seed + c)
        out[idx] = np.where(parts == 0, c, nxt + parts - 1)
        nxt += int(parts.max())
    sizes = np.bincount(out[out >= 0])
    out[(out >= 0) & (sizes[np.maximum(out, 0)] < 2)] = -1
    keep = out >= 0
    _, out[keep] = np.unique(out[keep], return_inverse=True)
    return out


# ---- diagnostics (these read the true labels; training never calls them) -------------------------
def pair_precision(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Of all pairs of images in one cluster (``clusters`` >= 0), the share of the same class."""
    keep = clusters >= 0
    c, y = clusters[keep], truth[keep]
    _, cell = np.unique(np.stack([c, y]), axis=1, return_counts=True)
    sizes = np.bincount(c)
    pairs = (sizes * (sizes - 1)).sum()
    return float((cell * (cell - 1)).sum() / pairs) if pairs else float("nan")


def subset_dissimilarity(groups: Groups, subset: np.ndarray, truth: np.ndarray) -> float:
    """Of all pairs of groups in one subset, the share whose majority classes differ."""
    majority = np.array([np.bincount(truth[m]).argmax() for m in groups.members], dtype=np.int64)
    same = total = 0
    for s in range(int(subset.max()) + 1 if len(subset) else 0):
        maj = majority[subset == s]
        _, counts = np.unique(maj, return_counts=True)
        n = len(maj)
        total += n * (n - 1) // 2
        same += int((counts * (counts - 1) // 2).sum())
    return 1.0 - same / total if total else float("nan")


def neighbour_precision(knn: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Share of images whose k-th nearest neighbour has their class, for k = 1..K (the premise:
    it falls with k, so only the closest relations are reliable)."""
    return (truth[knn] == truth[:, None]).mean(axis=0)
