"""Exposure correction (Afifi et al., CVPR 2021): the pyramid, the loss's mean form, the
adversarial switch, SSIM's settings, resume across a stage boundary, learning on tiny data, the
real data's reader and bad input as one line. Tiny sizes: the whole file runs in about a minute
on 2 CPU cores (the Ray test is marked slow)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.methods.exposure import exposure_loss
from reprlab.platform.contract.context import Context, load_run_data
from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import DataError
from reprlab.platform.nn.pyramid import expand, gaussian_pyramid, laplacian_pyramid, reconstruct
from reprlab.platform.run.driver import run_training

TINY = ["data.exposure_photos.side=64", "data.iterations_per_epoch=3", "method.levels=2", "method.depths=[1,1]",
        "method.widths=[4,4]", "method.disc_widths=[4,8]", "method.figure_scenes=1", "optim.lr=0.01",
        "method.stages=[{patch: 16, batch: 4, epochs: 1}, {patch: 32, batch: 4, epochs: 1, adv_from: 1}]",
        "train.epochs=2", "scaling.num_workers=0"]


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (33, 31)])
def test_laplacian_pyramid_reconstructs_exactly_for_odd_and_even_sizes(size):
    x = torch.rand(2, 3, *size)
    bands = laplacian_pyramid(x, 4)
    assert [b.shape[-1] for b in bands][1] == (size[1] + 1) // 2
    assert (reconstruct(bands) - x).abs().max() < 1e-5
    assert bands[1].abs().mean() > 1e-3, "bands are details, not zeros"


def test_mean_form_loss_is_the_code_sum_form_over_765_hw():
    gen = torch.Generator().manual_seed(0)
    n, h, w = 3, 16, 24
    t, y = torch.rand(n, 3, h, w, generator=gen), torch.rand(n, 3, h, w, generator=gen)
    ups = [torch.rand(n, 3, h // 2**i, w // 2**i, generator=gen) for i in range(3)]  # Up_2..Up_4
    logits = torch.randn(n, generator=gen)
    mean_form = exposure_loss(y, ups, t, 1.0, torch.nn.functional.softplus(-logits), 4 / 255).mean()
    g = gaussian_pyramid(t, 4)
    # the reference code: L1 sums on 0..255 divided by the batch size, pyramid weights 2^(l-2),
    # adversarial weight 3 h w n (n = 4) on -mean log sigmoid(D(Y))
    total = (255 * y - 255 * t).abs().sum()
    for l in range(2, 5):
        up = ups[l - 2]
        total += 2 ** (l - 2) * (255 * up - 255 * expand(g[l - 1], up.shape[-2:])).abs().sum()
    sum_form = total / n - 3 * h * w * 4 * torch.nn.functional.logsigmoid(logits).mean()
    assert mean_form.item() == pytest.approx((sum_form / (765 * h * w)).item(), rel=1e-5)


def test_ssim_has_scikit_image_settings():
    from skimage.metrics import structural_similarity

    from reprlab.platform.eval.image import ssim

    a = torch.rand(2, 3, 30, 41, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    ref = [structural_similarity(a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), data_range=1,
                                 channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
           for i in range(2)]
    assert ssim(a, b).numpy() == pytest.approx(np.array(ref), abs=1e-10)


def _method(sets):
    from reprlab.platform.core.registry import METHODS

    cfg = load_config("exposure/exposure_photos", TINY + sets)
    method = METHODS.get("exposure")(Context(cfg, load_run_data(cfg), torch.device("cpu")))
    method.build()
    return method


def _generator_grads(sets):
    method = _method(sets)
    method.on_epoch_start(2)  # the adversarial stage, from its first epoch
    assert method._adversarial() == ("method.adv_weight=0" not in sets)
    method.train_step(next(iter(method.batches(2))))
    return [p.grad.clone() for p in method.g.parameters()]


def test_adv_grad_none_gives_the_generator_the_gradients_of_adv_weight_zero():
    none = _generator_grads(["method.adv_grad=none"])
    zero = _generator_grads(["method.adv_weight=0"])
    full = _generator_grads([])
    assert all(torch.equal(a, b) for a, b in zip(none, zero))
    assert not all(torch.allclose(a, b) for a, b in zip(full, zero)), "the differentiable term does reach G"


def test_resume_across_a_stage_boundary_equals_the_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    run_training(load_config("exposure/exposure_photos", TINY), straight)
    assert {"before_after.png", "psnr_by_ev.png", "pyramid.png"} <= {p.name for p in straight.iterdir()}
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_0002")  # killed after stage 1's last epoch
    run_training(load_config("exposure/exposure_photos", TINY), resumed, resume=True)
    a = pq.read_table(straight / "metrics.parquet").to_pylist()
    b = pq.read_table(resumed / "metrics.parquet").to_pylist()
    assert a[-1]["train/adversarial"] is not None and a[-1]["method/stage"] == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "train/adversarial", "train/d_loss", "val/psnr", "test/psnr", "test/ssim"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-6), (ra["epoch"], key)


def test_it_learns_beyond_its_start_and_the_uncorrected_input(tmp_path):
    """Two tiny epochs: far above the untrained network, and above the uncorrected input where the
    input is worst (EV +1.5). Beating the input overall takes the CPU preset's minutes."""
    sets = ["data.iterations_per_epoch=40", "method.widths=[8,8]", "optim.lr=0.005",
            "method.stages=[{patch: 32, batch: 8, epochs: 2}]", "train.epochs=2", "eval.test=on_improvement"]
    summary = run_training(load_config("exposure/exposure_photos", TINY + sets), tmp_path / "run")
    identity = run_training(load_config("exposure/exposure_photos", TINY + ["method.model=identity", "train.epochs=1"]),
                            tmp_path / "identity")
    assert summary["test"]["psnr"] > summary["initial"]["psnr"] + 3
    # the preset scores SSIM against Expert C only: the other experts' SSIM is NaN by design, not a divergence
    assert summary["status"] == "completed", summary["status_reason"]
    assert summary["test"]["psnr/ev_P1.5"] > identity["test"]["psnr/ev_P1.5"]


