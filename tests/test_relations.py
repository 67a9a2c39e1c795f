"""Unsupervised relation discovery (Milbich et al., PR 2020; our reading, specs/relations.md):
grouping, partitioning, targets, inference and transitivity on constructed points; the method
never reads a label, learns beyond its start, resumes exactly, runs on two Ray workers as in one
process, and refuses bad input in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.platform.core.config import load_config
from reprlab.platform.dml import relations as rel
from reprlab.platform.dml.batches import probe_metrics
from reprlab.platform.run.driver import run_training


def _blobs(centres: np.ndarray, per: int, spread: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per`` points around every centre (Gaussian, one spread per centre) and the centre of each."""
    rng = np.random.default_rng(seed)
    pts = np.repeat(centres, per, axis=0) + rng.normal(size=(len(centres) * per, centres.shape[1])) * np.repeat(
        spread, per)[:, None]
    return pts.astype(np.float32), np.repeat(np.arange(len(centres)), per)


# ---- grouping --------------------------------------------------------------------------------------


def test_groups_are_disjoint_mutual_neighbours_taken_tightest_first():
    """20 far-apart blobs of 3 points, 10 tight (spread 0.01) and 10 loose (0.2): at a coverage of
    half the points exactly the ten tight blobs are accepted. Sorting the wrong way round takes the
    loose ones; dropping the disjointness check repeats points."""
    centres = np.random.default_rng(1).normal(size=(20, 8)) * 10
    spread = np.r_[np.full(10, 0.01), np.full(10, 0.2)]
    pts, blob = _blobs(centres, 3, spread)
    groups = rel.find_groups(pts, 3, 2, 0.5)
    assert len(groups) == 10
    assert len(np.unique(groups.members)) == groups.members.size
    assert sorted(np.unique(blob[groups.members])) == list(range(10))  # the tight blobs
    assert (blob[groups.members] == blob[groups.members][:, :1]).all()  # each group within one blob
    assert np.all(np.diff(groups.compactness) >= 0)
    labels = groups.labels(len(pts))
    assert (labels >= 0).sum() == 30 and set(labels[labels >= 0]) == set(range(10))


def test_a_candidate_whose_members_are_not_mutual_neighbours_is_refused():
    """A hub: point 0 has 1 and 2 as its nearest neighbours, but 1 and 2 each have a closer partner
    (1' and 2') and do not list each other within k = 1. Compact grouping refuses {0, 1, 2}; the raw
    kNN ablation accepts kNN sets without the check."""
    pts = np.array([[0, 0], [1, 0], [-1, 0], [1.3, 0], [-1.3, 0]], dtype=np.float32)
    compact = rel.find_groups(pts, 3, 2, 1.0)
    assert all(set(m) != {0, 1, 2} for m in compact.members.tolist())
    raw = rel.find_groups(pts, 3, 2, 1.0, compact=False, seed=0)
    assert len(raw) >= 1
    knn = rel.neighbours(pts, 2)
    assert not rel.mutual_within(knn, np.array([[0, 1, 2]]))[0]
    assert rel.mutual_within(knn, np.array([[0, 1, 3]]))[0] == ((knn[0] == 3).any() and (knn[3] == 0).any())


def test_compactness_is_the_mean_pairwise_distance():
    pts = np.array([[0, 0], [3, 0], [0, 4]], dtype=np.float32)
    assert rel.compactness(pts, np.array([[0, 1, 2]]))[0] == pytest.approx((3 + 4 + 5) / 3)


# ---- partitioning ------------------------------------------------------------------------------------


def test_groups_of_one_region_go_to_different_subsets():
    """8 far-apart regions of 4 groups each: every subset takes exactly one group of every region."""
    rng = np.random.default_rng(0)
    centres = (np.repeat(np.eye(8) * 30, 4, axis=0) + rng.normal(size=(32, 8))).astype(np.float32)
    region = np.repeat(np.arange(8), 4)
    for seed in (0, 3):
        subset = rel.partition_groups(centres, np.linspace(0.1, 1.0, 32), 4, 0.0, seed=seed)
        for s in range(4):
            assert sorted(region[subset == s]) == list(range(8)), (seed, s)
    assert (rel.partition_groups(centres, np.ones(32), 1, 0.5) == 0).all()  # one subset: no partitioning


