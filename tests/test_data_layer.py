"""The data layer: the data-set catalog, batches for every family, samples beyond labeled images.

Walk-throughs of docs/ARCHITECTURE.md: adding a data set (scikit-learn's digits, one module, then
margin trained on it) and adding a method (``pixel_map`` in ``toy_plugins.py``, trained on a paired
and a dense set).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.cli import main
from reprlab.platform.contract.context import Context, load_run_data
from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.data.pipeline import denormalize
from reprlab.platform.data.sampler import rank_bounds, shuffled_batches
from reprlab.platform.run.driver import run_training

from toy_plugins import register_toy_sets

register_toy_sets()

# ------------------------------------------------------------------------- adding a data set

DIGITS_MODULE = '''
"""scikit-learn's 8 x 8 handwritten digits as a metric-learning set: digits 0-5 train, 6-9 test
(class-disjoint, as the DML benchmarks are)."""
import numpy as np
from sklearn.datasets import load_digits

from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet


def load(section, root):
    digits = load_digits()
    pixels = np.repeat((digits.images * (255 / 16)).astype(np.uint8)[..., None], 3, axis=3)
    train = digits.target < 6
    return Benchmark("digits_ml", ImageSet(labels=digits.target[train], pixels=pixels[train]),
                     test=ImageSet(labels=digits.target[~train], pixels=pixels[~train]))


register_dataset(DataSet(name="digits_ml", description="scikit-learn digits, 0-5 train, 6-9 test",
                         load=load, provides=frozenset({"labels"}), root="none"))
'''


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory):
    """The new data set: one module, imported (in the package it would sit in data/sets/)."""
    path = tmp_path_factory.mktemp("plugin") / "digits_ml.py"
    path.write_text(DIGITS_MODULE)
    spec = importlib.util.spec_from_file_location("digits_ml", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["digits_ml"] = module
    spec.loader.exec_module(module)
    return "digits_ml"


def test_a_new_data_set_is_one_module_and_margin_trains_on_it(digits_set, tmp_path, capsys):
    assert main(["data", "list"]) == 0
    assert "digits_ml" in capsys.readouterr().out
    sets = ["data.name=digits_ml", "data.image_size=16", "data.classes_per_batch=6", "data.samples_per_class=4",
            "data.iterations_per_epoch=15", "model.width=8", "model.embed_dim=16", "optim.lr=0.003",
            "train.epochs=2", "eval.kmeans_niter=5", "scaling.num_workers=0"]
    summary = run_training(load_config("margin/glyphs", sets), tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # it learns: the unseen digits 6-9 are retrieved better than by the untrained network
    assert summary["test"]["map@r"] > summary["initial"]["map@r"] + 0.03
    assert rows[-1]["val/map@r"] > rows[0]["val/map@r"] + 0.2


# ------------------------------------------------------------------------- the catalog's checks


@pytest.mark.parametrize("sets, fragment", [
    (["data.name=nope"], "data.name: unknown data set 'nope' (known: "),
    (["data.name=toy_pairs"], "method margin needs labels, which data set toy_pairs does not provide"),
    (["method.name=pixel_map", "data.name=toy_dense"], "method pixel_map needs paired"),
    (["method.name=pixel_map", "data.name=toy_pairs", "data.batch_size=4", "scaling.num_workers=5"],
     "a global batch of 4 cannot give each of scaling.num_workers=5 workers a sample"),
    (["data.classes_per_batch=32", "scaling.num_workers=3"], "worker counts that divide it: 1, 2, 4, 8, 16, 32"),
    (["data.batch_size=100"], "leave data.batch_size unset or set it to 128"),
    (["method.name=pixel_map", "data.name=toy_pairs_bad", "scaling.num_workers=0"],
     "input images are 20x20 but target images are 12x12"),
    (["method.name=pixel_map", "data.name=toy_pairs", "data.validation.protocol=kfold"], "kfold splits classes"),
])
def test_bad_data_for_the_method_is_one_line_before_anything_is_written(sets, fragment, tmp_path, cli_error):
    out = tmp_path / "run"
    base = tmp_path / "base.yaml"  # the defaults: margin on glyphs
    base.write_text("{}\n")
    args = ["train", str(base), "--output", str(out)]
    for s in sets:
        args += ["--set", s]
    assert fragment in cli_error(args)
    assert not out.exists()


def test_a_set_missing_what_it_declares_is_a_data_error():
    from reprlab.platform.data import check_benchmark
    from reprlab.platform.data.catalog import DataSet
    from reprlab.platform.data.types import Benchmark, ImageSet

    spec = DataSet(name="x", description="", load=lambda s, r: None, provides=frozenset({"labels"}), root="none")
    px = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match="declares labels, but its train split has none"):
        check_benchmark(Benchmark("x", ImageSet(pixels=px), test=ImageSet(labels=np.arange(4), pixels=px)), spec)


# ------------------------------------------------------------------------- batches for every family


def test_rank_shares_cover_a_batch_that_does_not_divide():
    for n, w in [(25, 1), (25, 2), (25, 5), (10, 3), (7, 7)]:
        bounds = [rank_bounds(n, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
        whole = shuffled_batches(100, n, 3, epoch=2, seed=5)
        parts = [shuffled_batches(100, n, 3, epoch=2, seed=5, rank=r, world_size=w) for r in range(w)]
        assert np.array_equal(np.concatenate(parts, axis=1), whole)


def test_global_mean_of_uneven_shares_averages_to_the_global_mean():
    cfg = load_config(None, ["method.name=pixel_map", "data.name=toy_pairs", "data.batch_size=10",
                                        "scaling.num_workers=0"])
    data = load_run_data(cfg)
    values = torch.arange(10, dtype=torch.float64) ** 2
    terms = []
    for r in range(3):  # DDP averages the three ranks' terms
        ctx = Context(cfg, data, torch.device("cpu"), rank=r, world_size=3)
        terms.append(ctx.global_mean(values[ctx.share()]))
    assert torch.stack(terms).mean().item() == pytest.approx(values.mean().item(), rel=1e-12)


# ------------------------------------------------------------------------- paired and dense samples


def _ctx(sets: list[str], rank: int = 0, world: int = 1) -> Context:
    cfg = load_config(None, ["method.name=pixel_map", "data.image_size=16", "data.batch_size=10",
                                        "data.iterations_per_epoch=3", "scaling.num_workers=0", *sets])
    return Context(cfg, load_run_data(cfg), torch.device("cpu"), rank=rank, world_size=world)


def _first(ctx: Context, epoch: int = 1) -> dict[str, torch.Tensor]:
    return next(iter(ctx.sample_batches(epoch)))


def test_paired_samples_get_the_same_crop_and_flip():
    s = _first(_ctx(["data.name=toy_pairs"]))
    assert s["image"].shape == s["target"].shape == (10, 3, 16, 16) and "label" not in s
    x, t = denormalize(s["image"]), denormalize(s["target"])
    # the target is the negative of the input: with the same warp, x + t = 1 wherever the crop
    # reads the image (all of it but a rim of half a pixel); another crop would break it
    assert (x + t)[..., 1:-1, 1:-1].sub(1).abs().max() < 1e-5
    assert not torch.allclose(_first(_ctx(["data.name=toy_pairs", "data.augment=false"]))["image"], s["image"])


def test_dense_targets_follow_the_image():
    s = _first(_ctx(["data.name=toy_dense", "method.predict=mask"]))
    gray = denormalize(s["image"])[:, 0]
    bright = gray > 0.5
    mask = s["mask"].bool()
    interior = torch.zeros_like(mask)
    interior[:, 1:-1, 1:-1] = True
    # mask and image disagree at most along the square's edges (nearest vs bilinear)
    edge = torch.nn.functional.max_pool2d(bright.float()[:, None], 3, 1, 1)[:, 0].bool() & ~(
        -torch.nn.functional.max_pool2d(-bright.float()[:, None], 3, 1, 1)[:, 0]).bool()
    assert ((bright != mask) & interior & ~edge).sum() == 0
    # visible corners sit on the square's boundary: near bright and dark pixels
    kp, vis = s["corners"], s["corners_visible"]
    assert vis.any()
    for n, k in zip(*torch.nonzero(vis, as_tuple=True)):
        x, y = kp[n, k].floor().long().clamp(0, 15)
        patch = gray[n, max(0, y - 1): y + 2, max(0, x - 1): x + 2]
        assert patch.max() > 0.5, "a visible corner lies at the square"
    assert s["flow"].shape == (10, 2, 16, 16)


@pytest.mark.parametrize("sets", [["data.name=toy_pairs"], ["data.name=toy_dense", "method.predict=mask"]])
def test_rank_shares_of_samples_are_the_global_batch(sets):
    whole = _first(_ctx(sets))
    parts = [_first(_ctx(sets, rank=r, world=3)) for r in range(3)]
    assert [len(p["image"]) for p in parts] == [4, 3, 3]
    for key in whole:
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), key


@pytest.mark.parametrize("name, predict", [("toy_pairs", "target"), ("toy_dense", "mask")])
def test_paired_and_dense_runs_learn_and_resume_exactly(name, predict, tmp_path):
    sets = ["method.name=pixel_map", f"method.predict={predict}", f"data.name={name}", "data.image_size=16",
            "data.batch_size=10", "data.iterations_per_epoch=6", "optim.lr=0.01", "train.epochs=2",
            "scaling.num_workers=0"]
    cfg = load_config(None, sets)
    assert cfg.data.augment
    straight = tmp_path / "straight"
    summary = run_training(cfg, straight)
    assert summary["test"]["error"] < summary["initial"]["error"], "it learns"
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_0002")  # as if killed after epoch 1
    run_training(load_config(None, sets), resumed, resume=True)
    a = pq.read_table(straight / "metrics.parquet").to_pylist()
    b = pq.read_table(resumed / "metrics.parquet").to_pylist()
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "val/error", "test/error"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-7), (ra["epoch"], key)


def test_config_errors_name_the_data_set_key():
    with pytest.raises(ConfigError, match=r"data\.name: expected a name"):
        load_config("margin/glyphs", ["data.name=[1, 2]"])
