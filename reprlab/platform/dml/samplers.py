"""Class-balanced P x M batches, split across data-parallel ranks.

Each global batch holds P distinct classes and M images of each. Rank r of W takes classes
[r*P/W, (r+1)*P/W) of every global batch, so ranks see disjoint images and, gathered, exactly
the global batch: the loss sees the same batch whatever the number of workers. Batches are a
pure function of (seed, stream, epoch), which makes resuming at an epoch boundary exact.

:class:`ClusterRoundRobinSampler` serves cluster-driven methods (Divide & Conquer): one class-
balanced sampler per cluster, the clusters taking turns batch by batch.
"""

from __future__ import annotations

import numpy as np

from reprlab.platform.core.errors import ConfigError


class ClassBalancedSampler:
    def __init__(
        self,
        targets: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        iterations: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        stream: int = 0,
        repeat_classes: bool = False,
    ) -> None:
        """``repeat_classes``: when there are fewer classes than ``classes_per_batch`` (a small
        cluster), a batch holds some classes twice (each class at most ceil(P / classes) times)
        instead of failing. ``stream`` separates samplers that share a seed."""
        targets = np.asarray(targets, dtype=np.int64)
        classes, counts = np.unique(targets, return_counts=True)
        if classes_per_batch > len(classes) and not repeat_classes:
            raise ConfigError(
                f"config: data.classes_per_batch: {classes_per_batch} is more than the "
                f"{len(classes)} training classes"
            )
        if classes_per_batch % world_size:
            raise ConfigError("config: data.classes_per_batch must be divisible by scaling.num_workers")
        if len(counts) and samples_per_class > counts.max() and not repeat_classes:
            raise ConfigError(
                f"config: data.samples_per_class: {samples_per_class} is more than the {counts.max()} images "
                f"of the largest training class (classes hold {counts.min()}-{counts.max()} images); "
                f"set data.samples_per_class <= {counts.max()}"
            )
        self.P, self.M, self.iterations = classes_per_batch, samples_per_class, iterations
        self.rank, self.world_size, self.seed, self.stream = rank, world_size, seed, stream
        self.classes, self.counts = classes, counts
        # members[c, j]: index of the j-th image of class c (padded with -1)
        order = np.argsort(targets, kind="stable")
        col = np.arange(len(targets)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.members = np.full((len(classes), counts.max()), -1, dtype=np.int64)
        self.members[np.repeat(np.arange(len(classes)), counts), col] = order

    def __len__(self) -> int:
        return self.iterations

    def global_batches(self, epoch: int) -> np.ndarray:
        """(iterations, P, M) image indices of every global batch of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, 0xBA7C4, self.stream])
        n_classes, width = self.members.shape
        if self.P <= n_classes:
            chosen = np.argpartition(rng.random((self.iterations, n_classes)), self.P - 1, axis=1)[:, : self.P]
        else:  # concatenated random permutations of all classes, cut at P
            reps = -(-self.P // n_classes)
            perms = np.argsort(rng.random((self.iterations, reps, n_classes)), axis=2)
            chosen = perms.reshape(self.iterations, reps * n_classes)[:, : self.P]
        counts = self.counts[chosen]  # (I, P)
        keys = rng.random((self.iterations, self.P, width))
        keys[np.arange(width) >= counts[..., None]] = 2.0  # padding never wins
        order = np.argsort(keys, axis=2)
        if width < self.M:  # every class smaller than M (repeat_classes' small clusters): cycle its images
            order = np.tile(order, (1, 1, -(-self.M // width)))
        pos = order[..., : self.M]
        pos = pos % counts[..., None]  # classes smaller than M repeat images
        return self.members[chosen[..., None], pos]

    def batches(self, epoch: int) -> np.ndarray:
        """(iterations, P/W * M) image indices of this rank's share of every batch of ``epoch``."""
        return self.share(self.global_batches(epoch))

    def share(self, global_batches: np.ndarray) -> np.ndarray:
        """This rank's classes of (iterations, P, M) global batches, flattened per batch."""
        per_rank = self.P // self.world_size
        mine = global_batches[:, self.rank * per_rank : (self.rank + 1) * per_rank]
        return mine.reshape(len(global_batches), per_rank * self.M)

    def __iter__(self):
        raise TypeError("call .batches(epoch): batches depend on the epoch")


class ClusterRoundRobinSampler:
    """One class-balanced sampler per cluster; batch i comes from cluster ``order[i % len(order)]``.

    ``clusters[j]`` is the cluster of training image j, or -1 for images left out. Clusters with
    fewer than two classes cannot form triplets and are skipped. Every rank sees the same cluster
    at the same iteration and takes its disjoint share of the batch.
    """

    def __init__(
        self,
        targets: np.ndarray,
        clusters: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        iterations: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        targets, clusters = np.asarray(targets, dtype=np.int64), np.asarray(clusters, dtype=np.int64)
        self.iterations = iterations
        self.order = [
            k for k in range(int(clusters.max()) + 1 if clusters.size else 0)
            if len(np.unique(targets[clusters == k])) >= 2
        ]
        if not self.order:
            raise ValueError("no cluster holds two classes")
        turns = -(-iterations // len(self.order))
        self.members = [np.flatnonzero(clusters == k) for k in self.order]
        self.samplers = [
            ClassBalancedSampler(
                targets[idx], classes_per_batch, samples_per_class, turns,
                rank=rank, world_size=world_size, seed=seed, stream=k + 1, repeat_classes=True,
            )
            for k, idx in zip(self.order, self.members)
        ]

    def __len__(self) -> int:
        return self.iterations

    def batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(iterations, P/W * M) image indices for this rank, and the cluster of every batch."""
        per_cluster = [m[s.batches(epoch)] for m, s in zip(self.members, self.samplers)]
        turn = np.arange(self.iterations)
        which = turn % len(self.order)
        stacked = np.stack(per_cluster)  # (clusters, turns, P/W * M)
        return stacked[which, turn // len(self.order)], np.asarray(self.order)[which]