def test_a_group_near_a_tighter_one_of_its_subset_is_dropped():
    """A and A' (0.1 apart) share subset 0; A' is tighter, so A goes. B, as near to A but in
    subset 1, stays, and so does everything at delta below their distance."""
    centres = np.array([[0, 0], [0.1, 0], [0.05, 0], [9, 9]], dtype=np.float32)
    subset = np.array([0, 0, 1, 1])
    assert rel.drop_close(centres, np.array([0.5, 0.1, 0.3, 0.3]), subset, 0.2).tolist() == [-1, 0, 1, 1]
    assert rel.drop_close(centres, np.array([0.5, 0.1, 0.3, 0.3]), subset, 0.05).tolist() == [0, 0, 1, 1]
    assert rel.drop_close(centres, np.array([0.1, 0.5, 0.3, 0.3]), subset, 0.2).tolist() == [0, -1, 1, 1]


def test_random_targets_are_unit_rows_fixed_by_the_seed():
    a, b, c = rel.random_targets(7, 16, 5), rel.random_targets(7, 16, 5), rel.random_targets(7, 16, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=1), torch.ones(7), atol=1e-6)


# ---- inference and transitivity ------------------------------------------------------------------------


def test_assignments_need_the_margin_gamma():
    scores = np.array([[0.9, 0.5, 0.1], [0.6, 0.55, 0.0], [0.1, 0.2, 0.7]])
    assert rel.confident_assignments(scores, 0.1).tolist() == [0, -1, 2]
    assert rel.confident_assignments(scores, 0.0).tolist() == [0, 0, 2]


def test_components_join_coassigned_images_transitively_at_enough_votes():
    """0-1 co-assigned in subsets 0 and 1, 1-2 in subsets 1 and 2, 0-2 in subset 1 only, 3-4 in
    subset 1 only, 5 with nobody: with v = 2 the one component is {0, 1, 2} (0 and 2 through 1:
    transitivity); with v = 1 {3, 4} joins as its own component. Kept group relations (3 and 4 in
    one group) join 3 and 4 at v = 2."""
    assign = np.array([
        [0, 0, 5],
        [0, 0, 1],
        [3, 0, 1],
        [1, 4, -1],
        [2, 4, -1],
        [4, 3, 0],
    ])
    comp = rel.coassignment_components(assign, 2)
    assert comp[0] == comp[1] == comp[2] == 0 and (comp[3:] == -1).all()
    loose = rel.coassignment_components(assign, 1)
    assert loose[3] == loose[4] >= 0 and loose[3] != loose[0] and loose[5] == -1
    kept = rel.coassignment_components(assign, 2, groups=np.array([-1, -1, -1, 7, 7, -1]))
    assert kept[3] == kept[4] >= 0 and kept[3] != kept[0] and kept[5] == -1


def test_large_components_are_cut_and_singletons_dropped():
    pts, _ = _blobs(np.array([[0.0, 0], [50, 0], [0, 50]]), 4, np.full(3, 0.1))
    labels = np.zeros(12, np.int64)
    cut = rel.split_components(labels, pts, 4, seed=0)
    assert len(np.unique(cut)) == 3
    assert all(len(set(cut[i * 4 : i * 4 + 4])) == 1 for i in range(3))
    assert (rel.split_components(np.array([0, 0, 1, -1]), pts[:4], 4) == [0, 0, -1, -1]).all()