def _fabricated(root, missing_gt=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for name in ("a0001-x", "a0002-y"):
            for ev in ("N1.5", "0", "P1"):
                (root / split / "INPUT_IMAGES").mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / split / "INPUT_IMAGES" / f"{name}_{ev}.JPG", "JPEG")
            if not (missing_gt and name == "a0002-y"):
                (root / split / "GT_IMAGES").mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / split / "GT_IMAGES" / f"{name}.jpg", "JPEG")
    for k in "abcde":
        (root / "testing" / f"expert_{k}_testing_set").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / "testing" / f"expert_{k}_testing_set" / "a0003-z.jpg")
    (root / "testing" / "INPUT_IMAGES").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / "testing" / "INPUT_IMAGES" / "a0003-z_N1.JPG")


def test_the_real_layout_reader_pairs_inputs_with_their_targets(tmp_path):
    from reprlab.platform.data.sets.exposure_fivek import load_exposure_fivek

    _fabricated(tmp_path)
    bench = load_exposure_fivek(tmp_path)
    assert len(bench.train) == 6 and len(bench.val) == 6 and len(bench.test) == 1
    assert bench.train.paths[0].endswith("a0001-x_0.JPG") and bench.train.target.paths[0].endswith("a0001-x.jpg")
    assert sorted(bench.train.meta["ev"][:3]) == [-1.5, 0.0, 1.0]
    assert bench.test.meta["ev"][0] == -1.0 and bench.test.target.paths[0].endswith("expert_c_testing_set/a0003-z.jpg")
    assert bench.test.meta["expert_e"][0].endswith("expert_e_testing_set/a0003-z.jpg")
    # trained and evaluated through the platform (files, stored patches)
    sets = [f"data.root={tmp_path}", "data.name=exposure_fivek", "method.inputs=stored", "method.eval_side=32"]
    summary = run_training(load_config("exposure/exposure_photos", TINY + sets), tmp_path / "run")
    assert np.isfinite(summary["test"]["psnr/expert_a"])
    shutil.rmtree(tmp_path / "training")
    _fabricated(tmp_path / "bad", missing_gt=True)
    with pytest.raises(DataError, match="GT_IMAGES has no image for scene a0002-y"):
        load_exposure_fivek(tmp_path / "bad")


@pytest.mark.parametrize("sets, fragment", [
    (["train.epochs=3"], "the stages of method.stages add up to 2 epochs, got train.epochs=3"),
    (["method.stages=[{patch: 18, batch: 4, epochs: 2}]"], "patch 18 is not a multiple of 4"),
    (["method.adv_grad=sometimes"], "method.adv_grad"),
    (["method.levels=3"], "3 levels need as many depths and widths"),
    (["data.name=exposure_fivek", "data.root=/nonexistent/fivek"], "exposure_fivek (data.root) directory not found"),
    (["data.name=glyphs"], "method exposure needs paired"),
])
def test_bad_input_is_one_line_before_anything_is_written(sets, fragment, tmp_path, cli_error):
    out = tmp_path / "run"
    args = ["train", "exposure/exposure_photos", "--output", str(out)]
    for s in TINY + sets:
        args += ["--set", s]
    assert fragment in cli_error(args)
    assert not out.exists()


@pytest.mark.slow
def test_two_ray_workers_equal_the_in_process_run(ray_session, tmp_path):
    # Uneven shares (3 + 2) in the first stage; the second has the adversarial term, whose
    # discriminator's BatchNorm must then see the global batch (GlobalBatchNorm via ctx.prepare).
    sets = TINY + ["method.stages=[{patch: 16, batch: 5, epochs: 1}, {patch: 32, batch: 4, epochs: 1, adv_from: 1}]"]
    local = run_training(load_config("exposure/exposure_photos", sets), tmp_path / "local")
    ray2 = run_training(load_config("exposure/exposure_photos", [*sets, "scaling.num_workers=2",
                                                                   "scaling.cpus_per_worker=1"]), tmp_path / "ray")
    for key in ("psnr", "ssim", "psnr/under"):
        assert ray2["test"][key] == pytest.approx(local["test"][key], rel=1e-4), key
    # the logged losses are the global batch's (each rank holds its term of the global mean);
    # D's loss differs if its BatchNorm normalizes each rank's share on its own
    logged = {run: pq.read_table(tmp_path / run / "metrics.parquet").to_pylist()[-1] for run in ("local", "ray")}
    for key in ("train/loss", "train/d_loss"):
        assert logged["ray"][key] == pytest.approx(logged["local"][key], rel=1e-4), key
