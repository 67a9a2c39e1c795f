"""The correspondence method (Ufer et al., GCPR 2019; our reading, specs/correspondence.md): ground
truth never reaches a training step, the phases switch at their epochs, mining happens only at
re-mining epochs and its cache survives a checkpoint (a resume does not re-mine and equals the
uninterrupted run), the method learns, and bad options are one line. The building blocks are tested
in test_correspondence_parts.py, the data in test_correspondence_data.py. Tiny sizes, one torch
thread."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.methods import correspondence as corr
from reprlab.platform.contract.context import Context, load_run_data
from reprlab.platform.core.config import load_config
from reprlab.platform.core.registry import METHODS
from reprlab.platform.data import DataBundle, EvalSplit
from reprlab.platform.data.types import Dense
from reprlab.platform.run.driver import run_training

TINY = ["data.synthcorr.val_pairs=24", "data.synthcorr.test_pairs=24", "data.synthcorr.train_images=4",
        "data.batch_size=8", "data.iterations_per_epoch=3", "method.pool_pairs=16", "method.diag_pairs=8",
        "method.hypotheses=32", "method.stereo=false", "method.flow_width=8", "model.width=4", "model.embed_dim=16",
        "method.warmup_epochs=1", "method.feature_epochs=2", "method.flow_epochs=1", "method.remine_every=2",
        "train.epochs=4", "eval.test=every", "scaling.num_workers=0", "scaling.cpus_per_worker=1"]
GROUND_TRUTH = {"flow", "mask", "target_mask", "keypoints", "target_keypoints", "box", "target_box", "parts"}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the presets' runs (two spin against each other on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _method(*overrides: str, data: DataBundle | None = None):
    cfg = load_config("correspondence/synthcorr", TINY + list(overrides))
    ctx = Context(cfg, data or load_run_data(cfg), torch.device("cpu"))
    method = METHODS.get("correspondence")(ctx)
    method.build()
    return method


def _train(method, epochs) -> list[dict[str, float]]:
    logs = []
    for epoch in epochs:
        method.on_epoch_start(epoch)
        logs += [method.train_step(b) for b in method.batches(epoch)]
        method.on_epoch_end(epoch)
    return logs


def _poisoned(bundle: DataBundle) -> DataBundle:
    """The bundle with every dense ground truth of every split replaced: NaN flows and keypoints,
    inverted masks, NaN boxes (copies; the cached set is untouched)."""
    def poison(images):
        dense = {k: Dense(d.kind, ~d.values if d.values.dtype == bool else np.full_like(d.values, np.nan))
                 for k, d in images.dense.items()}
        meta = {k: (np.full_like(v, np.nan) if k.endswith("box") else v) for k, v in images.meta.items()}
        return dataclasses.replace(images, dense=dense, meta=meta)

    splits = {k: EvalSplit(poison(s.query)) for k, s in bundle.eval_splits.items()}
    return dataclasses.replace(bundle, train=poison(bundle.train), eval_splits=splits)


# ---- ground truth stays out of training --------------------------------------------------------------


def test_batches_have_no_ground_truth_fields():
    for batch_type in (corr.ImageBatch, corr.PairBatch):
        names = {f.name for f in dataclasses.fields(batch_type)}
        assert not names & GROUND_TRUTH, batch_type
        assert names <= {"images", "img_a", "img_b", "category", "matches"}, names


@pytest.mark.parametrize("flow_init", ["soft_argmax", "affine"])  # the preset refines the affine fit
def test_train_steps_never_read_the_dense_ground_truth(monkeypatch, flow_init):
    """Every phase's steps give the same losses with all dense ground truth poisoned and the
    ground-truth draw disabled (mining reads only descriptors; the diagnostic's GT is outside)."""
    clean = _train(_method(f"method.flow_init={flow_init}"), range(1, 5))
    from reprlab.platform.data.sets import synthcorr

    def refuse(*args, **kwargs):
        raise AssertionError("training drew pairs with ground truth")

    monkeypatch.setattr(synthcorr, "draw_pair_truth", refuse)
    method = _method(f"method.flow_init={flow_init}")
    assert method.cfg.flow_init == flow_init
    method.ctx = dataclasses.replace(method.ctx, data=_poisoned(method.ctx.data))
    poisoned = _train(method, range(1, 5))
    assert [log["loss"] for log in poisoned] == [log["loss"] for log in clean]
    assert any("flow_charbonnier" in log for log in clean) and any("warmup_acc" in log for log in clean)
    assert torch.isnan(method._pairs("val").flow).all(), "the poison reached what the mining diagnostic reads"


# ---- phases and mining --------------------------------------------------------------------------------


def test_each_phase_starts_at_its_epoch_and_the_flow_phase_freezes_the_features():
    method = _method("method.feature_epochs=3", "train.epochs=5")
    assert [method.phase_of(e) for e in range(6)] == ["init", "warmup", "features", "features", "features", "flow"]
    seen = {}
    for epoch in range(1, 6):
        method.on_epoch_start(epoch)
        batch = next(iter(method.batches(epoch)))
        assert isinstance(batch, corr.ImageBatch if epoch == 1 else corr.PairBatch), epoch
        before = [p.detach().clone() for p in method.features.parameters()]
        logs = method.train_step(batch)
        moved = any(not torch.equal(a, p) for a, p in zip(before, method.features.parameters()))
        seen[epoch] = (method.phase, moved, set(logs), method.epoch_metrics()["selectable"])
    # the flow net's epochs alone may be the reported one (before them its flow is untrained)
    assert [seen[e][3] for e in range(1, 6)] == [0.0, 0.0, 0.0, 0.0, 1.0]
    nn_flow = _method("method.flow=nn")
    nn_flow.on_epoch_start(2)
    assert nn_flow.epoch_metrics()["selectable"] == 1.0, "a flow computed from the features is there at once"
    assert seen[1][0] == "warmup" and "warmup_acc" in seen[1][2] and seen[1][1]
    assert seen[2][0] == seen[4][0] == "features" and "matches" in seen[4][2] and seen[4][1]
    assert seen[5][0] == "flow" and "flow_feature" in seen[5][2] and not seen[5][1], "frozen features moved"
    joint = _method("method.joint=true")
    _train(joint, range(1, 4))
    joint.on_epoch_start(4)
    before = [p.detach().clone() for p in joint.features.parameters()]
    joint.train_step(next(iter(joint.batches(4))))
    assert any(not torch.equal(a, p) for a, p in zip(before, joint.features.parameters())), "joint: features fine-tune"


def test_the_flow_net_on_the_affine_fit_starts_at_the_affine_baseline_and_then_departs_from_it():
    refine, fit = _method("method.flow_init=affine"), _method("method.flow=affine", "method.flow_epochs=0",
                                                              "train.epochs=3")
    _train(refine, range(1, 4))  # warm-up and features (the same seed: the same features as `fit`'s)
    _train(fit, range(1, 4))
    pairs = refine._pairs("test")
    fa, fb = refine._describe(pairs.img_a), refine._describe(pairs.img_b)
    assert torch.equal(fb, fit._describe(pairs.img_b))
    untrained, _, _ = refine._flow_and_masks(pairs, fa, fb)
    affine, _, _ = fit._flow_and_masks(pairs, fa, fb)
    assert affine.abs().amax() > 1.0, "the fit moves points (not the identity)"
    # every pixel, the borders included: the fit at full resolution plus a zero residual
    assert torch.allclose(untrained, affine, atol=1e-4), (untrained - affine).abs().amax()
    tps = _method("method.flow=tps", "method.flow_epochs=0", "train.epochs=3")  # the other fit, same matches
    tps_flow, _, _ = tps._flow_and_masks(pairs, fa, fb)
    assert tps_flow.shape == affine.shape and torch.isfinite(tps_flow).all()
    assert 0 < (tps_flow - affine).abs().mean() < affine.abs().mean(), "a TPS through the affine fit's inliers"
    _train(refine, [4])  # the flow epoch: the residual learns from the mined matches
    trained, _, _ = refine._flow_and_masks(pairs, fa, fb)
    assert (trained - affine).abs().amax() > 1e-3


def test_the_figure_ground_contrast_enters_the_flow_loss_with_its_weight():
    """w_c (ours, not the spec's) adds w_c x the contrast BCE to L_flow and nothing else: the same
    run with w_c 0 and 2.5 has the same terms at its first flow step and losses 2.5 x that term apart."""
    logs = {}
    for w in (0.0, 2.5):
        method = _method(f"method.w_c={w}")
        _train(method, range(1, 4))
        method.on_epoch_start(4)
        logs[w] = method.train_step(next(iter(method.batches(4))))
    terms = [k for k in logs[0.0] if k.startswith("flow_")]
    assert "flow_contrast" in terms and logs[0.0]["flow_contrast"] > 0.1
    assert all(logs[0.0][k] == pytest.approx(logs[2.5][k], rel=1e-5) for k in terms)
    assert logs[2.5]["loss"] - logs[0.0]["loss"] == pytest.approx(2.5 * logs[0.0]["flow_contrast"], rel=1e-4)


def test_mining_happens_only_at_re_mining_epochs(monkeypatch):
    calls = []
    original = corr.Correspondence.mine
    monkeypatch.setattr(corr.Correspondence, "mine", lambda self, r, epoch: (calls.append(epoch), original(self, r, epoch)))
    method = _method("method.feature_epochs=3", "method.flow_epochs=2", "train.epochs=6")
    _train(method, range(1, 7))
    assert calls == [2, 4, 6]  # remine_every 2 from the first feature epoch, through the flow phase
    assert [h[0] for h in method.mining_history] == [2, 4, 6]


def test_the_mining_cache_survives_a_state_round_trip():
    method = _method()
    _train(method, range(1, 3))
    state = method.state_dict()
    other = _method()
    other.load_state_dict(state)
    assert other.round == method.round == 0 and other.phase == "features"
    for key, value in method.cache.state_dict().items():
        assert torch.equal(other.cache.state_dict()[key], value), key
    assert all(torch.equal(a, b) for a, b in zip(other.pool, method.pool)), "the pool is redrawn identically"
    a, b = next(iter(method.batches(3))), next(iter(other.batches(3)))
    assert torch.equal(a.img_a, b.img_a) and torch.equal(a.matches.idx_b, b.matches.idx_b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("correspondence") / "straight"
    sets = ["method.remine_every=3"]  # one mining round over epochs 2-4
    return out, run_training(load_config("correspondence/synthcorr", TINY + sets), out), sets


def test_resume_does_not_re_mine_and_equals_the_uninterrupted_run(straight, tmp_path, monkeypatch):
    out, _, sets = straight
    assert {"transfers.png", "warp.png", "mixture.png", "mining.png"} <= {p.name for p in out.iterdir()}
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_0004")  # killed after epoch 3, inside the round of epoch 2
    calls = []
    original = corr.Correspondence.mine
    monkeypatch.setattr(corr.Correspondence, "mine", lambda self, r, epoch: (calls.append(epoch), original(self, r, epoch)))
    run_training(load_config("correspondence/synthcorr", TINY + sets), resumed, resume=True)
    assert calls == [], "the resumed run mined again"
    a = pq.read_table(out / "metrics.parquet").to_pylist()
    b = pq.read_table(resumed / "metrics.parquet").to_pylist()
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "method/mined_count", "val/pck@0.1", "test/pck@0.1", "test/nn_pck@0.1", "test/epe"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["epoch"], key)


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sets, fragment", [
    (["method.head=resnet"], "method.head"),
    (["method.flow=optical"], "method.flow"),
    (["method.padding=reflect"], "method.padding"),
    (["method.flow_init=tps"], "method.flow_init"),
    (["train.epochs=5"], "the phases (method.warmup_epochs + feature_epochs + flow_epochs) add up to 4 epochs"),
    (["data.image_size=32"], "synthcorr images are data.synthcorr.side=64 px"),
    (["data.name=glyphs"], "needs keypoints"),
    (["data.name=pf_pascal", "data.root=/nonexistent/pf"], "/nonexistent/pf"),
])
def test_bad_input_is_one_line_before_anything_is_written(sets, fragment, tmp_path, cli_error):
    out = tmp_path / "run"
    args = ["train", "correspondence/synthcorr", "--output", str(out)]
    for s in TINY + sets:
        args += ["--set", s]
    assert fragment in cli_error(args)
    assert not out.exists()


