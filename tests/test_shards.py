"""Parquet shards (``reprlab data pack``, ``data.shards``): the same images, labels, metadata and
order as the data set's own files, read by row group, from a directory or fetched from a real
S3-compatible server (moto's) into a checked cache; one-line errors; the data loading bench."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reprlab.cli import main
from reprlab.bench.data_bench import bench_data, format_data_bench, make_cub_like
from reprlab.platform.core.config import load_config
from reprlab.platform.data import load_benchmark
from reprlab.platform.data.pipeline import EncodedImages, finish_batch, make_loader, sequential_batches
from reprlab.platform.data.sets.cub import read_cub
from reprlab.platform.data.shards import FORMAT, MANIFEST, open_shards, pack, read_encoded
from reprlab.platform.data.types import Benchmark, ImageSet, decode_pil
from reprlab.platform.core.errors import DataError
from reprlab.platform.run.results import read_metrics_table
from test_storage import BUCKET, _uri, s3  # noqa: F401  (the moto S3 server fixture)

SPLITS = ("train", "test", "query", "gallery")


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    """A fabricated CUB-200-2011 (6 classes x 8 tiny JPEGs, about 64 x 48) whose images.txt lists the images in
    shuffled order, so that the reader's order is not the class order the shards are sorted in."""
    root = tmp_path_factory.mktemp("cub")
    base = make_cub_like(root, classes=6, per_class=8, size=(64, 48))
    lines = (base / "images.txt").read_text().splitlines()
    order = np.random.default_rng(3).permutation(len(lines))
    (base / "images.txt").write_text("".join(lines[i] + "\n" for i in order))
    return root


@pytest.fixture(scope="module")
def cub(cub_root) -> Benchmark:
    return read_cub(cub_root)


def _splits(bench: Benchmark) -> dict[str, ImageSet]:
    return {s: getattr(bench, s) for s in SPLITS if getattr(bench, s) is not None}


def _file_bytes(images: ImageSet) -> list[bytes]:
    return [Path(p).read_bytes() for p in images.paths]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _one_error_line(err: str, start: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(start), lines[0]
    return lines[0]


# ---- packing and reading back ----------------------------------------------------------------


def test_pack_and_open_give_the_readers_labels_meta_order_and_bytes(cub, tmp_path):
    assert not np.all(np.diff(cub.train.labels) >= 0), "the fabricated order is not sorted by class"
    dest = tmp_path / "shards"
    manifest = pack(cub, dest, images_per_shard=5, rows_per_group=2)
    back = open_shards(dest)
    assert back.name == "cub" and back.query is None and back.gallery is None
    for split, images in _splits(cub).items():
        got = getattr(back, split)
        assert got.paths is None and got.pixels is None and got.shards is not None
        np.testing.assert_array_equal(got.labels, images.labels)
        assert set(got.meta) == {"image_id", "class_name"}
        np.testing.assert_array_equal(got.meta["image_id"], images.meta["image_id"])
        assert list(got.meta["class_name"]) == list(images.meta["class_name"])
        assert got.encoded(np.arange(len(got))) == _file_bytes(images), split
        assert [got.load(i).size for i in range(3)] == [images.load(i).size for i in range(3)]

    assert manifest == json.loads((dest / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["dataset"] == "cub"
    for split, images in _splits(cub).items():
        info = manifest["splits"][split]
        assert info["images"] == len(images) and info["classes"] == len(images.classes())
        assert len(info["files"]) >= 3, "several files per split"
        assert sum(f["rows"] for f in info["files"]) == len(images)
        labels = []
        for f in info["files"]:
            data = (dest / f["name"]).read_bytes()
            assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
            pf = pq.ParquetFile(dest / f["name"])
            assert pf.metadata.num_rows == f["rows"]
            assert pf.num_row_groups == math.ceil(f["rows"] / 2), "rows_per_group=2"
            lab = pf.read(columns=["label"]).column("label").to_numpy()
            assert np.all(np.diff(lab) >= 0), f"{f['name']} is not sorted by class"
            labels.append(lab)
        # class-contiguous across the files of a split too
        assert np.all(np.diff(np.concatenate(labels)) >= 0)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [MANIFEST] + [f["name"] for s in manifest["splits"].values() for f in s["files"]]), "no temporary files left"


def test_hand_built_benchmark_with_2d_and_bool_meta_round_trips(cub, tmp_path):
    def with_meta(images: ImageSet, seed: int) -> ImageSet:
        rng = np.random.default_rng(seed)
        n = len(images)
        meta = {"bbox": rng.integers(0, 500, (n, 4)).astype(np.int32), "flag": rng.random(n) < 0.5,
                "score": rng.random(n).astype(np.float32), "tag": np.array([f"t{i}" for i in range(n)], object)}
        return ImageSet(labels=images.labels, paths=images.paths, meta=meta)

    bench = Benchmark("cars", train=with_meta(cub.train, 0), test=with_meta(cub.test, 1))
    pack(bench, tmp_path / "s", images_per_shard=7, rows_per_group=3)
    back = open_shards(tmp_path / "s")
    assert back.name == "cars"
    for split in ("train", "test"):
        want, got = getattr(bench, split).meta, getattr(back, split).meta
        assert set(got) == set(want)
        assert got["bbox"].shape == want["bbox"].shape and got["bbox"].dtype.kind == "i"
        np.testing.assert_array_equal(got["bbox"], want["bbox"])
        assert got["flag"].dtype == bool
        np.testing.assert_array_equal(got["flag"], want["flag"])
        assert got["score"].dtype == np.float32
        np.testing.assert_array_equal(got["score"], want["score"])
        assert list(got["tag"]) == list(want["tag"])
        np.testing.assert_array_equal(getattr(back, split).labels, getattr(bench, split).labels)


def test_pixel_born_sets_come_back_as_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)

    def images(n: int) -> ImageSet:
        return ImageSet(labels=rng.integers(0, 4, n), pixels=rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8),
                        meta={"color": rng.integers(0, 3, n)})

    bench = Benchmark("colored_digits", train=images(21), query=images(9), gallery=images(11))
    for encoding in ("source", "raw"):
        dest = tmp_path / encoding
        manifest = pack(bench, dest, images_per_shard=8, rows_per_group=3, encoding=encoding)
        assert manifest["kind"] == "pixels"
        back = open_shards(dest)
        assert back.test is None and back.has_query_gallery
        for split, want in _splits(bench).items():
            got = getattr(back, split)
            assert got.pixels is not None and got.shards is None
            assert got.pixels.dtype == np.uint8
            np.testing.assert_array_equal(got.pixels, want.pixels)
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_array_equal(got.meta["color"], want.meta["color"])


