"""Plain shuffled global batches and each worker's share of a global batch.

A global batch is a pure function of (seed, epoch); rank r of W takes the r-th of W near-equal
contiguous slices (the first ``n % W`` ranks one sample more), so the union of the ranks' shares is
the global batch whatever the worker count, and a batch need not divide by it. Class-balanced
P x M batches (metric learning) are in :mod:`reprlab.platform.dml.samplers`.
"""

from __future__ import annotations

import numpy as np


def rank_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s share of ``n`` items (``np.array_split``'s sizes)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def rank_sizes(n: int, world_size: int) -> list[int]:
    """The share of every rank of ``n`` items."""
    return [b - a for a, b in (rank_bounds(n, r, world_size) for r in range(world_size))]


def shuffled_batches(n: int, batch_size: int, iterations: int, *, epoch: int, seed: int, rank: int = 0,
                     world_size: int = 1) -> np.ndarray:
    """Plain shuffled batches (classifiers, autoencoders, image-to-image methods): ``iterations``
    global batches of ``batch_size`` from permutations of range(n) seeded by (seed, epoch),
    identical on every rank; rank r takes its share (:func:`rank_bounds`) of each.
    Shape: iterations x that share."""
    if batch_size < world_size:
        raise ValueError(f"a batch of {batch_size} cannot give each of {world_size} workers a sample")
    rng = np.random.default_rng([seed, epoch, 0x5BF])
    need = iterations * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
    start, stop = rank_bounds(batch_size, rank, world_size)
    return order.reshape(iterations, batch_size)[:, start:stop]
