"""Class-balanced P x M batches, split across data-parallel ranks.

Each global batch holds P distinct classes and M images of each. Rank r of W takes classes
[r*P/W, (r+1)*P/W) of every global batch, so ranks see disjoint images and, gathered, exactly
the global batch: the loss sees the same batch whatever the number of workers. Batches are a
pure function of (seed, epoch), which makes resuming at an epoch boundary exact.
"""

from __future__ import annotations

import numpy as np

from reprlab.platform.errors import ConfigError


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
    ) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        classes, counts = np.unique(targets, return_counts=True)
        if classes_per_batch > len(classes):
            raise ConfigError(
                f"config: data.classes_per_batch: {classes_per_batch} is more than the "
                f"{len(classes)} training classes"
            )
        if classes_per_batch % world_size:
            raise ConfigError("config: data.classes_per_batch must be divisible by scaling.num_workers")
        self.P, self.M, self.iterations = classes_per_batch, samples_per_class, iterations
        self.rank, self.world_size, self.seed = rank, world_size, seed
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
        rng = np.random.default_rng([self.seed, epoch, 0xBA7C4])
        n_classes, width = self.members.shape
        chosen = np.argpartition(rng.random((self.iterations, n_classes)), self.P - 1, axis=1)[:, : self.P]
        counts = self.counts[chosen]  # (I, P)
        keys = rng.random((self.iterations, self.P, width))
        keys[np.arange(width) >= counts[..., None]] = 2.0  # padding never wins
        pos = np.argsort(keys, axis=2)[..., : self.M]
        pos = pos % counts[..., None]  # classes smaller than M repeat images
        return self.members[chosen[..., None], pos]

    def batches(self, epoch: int) -> np.ndarray:
        """(iterations, P/W * M) image indices of this rank's share of every batch of ``epoch``."""
        per_rank = self.P // self.world_size
        mine = self.global_batches(epoch)[:, self.rank * per_rank : (self.rank + 1) * per_rank]
        return mine.reshape(self.iterations, per_rank * self.M)

    def __iter__(self):
        raise TypeError("call .batches(epoch): batches depend on the epoch")