def test_short_side_downscales_only_large_images_and_raw_stores_decoded_pixels(cub, tmp_path):
    from PIL import Image

    side = 45
    pack(cub, tmp_path / "small", short_side=side, images_per_shard=10, rows_per_group=4)
    small = open_shards(tmp_path / "small").train
    shrunk = kept = 0
    for path, cell in zip(cub.train.paths, small.encoded(np.arange(len(small)))):
        with Image.open(path) as im:
            w, h = im.size
        if min(w, h) > side:
            shrunk += 1
            out = decode_pil(cell, "cell")
            assert min(out.size) == side, (out.size, (w, h))
            assert abs(out.size[0] / out.size[1] - w / h) < 0.05
            assert cell[:2] == b"\xff\xd8", "stored as JPEG"
        else:
            kept += 1
            assert cell == Path(path).read_bytes(), "a small image keeps its own bytes"
    assert shrunk and kept, "the fabricated sizes straddle short_side"

    pack(cub, tmp_path / "raw", encoding="raw", images_per_shard=10, rows_per_group=4)
    raw = open_shards(tmp_path / "raw")
    for split in ("train", "test"):
        cells = getattr(raw, split).encoded(np.arange(len(getattr(raw, split))))
        for path, cell in zip(getattr(cub, split).paths, cells):
            with Image.open(path) as im:
                want = np.asarray(im.convert("RGB"))
            np.testing.assert_array_equal(np.asarray(decode_pil(cell, "cell")), want)


