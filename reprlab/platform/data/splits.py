"""Validation protocols over the training classes, and the per-class image-count check."""

from __future__ import annotations

import numpy as np

from reprlab.platform.core.errors import DataError


def check_min_images(labels: np.ndarray, split: str, minimum: int = 2) -> None:
    """Every class of a training split needs ``minimum`` images to form positive pairs."""
    classes, counts = np.unique(labels, return_counts=True)
    small = classes[counts < minimum]
    if len(small):
        n = counts[counts < minimum][0]
        more = f" (and {len(small) - 1} more such classes)" if len(small) > 1 else ""
        raise DataError(
            f"data: class {small[0]} in the {split} split has {n} image(s); every {split} class needs "
            f"at least {minimum}{more}"
        )


def _rank_within_class(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rank 0..n_c-1 for each sample among the samples of its class."""
    order = np.lexsort((rng.random(len(labels)), labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[order] = np.arange(len(labels)) - first
    return ranks


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class hold-out of ``fraction`` of the images: every class gives floor(fraction x n_c)
    images to validation, and the remaining images up to round(fraction x N) in all go one each to
    the classes with the largest remainders (ties in a seeded random order). So the hold-out is
    fraction x N (to one image) and every class's share is within one image of fraction x n_c;
    at least two images of every class stay in training (a class with two validates none; the
    capacity it lacks is not handed to others). A per-class minimum of one (the earlier rule)
    held out 15.7% of a SOP-shaped set at fraction 0.1."""
    rng = np.random.default_rng([seed, 0xA11])
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    capacity = np.maximum(counts - 2, 0)
    quota = counts * fraction
    n_val = np.minimum(np.floor(quota).astype(np.int64), capacity)
    extra = int(round(float(counts.sum()) * fraction)) - int(n_val.sum())
    if extra > 0:
        open_ = np.flatnonzero(n_val < capacity)
        order = open_[np.lexsort((rng.random(len(open_)), -(quota[open_] - n_val[open_])))]
        n_val[order[:extra]] += 1
    is_val = _rank_within_class(labels, rng) < n_val[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def kfold_split(labels: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-disjoint k-fold (Musgrave et al. 2020): the classes of fold ``fold`` validate."""
    classes = np.unique(labels)
    if len(classes) < folds:
        raise DataError(f"data: {len(classes)} training classes cannot make {folds} class-disjoint folds")
    perm = np.random.default_rng([seed, 0xF01D]).permutation(classes)
    val_classes = np.array_split(perm, folds)[fold]
    is_val = np.isin(labels, val_classes)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def random_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unlabeled data: about ``fraction`` of the samples (at least one, fewer than all), drawn at
    random, validate."""
    if n < 2:
        raise DataError(f"data: {n} training sample(s) cannot be split into training and validation")
    n_val = int(np.clip(round(n * fraction), 1, n - 1))
    is_val = np.zeros(n, bool)
    is_val[np.random.default_rng([seed, 0xA12]).permutation(n)[:n_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