def test_trains_and_evaluates_on_a_pf_pascal_tree(tmp_path):
    """The stored-pairs path (the paper template's data): training pairs read from the pair list
    with their category only, evaluation pairs resized, PCK in B's original frame; metrics the set
    cannot measure (no dense truth) are left out."""
    from test_correspondence_data import _pascal_tree

    _pascal_tree(tmp_path / "pf")
    sets = [s for s in TINY if not s.startswith("data.synthcorr")] + [
        "data.name=pf_pascal", f"data.root={tmp_path / 'pf'}", "data.image_size=32", "data.batch_size=2",
        "data.iterations_per_epoch=1", "method.pool_pairs=2"]
    summary = run_training(load_config("correspondence/synthcorr", sets), tmp_path / "run")
    assert 0.0 <= summary["test"]["pck@0.1"] <= 1.0 and "nn_pck@0.1" in summary["test"]
    assert "epe" not in summary["test"] and "mask_iou" not in summary["test"]


# ---- it learns ----------------------------------------------------------------------------------------

LEARN = ["data.synthcorr.val_pairs=40", "data.synthcorr.test_pairs=40", "data.synthcorr.train_images=20",
         "data.batch_size=16", "data.iterations_per_epoch=20", "method.pool_pairs=48", "method.diag_pairs=16",
         "method.hypotheses=64", "method.stereo=false", "method.warmup_epochs=12", "method.feature_epochs=5",
         "method.flow_epochs=1", "method.remine_every=1", "train.epochs=18", "optim.lr=0.002", "eval.test=every",
         "scaling.num_workers=0", "scaling.cpus_per_worker=1"]


