import numpy as np
import pytest

from reprlab.platform.dml.samplers import ClassBalancedSampler
from reprlab.platform.core.errors import ConfigError


def _targets():
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 12, size=40)  # some classes smaller than M
    return rng.permutation(np.repeat(np.arange(40), counts))


def test_global_batches_hold_p_classes_with_m_images_each():
    t = _targets()
    s = ClassBalancedSampler(t, 8, 4, iterations=30, seed=1)
    gb = s.global_batches(0)
    assert gb.shape == (30, 8, 4)
    labels = t[gb]
    assert (labels == labels[..., :1]).all(), "each P-row is one class"
    assert all(len(np.unique(row[:, 0])) == 8 for row in labels), "P distinct classes"
    big = np.bincount(t)[labels[..., 0]] >= 4
    assert all(len(np.unique(g)) == 4 for g in gb[big]), "no repeats when a class has >= M images"


def test_ranks_get_disjoint_shares_that_make_the_global_batch():
    t = _targets()
    shares = [ClassBalancedSampler(t, 8, 4, 20, rank=r, world_size=2, seed=3).batches(5) for r in range(2)]
    full = ClassBalancedSampler(t, 8, 4, 20, seed=3).batches(5)
    assert shares[0].shape == (20, 16)
    for i in range(20):
        assert not set(shares[0][i]) & set(shares[1][i])
        assert not set(t[shares[0][i]]) & set(t[shares[1][i]]), "ranks see different classes"
    np.testing.assert_array_equal(np.concatenate(shares, axis=1), full)


def test_deterministic_per_epoch_and_different_across_epochs():
    t = _targets()
    a = ClassBalancedSampler(t, 8, 2, 10, seed=0)
    b = ClassBalancedSampler(t, 8, 2, 10, seed=0)
    np.testing.assert_array_equal(a.batches(2), b.batches(2))
    assert not np.array_equal(a.batches(2), a.batches(3))
    assert not np.array_equal(a.batches(2), ClassBalancedSampler(t, 8, 2, 10, seed=1).batches(2))


def test_too_many_classes_per_batch():
    with pytest.raises(ConfigError, match="classes_per_batch"):
        ClassBalancedSampler(np.repeat(np.arange(4), 3), 8, 2, 5)