def test_read_encoded_random_indices_across_files_and_row_groups(cub, tmp_path):
    pack(cub, tmp_path / "s", images_per_shard=6, rows_per_group=2)
    back = open_shards(tmp_path / "s")
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        got, want = getattr(back, split), _file_bytes(getattr(cub, split))
        which = rng.integers(0, len(got), 40)
        which[:3] = which[3]  # duplicates
        assert len(np.unique(got.shards.file[which])) > 1 and len(np.unique(got.shards.row[which] // 2)) > 1
        assert read_encoded(got.shards, which) == [want[i] for i in which]
        assert got.encoded(which[::-1]) == [want[i] for i in which[::-1]]
        sub = got.subset(which[:10])
        assert sub.encoded(np.arange(10)) == [want[i] for i in which[:10]]
        assert read_encoded(got.shards, np.array([], dtype=np.int64)) == []


def test_loader_over_shards_gives_the_same_tensors_as_over_files(cub, tmp_path):
    pack(cub, tmp_path / "s", images_per_shard=9, rows_per_group=4)
    shards = open_shards(tmp_path / "s").test
    rng = np.random.default_rng(2)
    batches = [rng.permutation(len(shards))[:7] for _ in range(3)] + sequential_batches(len(shards), 10)

    def run(images: ImageSet, normalize: bool = True, workers: int = 2) -> list[torch.Tensor]:
        ds = EncodedImages(images, 32, augment=False, normalize=normalize)
        out = []
        for (x, idx), b in zip(make_loader(ds, batches, workers=workers), batches, strict=True):
            np.testing.assert_array_equal(idx.numpy(), b)
            out.append(x)
        return out

    files = run(cub.test)
    from_shards = run(shards)
    for a, b in zip(files, from_shards, strict=True):
        assert a.shape == (len(a), 3, 32, 32) and a.dtype == torch.float32
        assert torch.equal(a, b)
    raw = run(shards, normalize=False, workers=0)
    for a, b in zip(files, raw, strict=True):
        assert b.dtype == torch.uint8
        assert torch.allclose(finish_batch(b, torch.device("cpu")), a, atol=1e-5)


# ---- training from shards ----------------------------------------------------------------------


@pytest.mark.slow
def test_training_from_shards_gives_the_same_metrics_as_from_files(cub_root, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert main(["data", "pack", "cub", "--root", str(cub_root), "--out", str(shards),
                 "--images-per-shard", "7", "--rows-per-group", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"data.shards={shards}" in printed and (shards / MANIFEST).is_file()
    common = [
        f"data.root={cub_root}", "scaling.num_workers=0", "scaling.use_gpu=false", "scaling.cpus_per_worker=1",
        "model.backbone=small_cnn", "model.pretrained=none", "model.freeze_bn=false", "model.width=8",
        "model.embed_dim=16", "data.image_size=32", "data.classes_per_batch=3", "data.samples_per_class=2",
        "data.iterations_per_epoch=2", "data.loader_workers=0", "train.epochs=1", "eval.batch_size=16",
        "eval.kmeans_niter=5", "optim.lr=0.001", "data.validation.protocol=holdout", "data.validation.fraction=0.4",
    ]
    rows = {}
    for side, extra in (("files", []), ("shards", [f"data.shards={shards}", f"data.root={tmp_path / 'nowhere'}"])):
        out = tmp_path / side
        assert main(["train", "margin/cub", "--output", str(out), *_sets(common + extra)]) == 0
        rows[side] = read_metrics_table(out / "metrics.parquet")
    capsys.readouterr()
    epoch0 = [{k: v for k, v in r.items() if k.startswith(("val/", "test/"))} for r in
              (next(r for r in rows[s] if r["epoch"] == 0) for s in ("files", "shards"))]
    assert any(k.startswith("val/") for k in epoch0[0]) and any(k.startswith("test/") for k in epoch0[0])
    assert epoch0[0].keys() == epoch0[1].keys()
    assert all(math.isfinite(epoch0[0][f"{s}/recall@1"]) for s in ("val", "test")), epoch0[0]
    for k, v in epoch0[0].items():
        w = epoch0[1][k]
        assert (isinstance(v, float) and math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, abs=1e-6), k


# ---- object storage ------------------------------------------------------------------------------


def test_shards_in_s3_are_fetched_once_into_a_checked_cache(s3, cub, tmp_path):  # noqa: F811
    uri = _uri(s3, "shards/cub")
    manifest = pack(cub, uri, images_per_shard=8, rows_per_group=4)
    names = [f["name"] for s in manifest["splits"].values() for f in s["files"]]
    cache = tmp_path / "cache"
    first = open_shards(uri, cache=cache)
    (where,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in where.iterdir()) == sorted(names + [n + ".sha256" for n in names])
    for n, sha in ((f["name"], f["sha256"]) for s in manifest["splits"].values() for f in s["files"]):
        assert hashlib.sha256((where / n).read_bytes()).hexdigest() == sha == (where / (n + ".sha256")).read_text()
    assert all(str(where) in f for f in first.train.shards.files)
    np.testing.assert_array_equal(first.train.labels, cub.train.labels)

    stamps = {p.name: p.stat().st_mtime_ns for p in where.iterdir()}
    inodes = {p.name: p.stat().st_ino for p in where.iterdir()}
    open_shards(uri, cache=cache)
    assert {p.name: p.stat().st_mtime_ns for p in where.iterdir()} == stamps, "no second download"
    assert {p.name: p.stat().st_ino for p in where.iterdir()} == inodes

    # a truncated cached file (no image of it read yet in this process) is fetched again
    victim = where / names[0]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    again = open_shards(uri, cache=cache)
    assert victim.read_bytes() == whole
    for split in ("train", "test"):
        got = getattr(again, split)
        assert got.encoded(np.arange(len(got))) == _file_bytes(getattr(cub, split))

    # an object changed in the bucket after packing: the manifest's SHA-256 catches it
    fs = s3[0]
    other = (where / names[1]).read_bytes()
    with fs.open_output_stream(f"{BUCKET}/shards/cub/{names[0]}") as f:
        f.write(other)
    fresh = tmp_path / "cache2"
    with pytest.raises(DataError, match="SHA-256") as err:
        open_shards(uri, cache=fresh)
    assert names[0] in str(err.value) and "\n" not in str(err.value)
    assert "testing:testing" not in str(err.value), "no credentials in messages"
    (where2,) = [p for p in fresh.iterdir() if p.is_dir()]
    assert not (where2 / names[0]).exists() and not any(p.name.startswith(".") for p in where2.iterdir())
    # the cache filled before the change still holds the packed bytes, which the manifest vouches for
    open_shards(uri, cache=cache)

    with pytest.raises(DataError, match=r"no shard set at s3://reprlab-test/shards/none \(manifest\.json is missing"):
        open_shards(_uri(s3, "shards/none"), cache=cache)


# ---- errors ------------------------------------------------------------------------------------


def test_missing_or_foreign_manifest_and_wrong_data_name_are_one_line(cub, cub_root, tmp_path, capsys):
    with pytest.raises(DataError, match=r"no shard set at .*manifest\.json is missing"):
        open_shards(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST).write_text(json.dumps({"format": "other-shards/9", "splits": {}}))
    with pytest.raises(DataError, match=r"is not a reprlab-shards/1 manifest \(format: 'other-shards/9'\)"):
        open_shards(foreign)
    (foreign / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        open_shards(foreign)

    dest = tmp_path / "s"
    pack(cub, dest, images_per_shard=10, rows_per_group=4)
    cfg = load_config(None, ["data.name=cars", f"data.shards={dest}"]).data
    with pytest.raises(DataError, match="data.shards holds cub, but data.name is cars"):
        load_benchmark(cfg)
    assert load_benchmark(load_config(None, ["data.name=cub", f"data.shards={dest}"]).data).name == "cub"

    # through the CLI: exit 2, one line, no traceback
    code = main(["train", "--output", str(tmp_path / "run"),
                 *_sets(["data.name=cub", f"data.shards={tmp_path / 'nothing'}", "scaling.num_workers=0"])])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "reprlab: error: data: data.shards: no shard set at")


def test_pack_refuses_an_existing_set_without_force_and_needs_out(cub_root, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["data", "pack", "cub", "--root", str(cub_root), "--out", str(out), "--images-per-shard", "12"]
    assert main(args) == 0
    before = (out / MANIFEST).read_text()
    capsys.readouterr()
    assert main(args + ["--encoding", "raw"]) == 2
    _one_error_line(capsys.readouterr().err, "reprlab: error: data: ")
    assert (out / MANIFEST).read_text() == before
    assert main(args + ["--encoding", "raw", "--force"]) == 0
    assert json.loads((out / MANIFEST).read_text())["encoding"] == "raw"
    capsys.readouterr()
    with pytest.raises(DataError, match="already holds a shard set"):
        pack(read_cub(cub_root), out)

    assert main(["data", "pack", "cub", "--root", str(cub_root)]) == 2
    line = _one_error_line(capsys.readouterr().err, "reprlab: error: ")
    assert "--out is required" in line

    assert main(["data", "pack", "cub", "--root", str(cub_root), "--out", str(tmp_path / "t"),
                 "--rows-per-group", "0"]) == 2
    _one_error_line(capsys.readouterr().err, "reprlab: error: data: ")


def test_a_truncated_shard_is_one_error_naming_the_file(cub, tmp_path):
    dest = tmp_path / "s"
    manifest = pack(cub, dest, images_per_shard=10, rows_per_group=4)
    back = open_shards(dest)  # labels and meta read; no image read yet
    name = manifest["splits"]["test"]["files"][1]["name"]
    data = (dest / name).read_bytes()
    (dest / name).write_bytes(data[: len(data) // 3])
    first_of_file = int(np.flatnonzero(back.test.shards.file == 1)[0])
    with pytest.raises(DataError, match=name) as err:
        back.test.encoded([0, first_of_file])
    assert "\n" not in str(err.value) and str(err.value).startswith("data: ")
    with pytest.raises(DataError, match=name):  # opening the set again also names it
        open_shards(dest)


def test_repacking_in_place_is_read_afresh_in_the_same_process(cub, tmp_path):
    """A shard set replaced (``--force``) at the same path must not be read through the handles
    of the files it replaced."""
    dest = tmp_path / "s"
    pack(cub, dest, images_per_shard=10, rows_per_group=4)
    assert open_shards(dest).train.encoded([0]) == _file_bytes(cub.train)[:1]
    pack(cub, dest, images_per_shard=10, rows_per_group=4, encoding="raw", force=True)
    cell = open_shards(dest).train.encoded([0])[0]
    assert cell[:4] == b"RPXL", "read the replaced file's bytes"


# ---- the data loading bench ----------------------------------------------------------------------


def test_bench_data_smoke(tmp_path):
    result = bench_data(work=tmp_path, classes=4, per_class=4, classes_per_batch=2, samples_per_class=2,
                        batches=2, rounds=1, workers=0, image_size=32)
    sides = result["sides"]
    assert list(sides) == ["files, per image", "files, batched", "shards", "shards, short side 256",
                           "shards, short side 256, raw"]
    for label, side in sides.items():
        assert len(side["images_per_s"]) == 1 and side["median"] > 0 and side["ratio"] > 0, label
    assert sides["files, per image"]["ratio"] == 1.0
    assert all(sides[k]["bytes"] > 0 for k in list(sides)[2:])
    assert sides["shards, short side 256, raw"]["bytes"] > sides["shards, short side 256"]["bytes"]
    text = format_data_bench(result)
    assert all(label in text for label in sides) and "1.00x" in text


# ---- decoding: every image kind a data set holds, one DataError line for a broken one ---------------


def _encoded(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_tensor_handles_grayscale_palette_cmyk_raw_and_refuses_garbage():
    from PIL import Image

    from reprlab.platform.data.pipeline import decode_tensor
    from reprlab.platform.data.types import encode_raw

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (12, 17), dtype=np.uint8)
    cases = {
        "png rgb": (_encoded(Image.fromarray(rgb), "PNG"), np.asarray(Image.fromarray(rgb))),
        "png gray": (_encoded(Image.fromarray(gray), "PNG"), np.repeat(gray[..., None], 3, 2)),
        "png palette": (_encoded(Image.fromarray(rgb).convert("P"), "PNG"),
                        np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))),
        "raw rgb": (encode_raw(rgb), rgb),
        "raw gray": (encode_raw(gray[..., None]), np.repeat(gray[..., None], 3, 2)),
    }
    for name, (data, expected) in cases.items():
        x = decode_tensor(data, name)
        assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 12, 17), name
        assert np.array_equal(x.permute(1, 2, 0).numpy(), expected), name
    for mode in ("L", "CMYK"):  # lossy: compare with PIL's own decoding, loosely
        im = Image.fromarray(rgb).convert(mode)
        data = _encoded(im, "JPEG", quality=95)
        x = decode_tensor(data, mode).permute(1, 2, 0).numpy().astype(int)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        assert x.shape == ref.shape and np.abs(x - ref).mean() < 8, mode
    with pytest.raises(DataError, match=r"cannot read image broken\.jpg") as err:
        decode_tensor(b"\xff\xd8\xff\xe0 not a jpeg", "broken.jpg")
    assert "\n" not in str(err.value)