def test_diagnostics_count_pairs_and_neighbours():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert rel.pair_precision(np.array([0, 0, 0, 1, 1, -1]), truth) == pytest.approx(1 / 4)  # pairs: 3 + 1, same 1 + 0
    assert rel.pair_precision(np.array([0, 0, 1, 1, 2, 2]), truth) == 1.0
    knn = np.array([[1, 2], [0, 2], [3, 0], [2, 0], [5, 0], [4, 0]])
    assert rel.neighbour_precision(knn, truth).tolist() == [1.0, 0.0]
    groups = rel.Groups(np.array([[0, 1], [2, 3], [4, 5]]), np.zeros(3))
    assert rel.subset_dissimilarity(groups, np.array([0, 0, 0]), truth) == 1.0
    assert rel.subset_dissimilarity(groups, np.array([0, 0, 0]), np.array([0, 0, 0, 0, 2, 2])) == pytest.approx(2 / 3)


def test_probe_metrics_read_class_structure():
    """Well separated classes: kNN and the linear probe are exact; the same points with shuffled
    labels fall to about chance (1/4)."""
    pts, y = _blobs(np.eye(4, 8) * 10, 20, np.full(4, 0.5))
    good = probe_metrics(pts, y)
    assert good == {"knn_acc": 1.0, "probe_acc": 1.0}
    bad = probe_metrics(pts, np.random.default_rng(0).permutation(y))
    assert bad["knn_acc"] < 0.5 and bad["probe_acc"] < 0.6


# ---- the method ------------------------------------------------------------------------------------------

TINY = ["data.name=digits", "data.digits.size=16", "data.image_size=16", "data.classes_per_batch=8",
        "data.samples_per_class=3", "data.iterations_per_epoch=10", "data.augment=true", "model.width=8",
        "model.embed_dim=16", "method.rounds=2", "method.epochs_per_round=2", "method.group_size=3", "method.k_nn=10",
        "method.coverage=[0.3,0.5]", "method.subsets=2", "method.votes=2", "method.target_dim=8",
        "method.max_component=20", "train.epochs=4", "eval.kmeans_niter=5", "eval.test=every", "checkpoint.keep=5", "scaling.num_workers=0"]


