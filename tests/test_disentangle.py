"""Robust disentangling (Esser, Haux, Ommer, ICCV 2019): the MI estimator's reading, the two
controllers' formulas, the adversary's gradient path, the embedded sprites (bytes and ground truth),
the real Sprites layout's reader, resume identity, learning, and bad input as one line. Tiny sizes;
the Ray test is marked slow."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.platform.core.config import load_config
from reprlab.platform.nn.controllers import RegularizationControl
from reprlab.platform.nn.mi import SeparableCritic, estimate_mi, frozen_reading
from reprlab.platform.run.driver import run_training

TINY = ["data.sprites.train_identities=20", "data.sprites.val_identities=4", "data.sprites.test_identities=5",
        "data.sprites.train_poses=4", "data.sprites.frames=6", "data.iterations_per_epoch=4", "data.batch_size=8",
        "method.warmup=2", "method.history_every=1", "method.eval_triplets=30", "method.probe_images=40",
        "method.mi_post_steps=5", "method.estimator_width=8", "method.width=4", "method.max_width=8", "method.grid=3",
        "optim.lr=0.003", "train.epochs=2", "eval.test=every", "scaling.num_workers=0"]


# ---- the estimator ------------------------------------------------------------------------------------


def test_mi_reading_rises_with_correlation_and_is_near_zero_without_it():
    """Correlated Gaussians (2 dims each, correlation rho per dim; MI = -log(1 - rho^2) nats): the
    reading of a critic trained on them rises with rho and stays near 0 at rho = 0 (|I| < 0.02:
    the spec's bound; the sampling error of a mean logit of spread ~0.1 over 4,096 pairs is ~2e-3)."""
    gen = torch.Generator().manual_seed(0)
    readings = []
    for rho in (0.0, 0.5, 0.9):
        a = torch.randn(4096, 2, 1, 1, generator=gen)
        b = rho * a + math.sqrt(1 - rho**2) * torch.randn(4096, 2, 1, 1, generator=gen)
        readings.append(estimate_mi(a, b, lambda: SeparableCritic(2, 2, 16, 1), steps=200, batch=256, lr=5e-3,
                                    generator=gen))
    assert abs(readings[0]) < 0.02, readings
    assert readings[0] < readings[1] - 0.1 < readings[2] - 0.3, readings
    # the estimates lie in the right range (true: 0, 0.288, 1.661)
    assert readings[1] == pytest.approx(-math.log(1 - 0.25), abs=0.15)
    assert readings[2] == pytest.approx(-math.log(1 - 0.81), abs=0.6)


def test_the_adversary_term_reaches_the_codes_not_the_critic():
    torch.manual_seed(0)
    critic = SeparableCritic(3, 3, 8, 1)
    pi = torch.randn(6, 3, 2, 2, requires_grad=True)
    frozen_reading(critic, pi, torch.randn(6, 3, 2, 2)).backward()
    assert pi.grad is not None and pi.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


# ---- the controllers ----------------------------------------------------------------------------------


def _ema(values: list[float], decay: float) -> float:
    """The bias-corrected EMA as an explicit weighted mean."""
    w = np.array([decay ** (len(values) - 1 - k) for k in range(len(values))])
    return float((w * np.array(values)).sum() / w.sum())


def test_lambda_and_gamma_follow_their_formulas_and_clamp_at_zero():
    eps, mu, gain, bias, warm, decay = 0.1, 0.5, 1.0, 0.05, 2, 0.9
    ctl = RegularizationControl(epsilon=eps, mu=mu, lambda_init=0.0, gamma_init=0.3, gain=gain, bias=bias,
                                warmup=warm, decay=decay)
    # I1 above eps (lambda grows), then far below (lambda would go negative); I2 above I1, then far below
    i1s = [0.9, 0.8, 0.6, 0.5, -3.0, -3.0, -2.0]
    i2s = [1.0, 1.2, 1.5, 1.4, -9.0, -9.0, -9.0]
    lam, gamma, clamped = 0.0, 0.3, set()
    for t, (i1, i2) in enumerate(zip(i1s, i2s)):
        x = torch.tensor(i1, dtype=torch.float64, requires_grad=True)
        term = ctl.constraint_term(x)
        c = i1 - eps
        if t < warm or mu * c + lam < 0:
            assert float(term) == 0.0, t
        else:
            assert float(term.detach()) == pytest.approx(lam * c + mu * c * c / 2, abs=1e-12)
            term.backward()
            assert float(x.grad) == pytest.approx(lam + mu * c, abs=1e-12)
        if t >= warm:  # this step's reading, the EMAs before this step
            raw_lam, raw_gamma = lam + mu * c, gamma + gain * (_ema(i2s[:t], decay) - _ema(i1s[:t], decay) - bias)
            clamped |= {"lambda"} if raw_lam < 0 else set()
            clamped |= {"gamma"} if raw_gamma < 0 else set()
            lam, gamma = max(0.0, raw_lam), max(0.0, raw_gamma)
        ctl.update(i1, i2)
        assert float(ctl.lam) == pytest.approx(lam, abs=1e-12), t
        assert float(ctl.gamma) == pytest.approx(gamma, abs=1e-12), t
        assert float(ctl.ema_i1) == pytest.approx(_ema(i1s[: t + 1], decay), abs=1e-12)
    assert clamped == {"lambda", "gamma"} and float(ctl.lam) == 0.0 and float(ctl.gamma) == 0.0
    assert int(ctl.step) == len(i1s)


def test_modes_switch_the_controllers():
    kw = dict(epsilon=0.1, mu=0.1, lambda_init=0.0, gamma_init=1.0, gain=0.1, bias=0.0, warmup=0)
    fixed = RegularizationControl(**kw, adapt_gamma=False)
    plain = RegularizationControl(**kw, constrain=False, adapt_gamma=False)
    for _ in range(3):
        fixed.update(1.0, 5.0)
        plain.update(1.0, 5.0)
    assert float(fixed.gamma) == 1.0 and float(fixed.lam) > 0
    assert float(plain.lam) == 0.0 and float(plain.constraint_term(torch.tensor(1.0))) == 0.0


# ---- the data ------------------------------------------------------------------------------------------


def test_sprites_are_the_same_bytes_for_a_seed_and_triplets_hold_their_ground_truth():
    from reprlab.platform.data.appearance import IdentityFrames
    from reprlab.platform.data.sets.sprites import load_sprites, render

    build = load_sprites.__wrapped__  # not the per-process cache
    a, b = build(32, 3, 6, 3, 4, 2, 5), build(32, 3, 6, 3, 4, 2, 5)
    other = build(32, 4, 6, 3, 4, 2, 5)
    for split in ("train", "val", "test"):
        assert getattr(a, split).pixels.tobytes() == getattr(b, split).pixels.tobytes()
    assert a.train.pixels.tobytes() != other.train.pixels.tobytes()
    ids = [set(s.meta["identity"].tolist()) for s in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), "identity-disjoint splits"
    src = IdentityFrames(a.test)
    target, app, pose = src.triplets(50, np.random.default_rng(0))
    meta = a.test.meta
    # the target re-rendered from the appearance row's identity and the pose row's pose, exactly
    again = render(meta["appearance"][app].astype(np.float64), meta["pose"][pose].astype(np.float64), 32)
    assert np.array_equal(again, target)
    assert (meta["identity"][app] != meta["identity"][pose]).all() and (meta["frame"][app] != meta["frame"][pose]).all()
    x1, x2 = src.pairs(20, np.random.default_rng(1))
    assert x1.shape == x2.shape == (20, 32, 32, 3)


def test_colored_digits_triplets_recolor_the_pose_digit():
    from reprlab.platform.data.sets.colored_digits import DigitColorTransfer, load_colored_digits, render, source_digits

    bench = load_colored_digits(16, 0)
    src = DigitColorTransfer(bench.test, 16, 0.2)
    target, app, pose = src.triplets(10, np.random.default_rng(0))
    gray = source_digits()[0][bench.test.meta["digit_index"][pose]]
    assert np.array_equal(target, render(gray, bench.test.meta["color"][app], 16))
    x1, x2 = src.pairs(30, np.random.default_rng(0))
    # same color: the brightest pixel of each image has one chromaticity
    def chroma(x):
        flat = x.reshape(len(x), -1, 3).astype(float)
        top = flat[np.arange(len(x)), flat.sum(2).argmax(1)]
        return top / top.sum(1, keepdims=True)
    assert np.abs(chroma(x1) - chroma(x2)).max() < 0.05


def _fabricated_reed(root, characters: int = 10, frames_per_animation: int = 1):
    import h5py
    import scipy.io

    folder = root / "data" / "sprites"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for c in range(characters):
        with h5py.File(folder / f"sprites_{c + 1}.mat", "w") as f:
            refs = f.create_dataset("sprites", (21, 1), dtype=h5py.ref_dtype)
            for a in range(21):
                img = rng.random((frames_per_animation, 60, 60, 3)).astype(np.float32)  # frames x y x x x c
                images[c, a] = img
                f[f"#refs#/{a}"] = img.transpose(0, 3, 2, 1).reshape(frames_per_animation, -1)  # column-major c, x, y
                refs[a, 0] = f[f"#refs#/{a}"].ref
    scipy.io.savemat(folder / "sprites_splits.mat", {"trainidx": np.arange(1, 7)[None]})
    return images


def test_the_real_sprites_reader_reads_the_reference_layout(tmp_path):
    from reprlab.platform.core.errors import DataError
    from reprlab.platform.data.appearance import IdentityFrames
    from reprlab.platform.data.sets.sprites_reed import load_sprites_reed

    images = _fabricated_reed(tmp_path)
    bench = load_sprites_reed(tmp_path, size=60)
    # even characters only; validation = every 10th even training character (none in the file)
    assert sorted(set(bench.train.meta["identity"].tolist())) == [2, 4]
    assert sorted(set(bench.val.meta["identity"].tolist())) == [0]
    assert sorted(set(bench.test.meta["identity"].tolist())) == [6, 8]
    assert len(bench.test) == 2 * 20  # 20 animations (the easter egg skipped), one frame each
    row = 20 + 7  # character 8, animation 7
    expected = np.clip(images[8, 7][0] * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(bench.test.pixels[row], expected)
    assert bench.test.meta["pose"][row].tolist() == np.eye(5)[1].tolist() + np.eye(4)[3].tolist()  # action 1, view 3
    target, app, pose = IdentityFrames(bench.test).triplets(8, np.random.default_rng(0))
    assert np.array_equal(target, IdentityFrames(bench.test).truth(app, pose))
    assert load_sprites_reed(tmp_path, size=32).train.pixels.shape[1:] == (32, 32, 3)
    (tmp_path / "data" / "sprites" / "sprites_3.mat").unlink()  # a training character
    with pytest.raises(DataError, match="sprites_3.mat is missing"):
        load_sprites_reed(tmp_path)


# ---- the method ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("disentangle") / "straight"
    return out, run_training(load_config("disentangle/sprites", TINY), out)


def test_it_learns_beyond_its_start_and_writes_its_figures(straight):
    out, summary = straight
    assert summary["test"]["transfer_mse"] < 0.75 * summary["initial"]["transfer_mse"]
    assert {"transfer_grid.png", "controllers.png", "violin.png"} <= {p.name for p in out.iterdir()}
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert rows[-1]["method/gamma"] != 1.0, "the gamma controller moved after the warm-up"


def test_resume_after_a_kill_equals_the_uninterrupted_run(straight, tmp_path):
    out, _ = straight
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_0002")  # killed after epoch 1's checkpoint
    run_training(load_config("disentangle/sprites", TINY), resumed, resume=True)
    a = pq.read_table(out / "metrics.parquet").to_pylist()
    b = pq.read_table(resumed / "metrics.parquet").to_pylist()
    keys = ("train/loss", "train/mi_t1", "train/mi_t2", "method/gamma", "method/lambda", "method/ema_i2",
            "val/transfer_mse", "test/transfer_mse", "test/mi_post", "test/probe/app_from_pi")
    for ra, rb in zip(a, b, strict=True):
        for key in keys:
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["epoch"], key)


@pytest.mark.parametrize("sets, fragment", [
    (["method.mode=shortcut"], "method.mode"),
    (["method.code_size=3"], "images of 32 px cannot be halved to a code of 3 x 3"),
    (["data.batch_size=1"], "the MI estimators need a global batch of 2 or more"),
    (["data.name=glyphs"], "needs appearance_pairs"),
    (["data.name=sprites_reed", "data.root=/nonexistent/sprites"], "directory not found"),
])
def test_bad_input_is_one_line_before_anything_is_written(sets, fragment, tmp_path, cli_error):
    out = tmp_path / "run"
    args = ["train", "disentangle/sprites", "--output", str(out)]
    for s in TINY + sets:
        args += ["--set", s]
    assert fragment in cli_error(args)
    assert not out.exists()


@pytest.mark.slow
def test_two_ray_workers_equal_the_in_process_run(ray_session, straight, tmp_path):
    _, local = straight
    ray2 = run_training(load_config("disentangle/sprites", [*TINY, "scaling.num_workers=2", "scaling.cpus_per_worker=1"]),
                        tmp_path / "ray")
    for key in ("transfer_mse", "recon_mse", "mi_post"):
        assert ray2["test"][key] == pytest.approx(local["test"][key], rel=1e-4, abs=1e-6), key
