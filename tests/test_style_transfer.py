"""Style transfer (specs/style_transfer.md) and its judge: the judge learns and gates; each of the
four alternating updates moves only its own networks; the win rate picks the branch; resume is
exact; 2 Ray workers give the in-process run; it learns; the evaluation's pieces; bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError

# 32-px crops and small pools: seconds to build, paint and judge
DATA = ["data.name=procedural_art", "data.image_size=32", "data.procedural_art.size=32",
        "data.procedural_art.hd_side=64", "data.procedural_art.content_crops=300",
        "data.procedural_art.painting_crops=200", "data.procedural_art.val_crops=40",
        "data.procedural_art.test_crops=40", "data.procedural_art.unseen_crops=16", "data.augment=false",
        "scaling.use_gpu=false", "eval.batch_size=64"]
JUDGE = DATA + ["method.name=style_judge", "model.backbone=small_cnn", "model.width=8", "model.embed_dim=32",
                "data.batch_size=48", "data.iterations_per_epoch=25", "optim.name=adam", "optim.lr=0.005",
                "optim.milestones=[]", "train.epochs=3", "scaling.num_workers=0"]
STYLE = DATA + ["method.name=style_transfer", "method.artist=a", "method.ngf=8", "method.downsamplings=2",
                "method.group_size=8", "method.window=16", "method.ctb_blocks=1", "method.decoder_blocks=1",
                "method.disc_widths=[8,16,16]", "method.score_levels=2", "method.figure_rows=1",
                "data.batch_size=8", "data.iterations_per_epoch=4", "optim.name=adam", "optim.lr=0.001",
                "optim.weight_decay=0", "optim.milestones=[]", "train.epochs=2", "scaling.num_workers=0"]


def _train(sets, out):
    from reprlab.platform.run.driver import run_training

    return run_training(load_config(None, sets), out)


def _rows(run) -> list[dict]:
    return pq.read_table(run / "metrics.parquet").to_pylist()


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge") / "run"
    _train(JUDGE, out)
    return out


def _style(judge, *more) -> list[str]:
    # the tiny judge passes no real gate; the gates themselves are tested below
    return STYLE + [f"method.judge={judge}", "method.judge_gates=[0.3,0.3]", *more]


def _method(sets):
    """A built style_transfer method in this process, as a worker builds it."""
    from reprlab.platform.contract.context import Context, load_run_data
    from reprlab.platform.core.registry import METHODS

    cfg = load_config(None, sets)
    ctx = Context(cfg, load_run_data(cfg), torch.device("cpu"))
    method = METHODS.get("style_transfer")(ctx)
    method.build()
    return method


# ------------------------------------------------------------------------------------------ the judge


def test_the_judge_learns_its_three_heads(judge):
    summary = json.loads((judge / "summary.json").read_text())
    first, test = summary["initial"], summary["test"]
    # Catches a judge that does not learn a head (a head left out of the loss, the alteration
    # target of the wrong artist): measured painting_acc 0.0 -> 0.83, scene 0.17 -> 0.50,
    # alteration 0.5 -> 0.77 (a 0.44, b 0.89, c 0.97) at these settings (2026-12-03, be4cf70);
    # the margins are a third to a half of those gains.
    assert test["painting_acc"] > first["painting_acc"] + 0.4
    assert test["scene_acc"] > first["scene_acc"] + 0.1
    assert test["alteration_acc"] > 0.55


def test_the_judge_gates_refuse_a_weak_judge_with_one_line(judge, tmp_path):
    test = json.loads((judge / "summary.json").read_text())["test"]
    gate = round(test["alteration_acc/a"] + 0.01, 4)
    with pytest.raises(ConfigError, match=rf"method.judge: .*alteration_acc/a .* below the gate {gate}"):
        load_config(None, _style(judge, f"method.judge_gates=[0.1,{gate}]"))
    with pytest.raises(ConfigError, match="method.judge: a finished style_judge run is needed"):
        load_config(None, STYLE)
    with pytest.raises(ConfigError, match="model.backbone: the judge is a small_cnn"):
        load_config(None, JUDGE + ["model.backbone=resnet18"])
    other = tmp_path / "none"
    with pytest.raises(ConfigError, match="method.judge: .*no such run directory"):
        load_config(None, STYLE + [f"method.judge={other}"])


# ------------------------------------------------------------------------------------------ the steps


def _params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _changed(method, before) -> set[str]:
    return {name for name, v in before.items() if not torch.equal(_params(getattr(method, name)), v)}


NETS = ("enc", "ctb", "dec", "disc_style", "disc_content")


@pytest.mark.parametrize("rate, style_branch, content_branch", [
    (0.0, "generator", "generator"),  # ds >= 0 always: G steps
    (1.0, "generator", "generator"),  # ds starts at dsr = 1: G first
])
def test_each_update_moves_only_its_own_networks(judge, rate, style_branch, content_branch):
    """Step 1's G update moves E and D only (T frozen in the path, D_s not stepped); step 2's G
    update moves T only. Then with dsr = 1 the second call is D's: D_s and D_c only. Catches a
    frozen network stepped (a wrong optimizer's parameters, gradients not cleared)."""
    m = _method(_style(judge, f"method.win_rate={rate}"))
    batch = next(iter(m.batches(1)))
    before = {n: _params(getattr(m, n)) for n in NETS}
    logs = m._style_step(batch)
    assert logs["g_steps_style"] == 1.0
    assert _changed(m, before) == {"enc", "dec"}
    before = {n: _params(getattr(m, n)) for n in NETS}
    logs = m._content_step(batch)
    assert logs["g_steps_content"] == 1.0
    assert _changed(m, before) == {"ctb"}
    before = {n: _params(getattr(m, n)) for n in NETS}
    logs = m._style_step(batch) | m._content_step(batch)
    if rate == 1.0:  # ds fell below 1 after G's step: D's turn in both steps
        assert logs["g_steps_style"] == 0.0 and logs["g_steps_content"] == 0.0
        assert _changed(m, before) == {"disc_style", "disc_content"}
    else:
        assert logs["g_steps_style"] == 1.0 and logs["g_steps_content"] == 1.0
        assert _changed(m, before) == {"enc", "dec", "ctb"}


def test_the_generator_steps_move_toward_what_their_critics_call_real(judge):
    """Only the adversarial terms on (pixel, fixpoint, scene and class weights 0), a large
    learning rate: after step 1's G update D_s scores the same batch's outputs as more real, after
    step 2's G update D_c scores T(E(x)) as more artwork-like (both critics unchanged, as tested
    above). Catches an adversarial term of the wrong sign or aimed at the wrong label, which the
    short learning run below does not (its first epochs are mostly reconstruction)."""
    m = _method(_style(judge, "method.pixel_weight=0", "method.fixpoint_weight=0", "method.scene_weight=0",
                       "method.class_weight=0", "optim.lr=0.01", "method.win_rate=0"))
    batch = next(iter(m.batches(1)))
    x = batch["x"] * 2 - 1

    def style_score() -> float:
        with torch.no_grad():
            maps, _ = m.disc_style(m.dec(m.ctb(m.enc(x))))
        return float(torch.stack([v.mean() for v in maps]).mean())

    def content_score() -> float:
        with torch.no_grad():
            return float(m.disc_content(m.ctb(m.enc(x)))[0].mean())

    before = style_score()
    for _ in range(3):
        m._style_step(batch)
    assert style_score() > before + 0.01
    before = content_score()
    for _ in range(5):  # T starts as the identity (last gammas 0): its first steps are small
        m._content_step(batch)
    assert content_score() > before + 0.005


def test_the_win_rate_follows_the_accuracies_it_is_given(judge):
    """Catches ds updated with the wrong accuracy, or the branch chosen against the rule."""
    m = _method(_style(judge, "method.win_rate=1.0", "method.win_alpha=0.5"))
    batch = next(iter(m.batches(1)))
    logs = m._style_step(batch)
    assert logs["g_steps_style"] == 1.0  # ds = dsr at the start: G
    ds = 0.5 + 0.5 * (1 - logs["gen_acc_style"])
    assert float(m.rate_style.ds) == pytest.approx(ds, abs=1e-12)
    logs = m._style_step(batch)
    if ds < 1.0:
        assert logs["g_steps_style"] == 0.0  # below dsr: D
        assert float(m.rate_style.ds) == pytest.approx(0.5 * ds + 0.5 * logs["disc_acc_style"], abs=1e-12)
    else:
        assert logs["g_steps_style"] == 1.0


def test_identity_ctb_at_the_start_and_no_step_2_without_it(judge):
    m = _method(_style(judge))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = m.enc(x)
    assert torch.equal(m.ctb(z), z), "T starts as the identity"
    plain = _method(_style(judge, "method.ctb_blocks=0", "method.norm=instance"))
    assert plain.ctb is None and plain.disc_content is None
    logs = plain.train_step(next(iter(plain.batches(1))))
    assert not any(k.endswith("_content") for k in logs)


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def straight(judge, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    _train(_style(judge), out)
    return out


def test_resume_equals_an_uninterrupted_run(judge, straight, tmp_path):
    from reprlab.platform.run.driver import run_training

    part = tmp_path / "part"
    _train(_style(judge, "train.epochs=1"), part)
    run_training(load_config(None, _style(judge)), part, resume=True)
    a, b = _rows(straight), _rows(part)
    assert [r["epoch"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if key.startswith(("train/", "val/", "test/", "method/")) and isinstance(value, float) and math.isfinite(value):
                assert rb[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (ra["epoch"], key)
    wa = torch.load(straight / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)["method"]
    wb = torch.load(part / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)["method"]
    for net in ("enc", "ctb", "dec", "disc_style", "disc_content", "rate_style", "rate_content", "judge"):
        for k, v in wa["attributes"][net].items():
            assert torch.allclose(wb["attributes"][net][k], v, atol=1e-6), (net, k)
    assert wa["extra"]["calls"] == wb["extra"]["calls"] == 8


def test_the_judge_is_stored_in_the_checkpoint(judge, straight):
    state = torch.load(straight / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)["method"]
    own = torch.load(next((judge / "checkpoints").glob("epoch_*/state.pt")), weights_only=True)
    stored = state["attributes"]["judge"]
    assert any(k.startswith("encoder.") for k in stored) and any(k.startswith("head.") for k in stored)
    del own  # the judge's own run may keep another epoch; what matters is that it is stored here
    assert (straight / "stylizations.png").stat().st_size > 1000 and (straight / "hd.png").stat().st_size > 1000


@pytest.mark.slow
def test_two_ray_workers_equal_the_in_process_run(ray_session, judge, straight, tmp_path):
    """Gathered accuracies: both ranks take the branch one process takes (the G/D sequence is
    equal), and the losses agree to float32 round-off."""
    out = tmp_path / "two"
    _train(_style(judge, "scaling.num_workers=2", "scaling.cpus_per_worker=1"), out)
    a, b = _rows(straight), _rows(out)
    for ra, rb in zip(a[1:], b[1:], strict=True):
        assert rb["train/g_steps_style"] == ra["train/g_steps_style"]
        for key in ("train/loss", "train/pixel", "method/win_rate_style", "method/win_rate_content"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key


def test_it_learns_to_paint_like_the_artist(judge, tmp_path):
    """Closer to the artist's own rendering, and to the nearest of its paintings, in the judge's
    feature space than at epoch 0. dsr 0.5: with ECCV'18's 0.8 a tiny D starves G in so few steps
    (G stepped in 1 of 15 calls after the first epoch, measured). Measured on val: rsscd 1.54 ->
    1.00, rsscd_nn 1.25 -> 0.78 (the photo itself: 0.84 and 0.71, so these first epochs are mostly
    reconstruction; the deception of this tiny judge stays 0). Catches G never stepped (the
    outputs stay the untrained decoder's); the adversarial terms' direction is the test above's."""
    _train(_style(judge, "train.epochs=3", "data.iterations_per_epoch=15", "method.win_rate=0.5"), tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert rows[-1]["val/rsscd"] < 0.85 * rows[0]["val/rsscd"]
    assert rows[-1]["val/rsscd_nn"] < 0.85 * rows[0]["val/rsscd_nn"]


# ------------------------------------------------------------------------------------------ evaluation


def test_ssim_low_counts_only_outside_the_mask():
    from reprlab.methods.style_transfer import ssim_low

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g)
    mask = torch.zeros(2, 48, 48, dtype=torch.bool)
    mask[:, 10:38, 10:38] = True
    inside = x.clone()
    # the blur (6 px) and the SSIM window (5 px) spread a change by 11 px: this one stays inside
    inside[:, :, 23:25, 23:25] = 1 - inside[:, :, 23:25, 23:25]
    assert torch.allclose(ssim_low(x, x, mask), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim_low(inside, x, mask), torch.ones(2, dtype=torch.float64), atol=1e-9)
    assert (ssim_low(inside, x, torch.zeros_like(mask)) < 0.999).all()
    assert ssim_low(x, x, torch.ones_like(mask)).isnan().all(), "nothing outside the mask: NaN, not 0"


def test_colour_transfer_moves_the_lab_statistics():
    from skimage.color import rgb2lab

    from reprlab.methods.style_transfer import color_transfer

    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(3, 3, 16, 16, generator=g)
    mean, std = np.array([55.0, 5.0, -8.0]), np.array([8.0, 4.0, 3.0])
    lab = rgb2lab(color_transfer(x, mean, std).permute(0, 2, 3, 1).double().numpy(), channel_axis=-1)
    assert np.allclose(lab.mean((1, 2)), mean, atol=0.5) and np.allclose(lab.std((1, 2)), std, atol=0.5)


def test_the_oracle_deceives_and_identity_does_not(judge, tmp_path):
    """The evaluation-only variants: the artist's own rendering is what the judge was trained to
    name; the photo is not. Catches a deception computed against the wrong class."""
    oracle = _train(_style(judge, "method.model=oracle", "train.epochs=1"), tmp_path / "oracle")["test"]
    identity = _train(_style(judge, "method.model=identity", "train.epochs=1"), tmp_path / "identity")["test"]
    # measured with the tiny judge (test painting accuracy 0.76): 0.65 and 0.0
    assert oracle["deception"] > 0.4 and oracle["deception"] > identity["deception"] + 0.3
    assert identity["ssim_low"] == pytest.approx(1.0)
    assert oracle["rsscd"] == pytest.approx(0.0, abs=1e-6)
    assert oracle["score"] == pytest.approx(2 * oracle["deception"] * oracle["scene_acc"]
                                            / (oracle["deception"] + oracle["scene_acc"]))


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_before_anything_runs(judge, cli_error, tmp_path):
    """Unknown artist, a size the encoder cannot halve, a judge that is not a run: one line each."""
    base = ["style_transfer/procedural_a"] + [a for s in _style(judge) for a in ("--set", s)]
    out = tmp_path / "out"
    err = cli_error(["train", "--output", str(out), *base, "--set", "method.artist=z"])
    assert "method.artist" in err and "'z'" in err
    err = cli_error(["train", "--output", str(out), *base, "--set", "data.image_size=34",
                     "--set", "data.procedural_art.size=34"])
    assert "data.image_size: 34 is not a multiple of 2^method.downsamplings = 4" in err
    err = cli_error(["train", "--output", str(out), *base, "--set", f"method.judge={tmp_path}"])
    assert "method.judge" in err
    assert not out.exists()


# ------------------------------------------------------------ the paper's form: real folders, a user's classifier


def _photo_tree(root, photos: dict[str, int], paintings: int, seed: int = 0) -> None:
    """photos/<category>/ and paintings/monet/ with smooth random images of several sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folders = [(root / "photos" / name, n) for name, n in photos.items()] + [(root / "paintings" / "monet", paintings)]
    for folder, n in folders:
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(40, 70)), int(rng.integers(40, 90))
            small = rng.random((h // 8 + 2, w // 8 + 2, 3))
            img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
            img.save(folder / f"{i:03d}.png")


class _FixedLogits(torch.nn.Module):
    """An 'artist classifier' whose logits favour one index, plus a conv so it has weights."""

    def __init__(self, favoured: int, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 3)
        self.register_buffer("bias", torch.nn.functional.one_hot(torch.tensor(favoured), classes).float() * 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) * 1e-3 + self.bias


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    _photo_tree(root / "data", {"alley": 6, "beach": 6}, paintings=5)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript: still what users ship
        torch.jit.script(_FixedLogits(2)).save(str(root / "favours_2.pt"))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(_FixedLogits(1), (torch.zeros(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(root / "favours_1.pt2"))
    return root


def _paper_form(folders, *more) -> list[str]:
    sets = [s for s in STYLE if not s.startswith(("data.name", "data.procedural_art", "method.judge"))]
    return sets + ["data.name=style_folders", f"data.root={folders / 'data'}", "data.style_folders.artist=monet",
                   "data.style_folders.test_fraction=0.3", "data.style_folders.val_fraction=0.25",
                   "data.style_folders.crops_per_image=2", "data.style_folders.hd_side=64",
                   "data.style_folders.hd_images=2", "method.artist=monet",
                   f"method.classifier={folders / 'favours_2.pt'}", "method.classifier_artist=2",
                   "method.classifier_size=16", "train.epochs=1", "data.iterations_per_epoch=2", *more]


def test_the_paper_form_trains_from_folders_scored_by_a_users_classifier(folders, tmp_path):
    """The paper preset's path on a fabricated tree: the model trains on decoded folder crops,
    the user's TorchScript classifier scores it and is stored in the checkpoint, and what needs the
    artist's own rendering is NaN. Catches a deception read off the wrong logit (the classifier
    always names index 2: 1.0 for artist index 2, 0.0 for 1), a score that needs a scene head, and
    a classifier left out of the checkpoint."""
    summary = _train(_paper_form(folders), tmp_path / "run")
    test = summary["test"]
    assert test["deception"] == test["deception_artists_only"] == test["deception_hd"] == 1.0
    assert test["score"] == 1.0 and 0 < test["ssim_low"] <= 1
    for key in ("alteration_face", "alteration_unseen", "rsscd", "rsscd_nn", "scene_acc"):
        assert math.isnan(test[key]), key
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("epoch_*/state.pt")), weights_only=True)
    assert "net.conv.weight" in state["method"]["attributes"]["judge"]
    assert (tmp_path / "run" / "stylizations.png").stat().st_size > 500
    other = _train(_paper_form(folders, "method.classifier_artist=1", "method.model=identity"), tmp_path / "id")
    assert other["test"]["deception"] == 0.0
    exported = _train(_paper_form(folders, f"method.classifier={folders / 'favours_1.pt2'}", "method.classifier_artist=1",
                                  "method.model=identity"), tmp_path / "pt2")  # a torch.export program
    assert exported["test"]["deception"] == 1.0


def test_folder_batches_decode_seeded_crops_and_leave_unknown_classes_out(folders):
    """Training batches from folders: the same (epoch, iteration) gives the same pixels, paintings
    carry unknown scene and class (-1) that the heads' losses skip, and the photos' scenes are
    their folders. Catches crops that are not reproducible (resume would differ) and -1 labels
    reaching cross-entropy (an index error)."""
    method = _method(_paper_form(folders))
    a, b = method._global_batch(1, 0), method._global_batch(1, 0)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert not torch.equal(a["x"], method._global_batch(1, 1)["x"])
    assert a["x"].shape == (8, 3, 32, 32) and (a["scene_y"] == -1).all() and (a["class_x"] == -1).all()
    assert set(a["scene_x"].tolist()) <= {0, 1}
    logs = method.train_step({k: v for k, v in a.items()})
    assert all(math.isfinite(v) for v in logs.values())
    method.rate_style.ds.fill_(0.0)  # the discriminator branch: the scene head on paintings
    assert method.rate_style.choose() == "discriminator"
    logs = method.train_step(a)
    assert all(math.isfinite(v) for v in logs.values())


def test_the_paper_forms_bad_input_is_one_line(folders, tmp_path, cli_error):
    """A classifier file that is missing or not TorchScript, no logit index, an index the classifier
    does not have, a painting folder other than method.artist's, and the oracle (real paintings have
    no rendering of a photo): one line each, nothing written."""
    out = tmp_path / "out"
    base = ["style_transfer/paper"] + [a for s in _paper_form(folders) for a in ("--set", s)]

    def err(*more):
        return cli_error(["train", "--output", str(out), *base, *[a for s in more for a in ("--set", s)]])

    assert "no such file" in err(f"method.classifier={tmp_path / 'none.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert "not a TorchScript module" in err(f"method.classifier={tmp_path / 'junk.pt'}")
    assert "method.classifier_artist: 5 is not an index of the classifier's 3 logits" in err("method.classifier_artist=5")
    assert "data.style_folders.artist" in err("method.artist=cezanne")
    assert "method.model: oracle" in err("method.model=oracle")
    assert not out.exists()
