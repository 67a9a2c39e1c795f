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
    # Catches a change of the density's exponents (e.g. the weights square-rooted, D-2 -> D-1),
    # a missing lower clamp at 0.5, or a wrong sign: the expected frequencies are computed here
    # from Wu et al.'s formula, not from the module, for negatives at chosen distances (0.3 lies
    # below the clamp). 401 identical anchors x 400 positives = 160,400 draws: the standard error
    # of a frequency is at most 0.5 / sqrt(160,400) = 0.0012, so atol 0.01 is 8 standard errors,
    # while square-rooting the weights moves the frequencies by 0.1 or more.
    dim = 8
    dists = torch.tensor([0.3, 0.6, 0.8, 1.0, 1.2, 1.35], dtype=torch.float64)
    cos = 1 - dists**2 / 2
    negatives = torch.zeros(len(dists), dim, dtype=torch.float64)
    negatives[:, 0] = cos
    negatives[torch.arange(len(dists)), torch.arange(1, len(dists) + 1)] = (1 - cos**2).sqrt()
    anchor = torch.zeros(1, dim, dtype=torch.float64)
    anchor[0, 0] = 1.0
    x = torch.cat([anchor.repeat(401, 1), negatives]).float()
    labels = torch.cat([torch.zeros(401, dtype=torch.long), torch.arange(1, len(dists) + 1)])
    a, _, n = distance_weighted_triplets(x, labels, torch.Generator().manual_seed(0), nonzero_loss_cutoff=4.0)
    assert len(a) == 401 * 400 and (a < 401).all()
    freq = torch.bincount(n - 401, minlength=len(dists)).double() / len(n)
    d = dists.clamp_min(0.5)
    w = d ** (2 - dim) * (1 - d**2 / 4) ** ((3 - dim) / 2)
    expected = w / w.sum()
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)


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


def test_margin_loss_normalization_modes():
    # Catches: active_triplets counting terms (the two modes equal) or any term count other than
    # the formula's; on these triplets some have both terms active, so the two counts differ.
    emb, y = _batch(seed=4)
    trip = distance_weighted_triplets(emb, y, torch.Generator().manual_seed(0), nonzero_loss_cutoff=2.0)
    a, p, n = trip
    d_ap, d_an = (emb[a] - emb[p]).norm(dim=1), (emb[a] - emb[n]).norm(dim=1)
    pos, neg = F.relu(d_ap - 1.2 + 0.2), F.relu(1.2 - d_an + 0.2)
    both = ((pos > 0) & (neg > 0)).sum().item()
    assert both > 0
    terms = MarginLoss(8, normalization="active_terms")(emb, y, trip).item()
    triplets = MarginLoss(8, normalization="active_triplets")(emb, y, trip).item()
    total = (pos + neg).sum().item()
    assert terms == pytest.approx(total / ((pos > 0).sum() + (neg > 0).sum()).item(), rel=1e-5)
    assert triplets == pytest.approx(total / ((pos > 0) | (neg > 0)).sum().item(), rel=1e-5)


def test_divide_conquer_full_embedding_normalizes_each_slice_then_the_whole():
    # Catches the bug of issue 15 (the raw concatenation normalized as a whole): with one slice's
    # weights 10x larger, that slice would dominate the full embedding; normalized per slice,
    # every slice of the full embedding has norm 1/sqrt(K) and is learner k's embedding / sqrt(K).
    from reprlab.methods.divide_conquer import Learners

    torch.manual_seed(0)
    learners = Learners(in_dim=12, dim=8, k=2, masks=False)
    with torch.no_grad():
        learners.slices[0].weight.mul_(10.0)
    feats = torch.randn(32, 12)
    full = learners.full(feats)
    assert torch.allclose(full.norm(dim=1), torch.ones(32), atol=1e-6)
    for k in range(2):
        part = full[:, 4 * k: 4 * (k + 1)]
        assert torch.allclose(part.norm(dim=1), torch.full((32,), 0.5**0.5), atol=1e-6)
        assert torch.allclose(part * 2**0.5, learners.learner(feats, k), atol=1e-6)
