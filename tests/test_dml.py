import math

import pytest
import torch
import torch.nn.functional as F

from reprlab.platform.dml import MarginLoss, distance_weighted_triplets
from reprlab.platform.dml.distance_weighted import negative_log_weights
from reprlab.platform.dml.distances import pairwise_distances


def _batch(n_classes=8, m=4, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(m)
    return F.normalize(torch.randn(len(labels), dim, generator=g), dim=1), labels


def test_one_valid_triplet_per_anchor_positive_pair():
    emb, y = _batch()
    a, p, n = distance_weighted_triplets(emb, y, torch.Generator().manual_seed(0))
    assert len(a) == 8 * 4 * 3
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()


def test_negatives_drawn_in_proportion_to_inverse_density():
    emb, y = _batch(n_classes=4, m=2, dim=8, seed=1)
    emb = emb.repeat(1, 1)
    # one anchor with many positives: duplicate anchor 0's class so the draws are plentiful
    rows = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(2, 8)])
    x = torch.cat([emb[rows[:1]].repeat(401, 1), emb[rows[1:]]])
    labels = torch.cat([torch.zeros(401, dtype=torch.long), y[rows[1:]] + 1])
    a, _, n = distance_weighted_triplets(x, labels, torch.Generator().manual_seed(0), nonzero_loss_cutoff=4.0)
    draws = n[a == 0] - 401  # anchor 0's negatives among the 6 others
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    d = pairwise_distances(x[:1], x[401:])
    logw = negative_log_weights(d, torch.zeros_like(d, dtype=torch.bool), x.shape[1], 0.5, 4.0)[0]
    expected = torch.softmax(logw, 0)
    assert len(draws) == 400
    assert torch.allclose(freq, expected, atol=0.08), (freq, expected)


def test_negatives_beyond_the_cutoff_are_never_drawn():
    emb, y = _batch(n_classes=6, m=3, dim=16, seed=2)
    d = pairwise_distances(emb)
    cut = float(d[y[:, None] != y[None, :]].median())
    a, _, n = distance_weighted_triplets(emb, y, torch.Generator().manual_seed(0), nonzero_loss_cutoff=cut)
    far = d[a, n] >= cut
    has_near = ((d < cut) & (y[:, None] != y[None, :])).any(1)
    assert not far[has_near[a]].any()


def test_margin_loss_matches_pml_on_the_same_triplets():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    emb, y = _batch(seed=3)
    trip = distance_weighted_triplets(emb, y, torch.Generator().manual_seed(0), nonzero_loss_cutoff=2.0)
    e1 = emb.clone().requires_grad_()
    e2 = emb.clone().requires_grad_()
    ours = MarginLoss(8, margin=0.2, beta=1.2, learn_beta=True)
    theirs = pml.MarginLoss(margin=0.2, beta=1.2, learn_beta=True, num_classes=8)
    # PML normalizes inside its distance; ours expects normalized input: same function overall
    l1, l2 = ours(F.normalize(e1, dim=1), y, trip), theirs(e2, y, trip)
    l1.backward(), l2.backward()
    assert math.isclose(l1.item(), l2.item(), rel_tol=1e-5)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6)
    assert torch.allclose(ours.beta.grad, theirs.beta.grad, atol=1e-6)


def test_beta_is_per_class_and_learnable():
    emb, y = _batch()
    loss_fn = MarginLoss(8, beta=1.2)
    trip = distance_weighted_triplets(emb, y, torch.Generator().manual_seed(0), nonzero_loss_cutoff=2.0)
    loss_fn(emb, y, trip).backward()
    assert loss_fn.beta.shape == (8,) and loss_fn.beta.grad.abs().sum() > 0
    assert not MarginLoss(8, learn_beta=False).beta.requires_grad
