"""IIN: the invertible network and its losses, colored digits and their pairs, the first stages
(classifier, autoencoder) and the iin method on the platform, in-process and on Ray Train."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.platform.config import load_config
from reprlab.platform.errors import ConfigError
from reprlab.platform.flows import (
    ActNorm,
    InvertibleNetwork,
    factor_loss,
    factor_scores,
    factor_sizes,
    unsupervised_loss,
)


def _random_flow(dim: int, seed: int = 0, dtype=torch.float32) -> InvertibleNetwork:
    """A flow whose couplings are not the identity (they start at zero)."""
    torch.manual_seed(seed)
    flow = InvertibleNetwork(dim, blocks=3, width=16, depth=2, seed=seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.initialize(torch.randn(256, dim) * 3 + 1)
    return flow.to(dtype)


# ---- the network ---------------------------------------------------------------------------------
def test_flow_inverts_to_float32_precision():
    flow = _random_flow(16)
    z = torch.randn(512, 16) * 2
    zt, _ = flow(z)
    assert (zt - z).abs().max() > 0.1, "the flow is not the identity"
    assert (flow.reverse(zt) - z).abs().max().item() < 1e-4


def test_logdet_equals_the_log_determinant_of_autograds_jacobian():
    flow = _random_flow(5, seed=1, dtype=torch.float64)
    for z0 in torch.randn(3, 5, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z0)
        _, logdet = flow(z0[None])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign.item() > 0
        assert logdet.item() == pytest.approx(expected.item(), abs=1e-8)


def test_odd_dimension_and_actnorm_data_dependent_initialisation():
    norm = ActNorm(3)
    x = torch.randn(1000, 3) * torch.tensor([5.0, 0.5, 2.0]) + torch.tensor([1.0, -3.0, 0.0])
    y, logdet = norm(x)  # the first training batch initialises
    assert y.mean(0).abs().max() < 1e-4 and (y.std(0) - 1).abs().max() < 1e-3
    assert logdet[0].item() == pytest.approx(-torch.log(x.std(0) + 1e-6).sum().item(), rel=1e-5)
    y2, _ = norm(x * 2)  # later batches do not re-initialise
    assert (y2.std(0) - 2).abs().max() < 1e-2
    flow = _random_flow(7)
    z = torch.randn(64, 7)
    assert (flow.reverse(flow(z)[0]) - z).abs().max() < 1e-4


# ---- the losses ------------------------------------------------------------------------------------
def test_factor_loss_without_shared_factors_is_the_unsupervised_loss():
    zt1, zt2, ld1, ld2 = torch.randn(32, 10), torch.randn(32, 10), torch.randn(32), torch.randn(32)
    sizes = [3, 4, 3]
    none_shared = torch.zeros(32, 3, dtype=torch.bool)
    expected = unsupervised_loss(torch.cat([zt1, zt2]), torch.cat([ld1, ld2]))
    assert factor_loss(zt1, ld1, zt2, ld2, none_shared, sizes, 0.975).item() == pytest.approx(expected.item(), rel=1e-6)
    residual_only = none_shared.clone()
    residual_only[:, -1] = True  # the residual is never shared
    assert factor_loss(zt1, ld1, zt2, ld2, residual_only, sizes, 0.975).item() == pytest.approx(expected.item(), rel=1e-6)


def test_factor_loss_is_the_conditional_gaussian_of_the_shared_factor():
    rho, sizes = 0.9, [2, 3]
    zt1, zt2 = torch.randn(4, 5), torch.randn(4, 5)
    ld = torch.zeros(4)
    shared = torch.tensor([[True, False]] * 4)
    var = 1 - rho**2
    nll2 = (0.5 * (zt2[:, :2] - rho * zt1[:, :2]) ** 2 / var + 0.5 * np.log(var)).sum(1) + 0.5 * (zt2[:, 2:] ** 2).sum(1)
    nll1 = 0.5 * (zt1**2).sum(1)
    expected = ((nll1 + nll2) / 10).mean()
    assert factor_loss(zt1, ld, zt2, ld, shared, sizes, rho).item() == pytest.approx(expected.item(), rel=1e-5)
    # pairs that do share the factor score better under the shared model than under independence
    z1 = torch.randn(500, 5)
    z2 = torch.cat([rho * z1[:, :2] + np.sqrt(var) * torch.randn(500, 2), torch.randn(500, 3)], 1)
    ld = torch.zeros(500)
    assert factor_loss(z1, ld, z2, ld, torch.tensor([[True, False]] * 500), sizes, rho) < \
        factor_loss(z1, ld, z2, ld, torch.zeros(500, 2, dtype=torch.bool), sizes, rho)


def test_factor_sizes_follow_the_pair_covariances_and_sum_to_the_dimension():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(4000, 20))
    shared_a, shared_b = z1.copy(), z1.copy()
    shared_a[:, 6:] = rng.normal(size=(4000, 14))  # pairs sharing A agree on 6 of 20 dimensions
    shared_b[:, 2:] = rng.normal(size=(4000, 18))  # pairs sharing B agree on 2
    scores = factor_scores({"a": (z1, shared_a), "b": (z1, shared_b)})
    assert scores["a"] == pytest.approx(6 / 20, abs=0.03) and scores["b"] == pytest.approx(2 / 20, abs=0.03)
    sizes = factor_sizes(scores, 20)
    assert sum(sizes) == 20 and sizes[0] > sizes[1] and sizes[2] > sizes[0]  # the residual scores 1
    for dim in (3, 7, 64, 513):
        for s in ({"a": 0.2}, {"a": 5.0, "b": -3.0}, {"a": 0.0, "b": 0.0, "c": 0.0}):
            if dim > len(s):
                got = factor_sizes(s, dim)
                assert sum(got) == dim and min(got) >= 1 and len(got) == len(s) + 1


# ---- colored digits ----------------------------------------------------------------------------------------
def test_colored_digits_split_colors_and_pairs():
    from reprlab.platform.data.colored_digits import ColoredDigitPairs, load_colored_digits, source_digits

    bench = load_colored_digits(size=16, seed=3, test_fraction=0.2, low=0.2)
    assert len(bench.train) + len(bench.test) == len(source_digits()[1]) == 1797
    assert set(bench.train.meta["digit_index"]).isdisjoint(bench.test.meta["digit_index"])
    share = np.bincount(bench.test.labels) / np.bincount(source_digits()[1])
    assert share == pytest.approx(np.full(10, 0.2), abs=0.01)  # stratified
    colors = bench.train.meta["color"]
    assert colors.min() >= 0.2 and colors.max() <= 1.0 and bench.train.pixels.shape[1:] == (16, 16, 3)
    brightest = bench.train.pixels.reshape(len(colors), -1, 3).max(1)  # the brightest pixel has the color's hue
    assert brightest / brightest.max(1, keepdims=True) == pytest.approx(colors / colors.max(1, keepdims=True), abs=0.05)
    again = load_colored_digits(size=16, seed=3)
    assert np.array_equal(again.train.pixels, bench.train.pixels)

    pairs = ColoredDigitPairs(bench.train, 16, 0.2)
    d = pairs.draw(2000, np.random.default_rng(0))
    labels = bench.train.labels
    digit, color = d["shared"][:, 0], d["shared"][:, 1]
    assert (digit ^ color).all() and not d["shared"][:, 2].any() and 0.4 < digit.mean() < 0.6
    assert (labels[d["first"][digit]] == labels[d["second"][digit]]).all()  # same digit ...
    assert (np.abs(d["color1"][digit] - d["color2"][digit]).max(1) > 1e-3).mean() > 0.99  # ... in a new color
    assert (labels[d["first"][color]] != labels[d["second"][color]]).all()  # another digit ...
    assert np.array_equal(d["color1"][color], d["color2"][color])  # ... in the same color
    p1, p2, shared = pairs.sample(8, np.random.default_rng(1))
    assert p1.shape == p2.shape == (8, 16, 16, 3) and p1.dtype == np.uint8 and shared.shape == (8, 3)


# ---- the method on the platform -----------------------------------------------------------------------------
TINY = [
    "data.name=colored_digits",
    "data.colored_digits.size=16",
    "data.image_size=16",
    "data.classes_per_batch=4",
    "data.samples_per_class=4",
    "data.iterations_per_epoch=4",
    "data.augment=false",
    "model.width=8",
    "model.embed_dim=8",
    "train.epochs=2",
    "optim.lr=0.003",
    "optim.milestones=[]",
    "scaling.num_workers=0",
]
IIN_TINY = ["method.name=iin", "method.blocks=2", "method.width=16", "method.size_pairs=50",
            "method.eval_samples=50", "method.response_images=8", "method.resamples=4"]


@pytest.fixture(scope="module")
def first_stages(tmp_path_factory):
    """A finished classifier run and a finished autoencoder run (tiny, in-process)."""
    from reprlab.platform.runner import run_training

    root = tmp_path_factory.mktemp("first_stages")
    runs = {}
    for kind in ("classifier", "autoencoder"):
        runs[kind] = root / kind
        summary = run_training(load_config(None, TINY + [f"method.name={kind}", "data.iterations_per_epoch=15",
                                                         "optim.lr=0.01"]), runs[kind])
        assert summary["selection"] == f"val/{'accuracy' if kind == 'classifier' else 'mse'}"
    clf = json.loads((runs["classifier"] / "summary.json").read_text())
    assert clf["test"]["accuracy"] > clf["initial"]["accuracy"] + 0.1, "the classifier learns"
    ae = json.loads((runs["autoencoder"] / "summary.json").read_text())
    assert ae["test"]["mse"] < ae["initial"]["mse"], "the autoencoder learns"
    return runs


def _rows(run) -> list[dict]:
    return pq.read_table(run / "metrics.parquet").to_pylist()


def test_iin_interprets_a_classifier_in_process(first_stages, tmp_path):
    from reprlab.platform.runner import run_training

    out = tmp_path / "iin"
    summary = run_training(load_config(None, TINY + IIN_TINY + [f"method.first_stage={first_stages['classifier']}"]), out)
    rows = _rows(out)
    assert rows[-1]["test/nll"] < rows[0]["test/nll"], "the flow's likelihood improves"
    chosen = min(rows[1:], key=lambda r: r["val/nll"])  # nll: lower is better
    assert summary["selection"] == "val/nll" and summary["test"]["nll"] == chosen["test/nll"]
    sizes = [rows[-1][f"method/size_{p}"] for p in ("digit", "color", "residual")]
    assert sum(sizes) == 8 and min(sizes) >= 1
    for key in ("digit_acc_from_digit", "digit_acc_from_color", "color_r2_from_color", "response_std_digit",
                "response_std_residual"):
        assert np.isfinite(summary["test"][key]), key
    assert "fd_flow" not in summary["test"]  # a classifier has no decoder
    assert (out / "network_response.png").stat().st_size > 1000
    assert not (out / "factor_swaps.png").exists()


def test_iin_on_an_autoencoder_resumes_exactly(first_stages, tmp_path):
    from reprlab.platform.runner import run_training

    sets = TINY + IIN_TINY + [f"method.first_stage={first_stages['autoencoder']}",
                              f"method.feature_model={first_stages['classifier']}"]
    straight = tmp_path / "straight"
    summary = run_training(load_config(None, sets), straight)
    for key in ("fd_flow", "fd_prior", "response_std_color", "color_r2_from_residual"):
        assert np.isfinite(summary["test"][key]), key
    for name in ("factor_swaps.png", "samples.png", "network_response.png"):
        assert (straight / name).stat().st_size > 1000, name

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_0002")  # as if killed after epoch 1
    run_training(load_config(None, sets), resumed, resume=True)
    for a, b in zip(_rows(straight), _rows(resumed), strict=True):
        for key in ("train/loss", "val/nll", "test/nll", "test/fd_flow", "test/digit_acc_from_digit"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["epoch"], key)


@pytest.mark.slow
def test_iin_on_two_ray_workers_matches_in_process(ray_session, first_stages, tmp_path):
    from reprlab.platform.runner import run_training

    sets = TINY + IIN_TINY + [f"method.first_stage={first_stages['classifier']}", "train.epochs=1"]
    run_training(load_config(None, sets), tmp_path / "local")
    run_training(load_config(None, [*sets, "scaling.num_workers=2"]), tmp_path / "ray")
    local, ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert list((tmp_path / "ray" / "ray" / "train").glob("epoch_*/state.pt")), "Ray Train persisted checkpoints"
    assert ray[1]["train/loss"] == pytest.approx(local[1]["train/loss"], rel=1e-3)
    assert ray[1]["test/nll"] == pytest.approx(local[1]["test/nll"], rel=1e-3, abs=1e-4)


def test_bad_first_stages_are_one_config_line(first_stages, tmp_path):
    base = TINY + IIN_TINY
    with pytest.raises(ConfigError, match=r"method\.first_stage: .*no such run directory"):
        load_config(None, [*base, f"method.first_stage={tmp_path / 'missing'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"not a run directory \(no config.yaml\)"):
        load_config(None, [*base, f"method.first_stage={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match=r"method\.feature_model: .* is a autoencoder run .*expected a run of kind classifier"):
        load_config(None, [*base, f"method.first_stage={first_stages['autoencoder']}",
                           f"method.feature_model={first_stages['autoencoder']}"])
    with pytest.raises(ConfigError, match="method.factor_sizes"):
        load_config(None, [*base, f"method.first_stage={first_stages['classifier']}", "method.factor_sizes=[2,2,2]"])
    with pytest.raises(ConfigError, match="eval.selection_metric: iin reports no 'map@r'"):
        load_config(None, [*base, f"method.first_stage={first_stages['classifier']}", "eval.selection_metric=map@r"])
    with pytest.raises(ConfigError, match="method.first_stage: Field required"):
        load_config(None, base)


def test_frechet_distance_matches_the_closed_form():
    from scipy import linalg

    from reprlab.platform.interpretation import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    expected = mu @ mu + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_iin_presets_parse_and_the_paper_preset_has_the_papers_settings(first_stages):
    from reprlab.platform.config import preset_names

    runs = [f"method.first_stage={first_stages['autoencoder']}", f"method.feature_model={first_stages['classifier']}",
            "data.image_size=16"]  # the tiny first stages see 16 px images
    names = [n for n in preset_names() if n.startswith(("iin/", "classifier/", "autoencoder/"))]
    assert {"iin/colored_digits", "iin/colored_digits_ae", "iin/paper", "classifier/colored_digits",
            "autoencoder/colored_digits"} <= set(names)
    for name in names:
        load_config(name, runs if name.startswith("iin/") else [])
    paper = load_config("iin/paper", runs)
    m = paper.method
    assert (m.blocks, m.width, m.depth, m.rho, m.betas, m.lr_decay) == (12, 512, 2, 0.975, (0.5, 0.9), "linear")
    assert paper.data.batch_size == 25 and paper.optim.lr == 1.125e-4 and paper.eval.selection_metric == "nll"
