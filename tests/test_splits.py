import numpy as np
import pytest

from reprlab.platform.core.config import DataSection
from reprlab.platform.data import make_bundle
from reprlab.platform.data.splits import check_min_images, holdout_split, kfold_split
from reprlab.platform.data.types import Benchmark, ImageSet
from reprlab.platform.core.errors import DataError


def _labels():
    return np.repeat(np.arange(10, 30), np.arange(2, 22))


def test_holdout_is_per_class_and_keeps_two_for_training():
    # Catches: a per-class share off by more than one image (e.g. ceil, or the fraction applied
    # to N instead of n_c), a class left with fewer than two training images, a non-seeded draw.
    y = _labels()
    tr, va = holdout_split(y, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert len(va) == round(0.2 * len(y))
    for c in np.unique(y):
        n, n_val = (y == c).sum(), (y[va] == c).sum()
        assert (y[tr] == c).sum() >= 2
        assert abs(n_val - 0.2 * n) < 1 or n_val == n - 2
    np.testing.assert_array_equal(va, holdout_split(y, 0.2, seed=0)[1])
    small = np.repeat(np.arange(3), [2, 3, 4])  # a large fraction: the two-image floor binds
    tr, va = holdout_split(small, 0.6, seed=0)
    assert np.bincount(small[tr]).tolist() == [2, 2, 2] and np.bincount(small[va], minlength=3).tolist() == [0, 1, 2]


def test_holdout_respects_its_fraction_on_a_sop_shaped_set():
    # Catches the earlier rule "at least one image from every class with 3 or more": on SOP's
    # shape (11,318 classes, 2-12 images each, 5.3 on average) fraction 0.1 held out 15.7%.
    counts = np.clip(np.random.default_rng(0).geometric(1 / 5.26, 11318), 2, 12)
    y = np.repeat(np.arange(len(counts)), counts)
    for fraction in (0.1, 0.15):
        _, va = holdout_split(y, fraction, seed=1)
        assert abs(len(va) - fraction * len(y)) <= 1, (fraction, len(va) / len(y))


def test_kfold_is_class_disjoint_and_covers_every_class_once():
    y = _labels()
    seen = []
    for fold in range(4):
        tr, va = kfold_split(y, 4, fold, seed=0)
        assert not set(y[tr]) & set(y[va])
        seen += list(np.unique(y[va]))
    assert sorted(seen) == list(np.unique(y))


def test_class_with_one_image_is_refused():
    with pytest.raises(DataError, match="class 7 in the train split has 1 image"):
        check_min_images(np.array([3, 3, 7, 5, 5]), "train")


def test_bundle_maps_targets_and_builds_eval_splits():
    y = _labels()
    px = np.zeros((len(y), 4, 4, 1), np.uint8)
    test = ImageSet(labels=np.array([100, 100, 101, 101]), pixels=np.zeros((4, 4, 4, 1), np.uint8))
    bench = Benchmark("toy", ImageSet(labels=y, pixels=px), test=test)
    b = make_bundle(bench, DataSection(validation={"protocol": "kfold", "folds": 4, "fold": 1}), seed=0)
    assert b.targets.min() == 0 and b.targets.max() == b.num_classes - 1
    np.testing.assert_array_equal(b.class_ids[b.targets], b.train.labels)
    assert set(b.eval_splits) == {"val", "test"} and b.eval_splits["test"].query is test
    assert not set(b.eval_splits["val"].query.labels) & set(b.train.labels)
