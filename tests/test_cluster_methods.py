"""Mechanics of Divide & Conquer, MIC and Sharing Matters, and their shared pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprlab.platform.eval.clustering import (
    drop_singleton_classes,
    kmeans,
    l2_normalize,
    match_clusters,
    remove_class_means,
)
from reprlab.platform.core.config import load_config
from reprlab.platform.contract.context import Context
from reprlab.platform.contract.context import load_run_data
from reprlab.platform.dml.samplers import ClassBalancedSampler, ClusterRoundRobinSampler
from reprlab.platform.dml import AdversarialDecorrelation, grad_reverse, shared_triplets
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.eval.retrieval import nmi
from reprlab.platform.core.registry import METHODS


def _method(tiny, *overrides: str):
    cfg = load_config(None, tiny + ["scaling.num_workers=0", *overrides])
    ctx = Context(cfg, load_run_data(cfg), torch.device("cpu"))
    method = METHODS.get(cfg.method.name)(ctx)
    method.build()
    return method


# ---- Divide & Conquer -------------------------------------------------------------------------


def test_learner_slices_are_normalized_on_their_own(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4")
    learners = dc.model.heads["learners"]
    feats = torch.randn(5, dc.model.backbone.out_dim)
    for k in range(4):
        sub = learners.learner(feats, k)
        assert sub.shape == (5, 4)  # embed_dim 16 / K 4
        torch.testing.assert_close(sub.norm(dim=1), torch.ones(5))
    full = learners.full(feats)
    torch.testing.assert_close(full.norm(dim=1), torch.ones(5))
    # each learner is the normalized slice of the full (unnormalized) embedding
    raw = torch.cat([s(feats) for s in learners.slices], dim=1)
    torch.testing.assert_close(learners.learner(feats, 2), torch.nn.functional.normalize(raw[:, 8:12], dim=1))


def test_a_batch_of_cluster_k_moves_only_slice_k_head_weights(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4")
    dc.on_epoch_start(1)
    slices = dc.model.heads["learners"].slices
    batches = iter(dc.batches(1))
    for step in range(3):  # Adam's moments from earlier steps must not move other slices either
        x, y, k = next(batches)
        before = [s.weight.detach().clone() for s in slices]
        dc.train_step((x, y, k))
        for j, s in enumerate(slices):
            moved = not torch.equal(before[j], s.weight)
            assert moved == (j == k), f"step {step}: slice {j} moved={moved}, batch from cluster {k}"


def test_cluster_batches_come_from_their_cluster_in_turn(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=2")
    dc.on_epoch_start(1)
    sampler = dc.cluster_sampler(dc.clusters)
    index, which = sampler.batches(1)
    assert (dc.clusters[index] == which[:, None]).all()
    assert which.tolist() == [sampler.order[i % len(sampler.order)] for i in range(len(which))]


def test_conquer_phase_trains_the_full_embedding(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4", "method.conquer_epoch=2")
    dc.on_epoch_start(2)
    assert dc.clusters is None, "no clustering once conquering"
    x, y, k = next(iter(dc.batches(2)))
    assert k is None
    slices = dc.model.heads["learners"].slices
    before = [s.weight.detach().clone() for s in slices]
    dc.train_step((x, y, k))
    assert all(not torch.equal(b, s.weight) for b, s in zip(before, slices))


def test_full_loss_epoch_trains_the_full_embedding_on_cluster_batches_with_the_learners_criterion(tiny):
    # The reference's schedule (issue 15): from full_loss_epoch on, a batch of cluster k still comes
    # from cluster k and uses learner k's criterion, but its loss is on the full embedding, so every
    # slice moves. Catches: the option ignored (only slice k moves), the switch one epoch late, the
    # last criterion (the conquer one) used instead of learner k's.
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4", "method.full_loss_epoch=2",
                 "method.conquer_epoch=3", "method.learn_beta=true")
    slices = dc.model.heads["learners"].slices
    for epoch, full in ((1, False), (2, True)):
        dc.on_epoch_start(epoch)
        x, y, k = next(iter(dc.batches(epoch)))
        assert k is not None and dc.clusters is not None, "cluster batches until conquer_epoch"
        before = [s.weight.detach().clone() for s in slices]
        betas = [c.beta.detach().clone() for c in dc.criteria]
        logs = dc.train_step((x, y, k))
        assert logs["full_loss"] == float(full)
        moved = [not torch.equal(b, s.weight) for b, s in zip(before, slices)]
        assert moved == ([True] * 4 if full else [j == k for j in range(4)]), (epoch, k, moved)
        changed = [not torch.equal(b, c.beta) for b, c in zip(betas, dc.criteria)]
        assert changed == [j == k for j in range(len(dc.criteria))], (epoch, k, changed)


def test_learnable_masks_train_with_an_orthogonality_penalty(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4", "method.masks=true")
    masks = dc.model.heads["learners"].masks
    assert masks.shape == (4, 16)
    before = masks.detach().clone()
    dc.on_epoch_start(1)
    logs = dc.train_step(next(iter(dc.batches(1))))
    assert logs["mask_overlap"] > 0
    assert not torch.equal(before, masks)
    lr = {id(p): g["lr"] for g in dc.optimizer.param_groups for p in g["params"]}
    assert lr[id(masks)] == pytest.approx(100 * dc.ctx.cfg.optim.lr)


def test_clustering_space_is_configurable(tiny):
    dc = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4", "method.cluster_space=embedding")
    x = torch.randn(3, 3, 16, 16)
    assert dc.cluster_space(x).shape == (3, 16)
    dc2 = _method(tiny, "method.name=divide_conquer", "method.num_clusters=4")
    assert dc2.cluster_space(x).shape == (3, dc2.model.backbone.out_dim)


def test_num_clusters_must_divide_the_embedding(tiny):
    with pytest.raises(ConfigError, match="method.num_clusters: 3 does not divide model.embed_dim=16"):
        load_config(None, tiny + ["method.name=divide_conquer", "method.num_clusters=3"])


def test_evaluation_of_concatenated_heads(tiny):
    mic = _method(tiny, "method.name=mic", "method.evaluate=concat")
    x = torch.randn(4, 3, 16, 16)
    emb = mic.embed_for_eval(x)
    assert emb.shape == (4, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert _method(tiny, "method.name=mic").embed_for_eval(x).shape == (4, 16)


# ---- clustering pieces -------------------------------------------------------------------------


def test_hungarian_matching_keeps_the_labels_of_an_identical_clustering():
    rng = np.random.default_rng(0)
    old = rng.integers(0, 6, size=500)
    relabelled = rng.permutation(6)[old]
    assert np.array_equal(match_clusters(old, relabelled, 6), old)
    noisy = relabelled.copy()
    flip = rng.random(500) < 0.1
    noisy[flip] = rng.integers(0, 6, size=flip.sum())
    matched = match_clusters(old, noisy, 6)
    assert (matched == old).mean() > 0.85
    assert sorted(np.unique(matched)) == list(range(6))


def test_singleton_classes_are_dropped_per_cluster():
    clusters = np.array([0, 0, 0, 1, 1, 1])
    targets = np.array([5, 5, 7, 7, 7, 9])
    assert drop_singleton_classes(clusters, targets).tolist() == [0, 0, -1, 1, 1, -1]


def test_kmeans_is_deterministic_and_finds_separated_groups():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 10
    truth = np.repeat(np.arange(4), 50)
    x = (centers[truth] + rng.normal(size=(200, 8))).astype(np.float32)
    a, b = kmeans(x, 4, niter=20, nredo=2, seed=3), kmeans(x, 4, niter=20, nredo=2, seed=3)
    assert np.array_equal(a, b)
    assert nmi(truth, a) == pytest.approx(1.0)


def test_class_mean_subtraction_removes_class_identity():
    rng = np.random.default_rng(2)
    classes = np.repeat(np.arange(10), 40)
    shared = np.tile(np.repeat(np.arange(4), 10), 10)  # a characteristic every class has
    feats = rng.normal(size=(10, 16))[classes] * 5 + rng.normal(size=(4, 16))[shared] + 0.1 * rng.normal(size=(400, 16))
    feats = l2_normalize(feats.astype(np.float32))
    before = kmeans(feats, 10, niter=30, seed=0)
    removed = remove_class_means(feats, classes)
    after = kmeans(removed, 4, niter=30, seed=0)
    for c in range(10):
        np.testing.assert_allclose(removed[classes == c].mean(0), 0, atol=1e-6)
    assert nmi(classes, before) > 0.9
    assert nmi(classes, after) < 0.1
    assert nmi(shared, after) > 0.9, "what classes share is what is left"


# ---- samplers -----------------------------------------------------------------------------------


def test_cluster_sampler_shares_are_disjoint_and_repeat_classes_of_small_clusters():
    targets = np.repeat(np.arange(12), 6)
    clusters = np.where(targets < 3, 0, 1)  # cluster 0: 3 classes, fewer than P = 4
    clusters[targets == 11] = -1
    full = ClusterRoundRobinSampler(targets, clusters, 4, 2, 6, seed=5)
    index, which = full.batches(0)
    assert which.tolist() == [0, 1] * 3
    assert (clusters[index] == which[:, None]).all()
    small = index[which == 0]
    assert all(len(np.unique(targets[b])) == 3 for b in small), "all 3 classes, one of them twice"
    parts = [ClusterRoundRobinSampler(targets, clusters, 4, 2, 6, rank=r, world_size=2, seed=5).batches(0) for r in (0, 1)]
    joined = np.concatenate([parts[0][0], parts[1][0]], axis=1)
    assert np.array_equal(np.sort(joined, axis=1), np.sort(index, axis=1))
    assert (parts[0][1] == parts[1][1]).all()


def test_class_balanced_sampler_still_refuses_too_few_classes_unless_asked():
    targets = np.repeat(np.arange(3), 4)
    with pytest.raises(ConfigError, match="more than the 3 training classes"):
        ClassBalancedSampler(targets, 4, 2, 2)
    batch = ClassBalancedSampler(targets, 4, 2, 2, repeat_classes=True).global_batches(0)
    assert batch.shape == (2, 4, 2)


# ---- adversarial decorrelation --------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 2.0)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4, 3), -2.0))


def test_adversary_learns_to_correlate_while_the_encoders_learn_to_decorrelate():
    torch.manual_seed(0)
    mix = torch.randn(8, 8)
    f_class = torch.randn(64, 8)
    f_shared = (f_class @ mix + 0.5 * torch.randn(64, 8)).requires_grad_()
    f_class.requires_grad_()
    adv = AdversarialDecorrelation(8, hidden=32)

    def correlation() -> float:
        with torch.no_grad():
            return -adv(f_class, f_shared).item()

    start = correlation()
    loss = adv(f_class, f_shared)
    loss.backward()
    with torch.no_grad():  # one gradient-descent step of R alone...
        for p in adv.parameters():
            p -= 0.5 * p.grad
    after_r = correlation()
    with torch.no_grad():  # ...and one of the encoders' outputs alone, on the same loss
        f_class -= 20.0 * f_class.grad
        f_shared -= 20.0 * f_shared.grad
    after_encoders = correlation()
    assert after_r > start, "R's step increases the correlation"
    assert after_encoders < after_r, "the reversed gradient makes the encoders decrease it"


# ---- Sharing Matters' triplets -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["random_positive", "weighted_positive"])
def test_shared_triplets_cross_classes(variant):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        labels = torch.randint(0, 5 + trial % 4, (48,))
        emb = torch.nn.functional.normalize(torch.randn(48, 16), dim=1)
        a, p, n = shared_triplets(emb, labels, gen, per_anchor=3, variant=variant)
        assert len(a) > 0
        la, lp, ln = labels[a], labels[p], labels[n]
        assert (la != lp).all(), "anchor and positive never share a class"
        assert ((ln != la) & (ln != lp)).all(), "the negative shares a class with neither"


def test_shared_triplets_need_a_third_class():
    labels = torch.tensor([0, 0, 1, 1])
    a, _, _ = shared_triplets(torch.nn.functional.normalize(torch.randn(4, 8), dim=1), labels)
    assert len(a) == 0


def test_mic_noisy_cluster_batches_keep_slot_labels():
    from reprlab.methods.mic import noisy_cluster_batches

    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 5, size=300)
    sampler = ClassBalancedSampler(clusters, 4, 4, 200, seed=1)
    batches = sampler.global_batches(0)
    images, labels = noisy_cluster_batches(batches, clusters, 0.2, rng)
    assert np.array_equal(labels, clusters[batches])
    replaced = images != batches
    assert 0.17 < replaced.mean() < 0.23  # 3,200 slots, each replaced with probability 0.2
    assert (clusters[images] != labels).mean() > 0.1
