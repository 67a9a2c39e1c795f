"""The data and trunk of the relations method: the embedded ``digits`` set, the ImageNet folder
reader, and the AlexNet trunk."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.data.catalog import get_dataset
from reprlab.platform.data.pipeline import to_unit
from reprlab.platform.data.sets.colored_digits import source_digits
from reprlab.platform.data.sets.digits import DigitsSection, load_digits_set
from reprlab.platform.data.sets.imagenet import read_imagenet

# ---- digits ---------------------------------------------------------------------------------------------


def _digits(**settings):
    return get_dataset("digits").load(SimpleNamespace(digits=DigitsSection(**settings)), None)


def test_digits_is_registered_gray_uint8_and_covers_every_image():
    spec = get_dataset("digits")
    assert spec.root == "none" and spec.Config is DigitsSection and {"labels", "metadata"} <= spec.provides
    bench = _digits()
    assert bench.name == "digits" and bench.test is not None and bench.query is None
    for split in (bench.train, bench.test):
        assert split.pixels.dtype == np.uint8 and split.pixels.shape[1:] == (32, 32, 1)  # gray, as glyphs
        assert split.labels.dtype == np.int64 and split.classes().tolist() == list(range(10))
    rows = np.concatenate([bench.train.meta["digit_index"], bench.test.meta["digit_index"]])
    assert sorted(rows.tolist()) == list(range(1797)), "every source digit once, in one split"
    _, digits = source_digits()
    assert np.array_equal(bench.train.labels, digits[bench.train.meta["digit_index"]])
    assert _digits(size=16).train.pixels.shape[1:] == (16, 16, 1)
    # the pipeline takes gray pixels: three equal channels
    x = to_unit(torch.from_numpy(bench.train.pixels[:4]), 32)
    assert x.shape == (4, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    assert bench.train.load(0).mode == "RGB"


def test_digits_are_a_function_of_the_seed():
    a, b, c = _digits(seed=3), _digits(seed=3), _digits(seed=4)
    for split in ("train", "test"):
        assert np.array_equal(getattr(a, split).pixels, getattr(b, split).pixels)
        assert np.array_equal(getattr(a, split).meta["digit_index"], getattr(b, split).meta["digit_index"])
    assert not np.array_equal(a.test.meta["digit_index"], c.test.meta["digit_index"]), "the split moves with the seed"
    # the same source image rendered under two seeds: different affines
    row = np.intersect1d(a.train.meta["digit_index"], c.train.meta["digit_index"])[:50]
    pa = a.train.pixels[np.searchsorted(a.train.meta["digit_index"], row)]
    pc = c.train.pixels[np.searchsorted(c.train.meta["digit_index"], row)]
    assert (np.abs(pa.astype(int) - pc.astype(int)).mean(axis=(1, 2, 3)) > 1).mean() > 0.9


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_digits_split_is_stratified(fraction):
    bench = _digits(test_fraction=fraction, seed=1)
    _, digits = source_digits()
    total = np.bincount(digits, minlength=10)
    test = np.bincount(bench.test.labels, minlength=10)
    assert np.array_equal(test, np.round(total * fraction)), "the same share of every digit is test"
    assert np.array_equal(np.bincount(bench.train.labels, minlength=10), total - test)


def test_digits_affine_moves_every_image_and_keeps_the_ink():
    _, digits = source_digits()
    plain = _digits(max_rotation=0.0, max_scale=0.0, max_shift=0.0)
    gray = torch.from_numpy(source_digits()[0][plain.train.meta["digit_index"]])[:, None]
    upscale = F.interpolate(gray, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    upscale = (upscale * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(plain.train.pixels.astype(int) - upscale.astype(int)).max() <= 1, "no affine: the plain upscale"
    moved = _digits()
    assert np.array_equal(moved.train.meta["digit_index"], plain.train.meta["digit_index"])
    diff = np.abs(moved.train.pixels.astype(int) - plain.train.pixels.astype(int)).mean(axis=(1, 2, 3))
    assert (diff > 1).mean() > 0.9, "almost every image has its own affine"
    ink = moved.train.pixels.astype(np.float64).sum(axis=(1, 2, 3)) / plain.train.pixels.astype(np.float64).sum(axis=(1, 2, 3))
    assert ink.min() > 0.6, "a shift of at most a tenth of the side keeps the digit on the canvas"
    # each transform alone changes the images
    for one in ({"max_rotation": 15.0}, {"max_scale": 0.1}, {"max_shift": 0.1}):
        only = _digits(**{"max_rotation": 0.0, "max_scale": 0.0, "max_shift": 0.0, **one})
        assert not np.array_equal(only.train.pixels, plain.train.pixels), one


def test_digits_settings_are_checked():
    with pytest.raises(ValueError):
        DigitsSection(max_scale=0.6)
    with pytest.raises(ValueError):
        DigitsSection(test_fraction=1.0)


# ---- ImageNet folder reader -----------------------------------------------------------------------------

TRAIN = {"n01443537": 2, "n01440764": 3, "n01484850": 1}
VAL = {"n01440764": 2, "n01443537": 1, "n01484850": 1}


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (120, 30, 200)).save(path, "JPEG")


def make_imagenet(base: Path) -> Path:
    for split, counts in (("train", TRAIN), ("val", VAL)):
        for wnid, n in counts.items():
            for i in range(n):
                _jpeg(base / split / wnid / f"{wnid}_{split}_{i}.JPEG")
    (base / "train" / "n01440764" / "notes.txt").write_text("not an image")  # ignored
    (base / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")  # files beside the splits: ignored
    return base


def test_imagenet_reader_labels_splits_and_meta(tmp_path):
    base = make_imagenet(tmp_path / "imagenet_root")
    bench = read_imagenet(base)
    wnids = sorted(TRAIN)
    assert bench.name == "imagenet" and bench.query is None
    assert len(bench.train) == sum(TRAIN.values()) and len(bench.test) == sum(VAL.values())
    for split, counts in ((bench.train, TRAIN), (bench.test, VAL)):
        assert split.paths.dtype == object and split.labels.dtype == np.int64
        assert all(Path(p).is_absolute() and Path(p).is_file() and p.endswith(".JPEG") for p in split.paths)
        assert [wnids[k] for k in split.labels] == split.meta["wnid"].tolist()
        for p, w in zip(split.paths, split.meta["wnid"]):
            assert Path(p).parent.name == w
        assert np.bincount(split.labels).tolist() == [counts[w] for w in wnids]
    assert bench.train.classes().tolist() == bench.test.classes().tolist() == [0, 1, 2], "same classes"
    assert not set(bench.train.paths) & set(bench.test.paths)
    assert bench.train.load(0).size == (6, 5)


@pytest.mark.parametrize("folder", ["ILSVRC2012", "imagenet"])
def test_imagenet_root_may_be_the_parent_folder(tmp_path, folder):
    make_imagenet(tmp_path / folder)
    direct = read_imagenet(tmp_path / folder)
    bench = read_imagenet(tmp_path)
    assert bench.train.paths.tolist() == direct.train.paths.tolist()
    assert bench.test.labels.tolist() == direct.test.labels.tolist()


def test_imagenet_is_registered(tmp_path):
    make_imagenet(tmp_path)
    spec = get_dataset("imagenet")
    assert spec.root == "required" and {"labels", "metadata"} <= spec.provides and "query_gallery" not in spec.provides
    bench = spec.load(SimpleNamespace(), tmp_path)
    assert bench.train.paths.tolist() == read_imagenet(tmp_path).train.paths.tolist()


def _one_line_error(root: Path, *words: str) -> str:
    with pytest.raises(DataError) as info:
        read_imagenet(root)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("data: "), msg
    for word in words:
        assert word in msg, msg
    return msg


def test_imagenet_bad_layouts_are_one_line_each(tmp_path):
    base = make_imagenet(tmp_path / "in")
    # a validation class that is not a training class
    _jpeg(base / "val" / "n09999999" / "x.JPEG")
    _one_line_error(base, str(base / "val" / "n09999999"), "n09999999")
    shutil.rmtree(base / "val" / "n09999999")
    # an empty class directory, in either split
    (base / "train" / "n01440765").mkdir()
    _one_line_error(base, str(base / "train" / "n01440765"))
    (base / "train" / "n01440765").rmdir()
    only = base / "val" / "n01484850" / "n01484850_val_0.JPEG"
    only.unlink()
    _one_line_error(base, str(only.parent))
    _jpeg(only)
    read_imagenet(base)  # whole again
    # the validation images as the archive ships them: all in val/, not sorted by class
    aside = tmp_path / "val_sorted"
    shutil.move(base / "val", aside)
    for p in aside.rglob("*.JPEG"):
        _jpeg(base / "val" / p.name)
    _one_line_error(base, str(base / "val"), "no class directories", f"holds {sum(VAL.values())} images directly")
    shutil.rmtree(base / "val")
    shutil.move(aside, base / "val")
    # hidden folders (editor and notebook leftovers) are not classes
    (base / "train" / ".ipynb_checkpoints").mkdir()
    assert ".ipynb_checkpoints" not in set(read_imagenet(base).train.meta["wnid"])
    # no train (or val) directory
    shutil.move(base / "val", tmp_path / "val_aside")
    _one_line_error(base, str(base / "val"))
    shutil.move(tmp_path / "val_aside", base / "val")
    shutil.rmtree(base / "train")
    _one_line_error(base, str(base / "train"))


def test_imagenet_missing_root_through_the_cli(tmp_path, cli_error):
    err = cli_error(["data", "info", "imagenet", "--root", str(tmp_path / "nothing")])
    assert "nothing" in err
    make_imagenet(tmp_path / "in")
    shutil.rmtree(tmp_path / "in" / "train")
    assert str(tmp_path / "in" / "train") in cli_error(["data", "info", "imagenet", "--root", str(tmp_path / "in")])


# ---- AlexNet trunk --------------------------------------------------------------------------------------


def test_alexnet_trunk_gives_4096_d_fc7_features():
    from reprlab.platform.core.config import ModelSection
    from reprlab.platform.nn.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(ModelSection(backbone="alexnet")).eval()
    assert net.out_dim == 4096
    assert not [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000], "no fc8"
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 4096)
        small = torch.randn(2, 3, 64, 64)
        out = net(small)
        assert out.shape == (2, 4096) and torch.isfinite(out).all() and (out >= 0).all()  # after fc7's ReLU
        assert torch.equal(out, net(small)), "eval mode: no dropout"
        early = net.early_features(small)
        assert early.ndim == 2 and early.shape[0] == 2
        with pytest.raises(ConfigError, match="alexnet needs inputs of at least 63 px"):
            net(torch.randn(1, 3, 32, 32))
        assert net(torch.randn(1, 3, 63, 63)).shape == (1, 4096)
    net.train()
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_alexnet_is_a_valid_backbone_and_refuses_pretrained_weights(tmp_path):
    from reprlab.platform.core.config import ModelSection, load_config
    from reprlab.platform.nn.backbones import build_backbone

    assert load_config(None, ["model.backbone=alexnet"]).model.backbone == "alexnet"
    with pytest.raises(ValueError):
        ModelSection(backbone="vgg16")
    for weights in ("imagenet", str(tmp_path / "w.pth")):
        with pytest.raises(ConfigError) as info:
            build_backbone(ModelSection(backbone="alexnet", pretrained=weights))
        msg = str(info.value)
        assert "\n" not in msg and "alexnet" in msg and "model.pretrained" in msg