def _run(out, extra=(), monkeypatch=None):
    return run_training(load_config("relations/digits", [*TINY, *extra]), out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("relations") / "straight"
    return out, _run(out)


def _rows(out):
    return pq.read_table(out / "metrics.parquet").to_pylist()


def test_training_never_reads_a_label(straight, tmp_path, monkeypatch):
    """The training labels permuted after the bundle is built (and the train split's labels with
    them): every training loss and every weight are the same; only the label-reading diagnostics
    differ. A sampler or loss that read ``data.targets`` would change the batches and fail this."""
    import reprlab.platform.run.loop as loop

    real = loop.load_run_data

    def permuted(cfg):
        bundle = real(cfg)
        order = np.random.default_rng(123).permutation(len(bundle.targets))
        bundle.targets[:] = bundle.targets[order]
        bundle.train.labels[:] = bundle.train.labels[order]
        return bundle

    monkeypatch.setattr(loop, "load_run_data", permuted)
    out, _ = straight
    shuffled = tmp_path / "shuffled"
    _run(shuffled)
    for a, b in zip(_rows(out), _rows(shuffled), strict=True):
        for key in ("train/loss", "train/local", "train/margin", "method/n_groups", "method/n_components"):
            if a.get(key) is not None:
                assert b[key] == a[key], (a["epoch"], key)
    assert any(a["method/group_purity"] != b["method/group_purity"] for a, b in zip(_rows(out), _rows(shuffled))
               if a.get("method/group_purity") is not None), "the diagnostics do read the (permuted) labels"
    sa = torch.load(out / "checkpoints" / "epoch_0004" / "state.pt", weights_only=False)["method"]["attributes"]["net"]
    sb = torch.load(shuffled / "checkpoints" / "epoch_0004" / "state.pt", weights_only=False)["method"]["attributes"]["net"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_it_learns_beyond_its_start_and_writes_its_figures(straight):
    """Measured (seed 0): kNN accuracy 0.435 -> 0.585, MAP@R 0.084 -> 0.182 in 4 epochs of 10 steps.
    The bars (+0.08, +0.05) fail a flipped local or margin loss and a detached trunk."""
    out, summary = straight
    assert summary["test"]["knn_acc"] > summary["initial"]["knn_acc"] + 0.08, summary
    assert summary["test"]["map@r"] > summary["initial"]["map@r"] + 0.05, summary
    assert {"knn_reliability.png", "purity_coverage.png", "groups.png"} <= {p.name for p in out.iterdir()}
    rows = _rows(out)
    assert [r["method/round"] for r in rows] == [-1, 0, 0, 1, 1]
    # the local heads learn their random targets within each round (measured 6.96 -> 5.75 and
    # 7.58 -> 6.98): a flipped or detached local loss fails this while g alone still learns
    assert rows[2]["train/local"] < rows[1]["train/local"] - 0.3 and rows[4]["train/local"] < rows[3]["train/local"] - 0.2
    assert all(r["method/group_purity"] > r["method/raw_precision"] for r in rows[1:]), \
        "compact groups are purer than the raw neighbours"


def test_resume_after_a_kill_equals_the_uninterrupted_run(straight, tmp_path):
    """Killed after epoch 2 (the next epoch starts a round: grouping must run) and after epoch 3
    (inside a round: grouping must not run again); augmentation on."""
    out, _ = straight
    for kept in (2, 3):
        resumed = tmp_path / f"resumed{kept}"
        shutil.copytree(out, resumed)
        for later in range(kept + 1, 5):
            shutil.rmtree(resumed / "checkpoints" / f"epoch_{later:04d}")
        run_training(load_config("relations/digits", TINY), resumed, resume=True)
        keys = ("train/loss", "train/local", "train/margin", "method/group_purity", "method/relation_precision",
                "method/n_components", "test/map@r", "test/knn_acc", "test/probe_acc")
        for ra, rb in zip(_rows(out), _rows(resumed), strict=True):
            for key in keys:
                if ra.get(key) is not None:
                    assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (kept, ra["epoch"], key)


@pytest.mark.parametrize("sets, fragment", [
    (["method.votes=3"], "method.votes: 3 is more than the 2 subsets"),
    (["method.group_size=12"], "method.group_size: 12 needs k_nn >= 11"),
    (["data.samples_per_class=4"], "method.group_size: 3 is smaller than data.samples_per_class 4"),
    (["method.rounds=4"], "method.rounds: 4 rounds of 2 epochs start their last round at epoch 7"),
    (["method.coverage=[0.3,1.5]"], "method.coverage"),
    (["method.mode=kmeans", "method.evaluate=local_concat"], "local_concat needs mode=relations"),
])
def test_bad_input_is_one_line_before_anything_is_written(sets, fragment, tmp_path, cli_error):
    out = tmp_path / "run"
    args = ["train", "relations/digits", "--output", str(out)]
    for s in TINY + sets:
        args += ["--set", s]
    assert fragment in cli_error(args)
    assert not out.exists()


@pytest.mark.slow
def test_two_ray_workers_equal_the_in_process_run(ray_session, tmp_path):
    """One round, three steps, augmentation on: grouping on the gathered embedding, the broadcast
    plan, the shares of the local and global batches, their augmentation slots, the gathered losses
    and global BatchNorm give the one process's numbers. (Longer runs drift apart: a float32
    difference in a distance flips a mined negative or a confident assignment, and the discrete
    steps amplify it.)"""
    short = ["train.epochs=1", "method.rounds=1", "data.iterations_per_epoch=3"]
    local = _run(tmp_path / "local", short)
    ray2 = _run(tmp_path / "ray", [*short, "scaling.num_workers=2", "scaling.cpus_per_worker=1"])
    for key in ("map@r", "recall@1", "knn_acc"):
        assert ray2["test"][key] == pytest.approx(local["test"][key], rel=1e-4, abs=1e-4), key
    for ra, rb in zip(_rows(tmp_path / "local"), _rows(tmp_path / "ray"), strict=True):
        for key in ("train/loss", "train/local", "train/margin", "method/n_components", "method/group_purity"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["epoch"], key)