def test_the_features_learn_from_mined_matches(tmp_path):
    """A short run of the preset's method (replicate padding; with it the features need a longer
    warm-up than with zero padding): the descriptors' nearest-neighbour PCK@0.1 rises well above the
    untrained net's (measured at cb48bce 0.036 -> 0.112, the flow's PCK 0.049 -> 0.117) and the
    filtered mining beats raw mutual NN on the test pairs (0.082 against 0.039); the same code in a
    later environment gave 0.104, 0.125 and 0.076 (docs/BENCHMARKS.md (o2)). Since the preset's
    flow net refines the affine fit (d75f220), the flow's PCK is 0.065 -> 0.181 (be4cf70; NN PCK
    0.036 -> 0.104, mining 0.076 against 0.039)."""
    summary = run_training(load_config("correspondence/synthcorr", LEARN), tmp_path / "run")
    assert summary["test"]["nn_pck@0.1"] > summary["initial"]["nn_pck@0.1"] + 0.05, summary["test"]
    assert summary["test"]["pck@0.1"] > summary["initial"]["pck@0.1"] + 0.05, summary["test"]
    assert summary["test"]["mined_precision"] > summary["test"]["raw_precision"] + 0.02, summary["test"]


@pytest.mark.slow
def test_two_ray_workers_equal_the_in_process_run(ray_session, tmp_path):
    """Each worker embeds its share; every loss runs on the gathered global batch, mining on rank 0
    (broadcast), BatchNorm over the global batch: the 2-worker run equals the in-process one. The
    run mines once, on the initial weights (no warm-up): mutual NN and RANSAC are discontinuous, so
    a mining after steps that differ in the last float bit (DDP's gradient average against one
    process's sum) may keep a different match (measured: 5.6 against 5.8 matches per pair after a
    warm-up epoch whose logged loss agreed to 5 digits), and the runs then part. The flow net refines
    the affine fit (each rank fits its own rows of the global batch's matches: the one rank-specific
    step of the flow phase)."""
    sets = TINY + ["method.warmup_epochs=0", "method.remine_every=3", "train.epochs=3", "method.flow_init=affine"]
    local = run_training(load_config("correspondence/synthcorr", sets), tmp_path / "local")
    ray2 = run_training(load_config("correspondence/synthcorr", sets + ["scaling.num_workers=2"]), tmp_path / "ray")
    for key in ("pck@0.1", "nn_pck@0.1", "epe", "mined_count"):
        assert ray2["test"][key] == pytest.approx(local["test"][key], rel=1e-4, abs=1e-6), key
    logged = {run: pq.read_table(tmp_path / run / "metrics.parquet").to_pylist() for run in ("local", "ray")}
    for ra, rb in zip(logged["local"], logged["ray"], strict=True):
        for key in ("train/loss", "method/mined_count", "train/flow_feature"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["epoch"], key)
