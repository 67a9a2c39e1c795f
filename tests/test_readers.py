"""Readers of the real benchmarks, on tiny trees fabricated in each data set's official layout."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
from PIL import Image

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import get_dataset
from reprlab.platform.data.sets.cars import read_cars
from reprlab.platform.data.sets.cub import read_cub
from reprlab.platform.data.sets.inshop import read_inshop
from reprlab.platform.data.sets.sop import read_sop
from reprlab.platform.data.sets.vehicleid import VehicleIDSection, read_vehicleid


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def _write_images(base: Path, rel_paths) -> None:
    for rel in rel_paths:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _rewrite_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    _write_lines(path, lines)


def _assert_disjoint(a, b) -> None:
    assert np.intersect1d(a.classes(), b.classes()).size == 0


def _assert_paths(image_set) -> None:
    assert image_set.paths.dtype == object
    assert all(
        isinstance(p, str) and Path(p).is_absolute() and Path(p).is_file() for p in image_set.paths
    )
    assert image_set.labels.dtype == np.int64


# --------------------------------------------------------------------------------------------
# CUB-200-2011: CUB_200_2011/{images.txt,image_class_labels.txt,classes.txt,images/}

CUB_CLASSES = {
    1: "001.Black_footed_Albatross",
    2: "002.Laysan_Albatross",
    101: "101.White_Pelican",
    200: "200.Common_Yellowthroat",
}
CUB_PER_CLASS = {1: 3, 2: 2, 101: 2, 200: 3}


def make_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    images, labels = [], []
    for cid, name in CUB_CLASSES.items():
        for k in range(CUB_PER_CLASS[cid]):
            images.append(f"{name}/{name.split('.')[1]}_{k:04d}_{cid}{k}.jpg")
            labels.append(cid)
    _write_lines(base / "images.txt", [f"{i + 1} {p}" for i, p in enumerate(images)])
    _write_lines(base / "image_class_labels.txt", [f"{i + 1} {c}" for i, c in enumerate(labels)])
    _write_lines(base / "classes.txt", [f"{c} {n}" for c, n in CUB_CLASSES.items()])
    _write_lines(base / "train_test_split.txt", [f"{i + 1} {i % 2}" for i in range(len(images))])
    _write_images(base / "images", images)
    return base


def test_cub_splits_labels_meta(tmp_path):
    make_cub(tmp_path)
    bench = read_cub(tmp_path)
    assert bench.name == "cub" and not bench.has_query_gallery
    assert len(bench.train) == 5 and len(bench.test) == 5
    assert bench.train.classes().tolist() == [1, 2]
    assert bench.test.classes().tolist() == [101, 200]
    _assert_disjoint(bench.train, bench.test)
    _assert_paths(bench.train)
    assert bench.train.meta["image_id"].tolist() == [1, 2, 3, 4, 5]
    assert bench.test.meta["class_name"][0] == "101.White_Pelican"
    assert Path(bench.test.paths[0]).parent.name == "101.White_Pelican"
    assert bench.train.load(0).size == (4, 4)


def test_cub_accepts_the_dataset_folder_itself(tmp_path):
    base = make_cub(tmp_path)
    assert len(read_cub(base).train) == len(read_cub(tmp_path).train)


def test_cub_errors(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        read_cub(tmp_path / "nowhere")
    base = make_cub(tmp_path)
    _rewrite_line(base / "image_class_labels.txt", 3, "4 x")
    with pytest.raises(DataError, match=r"line 4 in .*image_class_labels\.txt"):
        read_cub(tmp_path)
    _rewrite_line(base / "image_class_labels.txt", 3, "4 1 extra")
    with pytest.raises(DataError, match=r"line 4 .*expected 2 fields"):
        read_cub(tmp_path)
    _rewrite_line(base / "image_class_labels.txt", 3, "4 1")
    _rewrite_line(base / "images.txt", 4, "4 001.Black_footed_Albatross/dup.jpg")
    with pytest.raises(DataError, match=r"line 5 in .*images\.txt: duplicate image id 4"):
        read_cub(tmp_path)
    make_cub(tmp_path)
    _rewrite_line(base / "image_class_labels.txt", 3, "4 7")
    with pytest.raises(DataError, match="class id 7"):
        read_cub(tmp_path)
    (base / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"list file not found: .*classes\.txt"):
        read_cub(tmp_path)


def test_cub_missing_image(tmp_path):
    base = make_cub(tmp_path)
    victims = sorted((base / "images").rglob("*.jpg"))[:2]
    for v in victims:
        v.unlink()
    with pytest.raises(DataError, match=r"2 of 10 images .* missing, first: .*\.jpg") as err:
        read_cub(tmp_path)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# CARS196: cars_annos.mat + car_ims/

CARS_CLASSES = [1, 1, 2, 98, 99, 99, 150, 196]


def make_cars(root: Path, classes=CARS_CLASSES) -> Path:
    fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    ann = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(classes):
        ann[0, i] = (
            f"car_ims/{i + 1:06d}.jpg",
            np.uint8(3),
            np.uint8(4),
            np.uint16(300),
            np.uint8(200),
            np.uint8(c),
            np.uint8(i % 2),
        )
    names = np.array([f"Make Model {c} 2012" for c in range(1, 197)], dtype=object).reshape(1, -1)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": names})
    _write_images(root, [f"car_ims/{i + 1:06d}.jpg" for i in range(len(classes))])
    return root


def test_cars_splits_labels_meta(tmp_path):
    make_cars(tmp_path)
    bench = read_cars(tmp_path)
    assert len(bench.train) == 4 and len(bench.test) == 4
    assert bench.train.classes().tolist() == [1, 2, 98]
    assert bench.test.classes().tolist() == [99, 150, 196]
    _assert_disjoint(bench.train, bench.test)
    _assert_paths(bench.train)
    assert bench.test.meta["class_name"][-1] == "Make Model 196 2012"
    assert bench.train.meta["bbox"][0].tolist() == [3, 4, 300, 200]
    assert bench.train.meta["official_test"].tolist() == [False, True, False, True]
    assert Path(bench.train.paths[0]).name == "000001.jpg"


def test_cars_errors(tmp_path):
    with pytest.raises(DataError, match="CARS196 directory not found"):
        read_cars(tmp_path / "nowhere")
    tmp_path.joinpath("car_ims").mkdir()
    with pytest.raises(DataError, match=r"not found: .*cars_annos\.mat"):
        read_cars(tmp_path)
    make_cars(tmp_path)
    (tmp_path / "car_ims" / "000003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 8 images .* missing, first: .*000003\.jpg"):
        read_cars(tmp_path)
    make_cars(tmp_path, classes=[1, 197])
    with pytest.raises(DataError, match=r"annotation 2 .* class 197"):
        read_cars(tmp_path)
    scipy.io.savemat(
        tmp_path / "cars_annos.mat",
        {
            "annotations": np.zeros((1, 2), dtype=[("class", "O")]),
            "class_names": np.array(["a"], dtype=object),
        },
    )
    with pytest.raises(DataError, match="lack the field"):
        read_cars(tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot read"):
        read_cars(tmp_path)


# --------------------------------------------------------------------------------------------
# Stanford Online Products: Stanford_Online_Products/{Ebay_train.txt,Ebay_test.txt,<super>_final/}

SOP_HEADER = "image_id class_id super_class_id path"


def make_sop(root: Path) -> Path:
    base = root / "Stanford_Online_Products"
    train = [
        (1, 1, "bicycle_final"),
        (2, 1, "bicycle_final"),
        (3, 2, "chair_final"),
        (4, 2, "chair_final"),
    ]
    test = [
        (5, 3, "mug_final"),
        (6, 3, "mug_final"),
        (7, 4, "chair_final"),
        (8, 4, "chair_final"),
        (9, 4, "chair_final"),
    ]
    super_ids = {"bicycle_final": 1, "chair_final": 3, "mug_final": 8}
    for name, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines = [SOP_HEADER] + [
            f"{i} {c} {super_ids[s]} {s}/11{c}{i:04d}_{i % 3}.JPG" for i, c, s in rows
        ]
        _write_lines(base / name, lines)
        _write_images(base, [line.split()[3] for line in lines[1:]])
    return base


def test_sop_splits_labels_meta(tmp_path):
    make_sop(tmp_path)
    bench = read_sop(tmp_path)
    assert len(bench.train) == 4 and len(bench.test) == 5
    assert bench.train.classes().tolist() == [1, 2]
    assert bench.test.classes().tolist() == [3, 4]
    _assert_disjoint(bench.train, bench.test)
    _assert_paths(bench.test)
    assert bench.test.meta["image_id"].tolist() == [5, 6, 7, 8, 9]
    assert bench.test.meta["super_class"].tolist() == [8, 8, 3, 3, 3]
    assert bench.test.meta["super_class_name"].tolist() == ["mug", "mug", "chair", "chair", "chair"]
    assert len(read_sop(tmp_path / "Stanford_Online_Products").test) == 5


def test_sop_errors(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        read_sop(tmp_path / "nowhere")
    base = make_sop(tmp_path)
    _rewrite_line(base / "Ebay_test.txt", 3, "7 4 3")
    with pytest.raises(DataError, match=r"line 4 in .*Ebay_test\.txt"):
        read_sop(tmp_path)
    _rewrite_line(base / "Ebay_test.txt", 0, "id class super path")
    with pytest.raises(DataError, match=r"line 1 in .*Ebay_test\.txt: expected header"):
        read_sop(tmp_path)
    make_sop(tmp_path)
    _rewrite_line(base / "Ebay_test.txt", 1, "5 2 8 mug_final/1130005_2.JPG")
    with pytest.raises(DataError, match="share 1 classes"):
        read_sop(tmp_path)
    make_sop(tmp_path)
    (base / "mug_final" / "1130005_2.JPG").unlink()
    with pytest.raises(DataError, match=r"1 of 5 images listed in .*Ebay_test\.txt are missing"):
        read_sop(tmp_path)
    (base / "Ebay_train.txt").unlink()
    with pytest.raises(DataError, match=r"list file not found: .*Ebay_train\.txt"):
        read_sop(tmp_path)


# --------------------------------------------------------------------------------------------
# In-shop Clothes: list_eval_partition.txt + img/

INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "train"),
    ("img/MEN/Denim/id_00000007/01_2_side.jpg", "id_00000007", "train"),
    ("img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg", "id_00000001", "gallery"),
    ("img/WOMEN/Blouses_Shirts/id_00000001/02_2_side.jpg", "id_00000001", "query"),
    ("img/WOMEN/Blouses_Shirts/id_00000001/02_3_back.jpg", "id_00000001", "query"),
    ("img/MEN/Jackets_Vests/id_00000080/01_1_front.jpg", "id_00000080", "gallery"),
    ("img/MEN/Jackets_Vests/id_00000080/01_4_full.jpg", "id_00000080", "gallery"),
    ("img/MEN/Jackets_Vests/id_00000080/01_7_additional.jpg", "id_00000080", "query"),
]


def make_inshop(root: Path, rows=INSHOP_ROWS) -> Path:
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    _write_lines(root / "list_eval_partition.txt", lines + [" ".join(r) for r in rows])
    _write_images(root, [r[0] for r in rows])
    return root


def test_inshop_query_gallery(tmp_path):
    make_inshop(tmp_path)
    bench = read_inshop(tmp_path)
    assert bench.has_query_gallery and bench.test is None
    assert (len(bench.train), len(bench.query), len(bench.gallery)) == (4, 3, 3)
    assert bench.train.classes().tolist() == [2, 7]
    assert bench.query.classes().tolist() == [1, 80]
    assert bench.gallery.classes().tolist() == [1, 80]
    _assert_disjoint(bench.train, bench.query)
    _assert_paths(bench.gallery)
    assert bench.query.meta["item_id"].tolist() == ["id_00000001", "id_00000001", "id_00000080"]
    assert bench.train.meta["category"].tolist() == ["WOMEN/Dresses"] * 2 + ["MEN/Denim"] * 2
    assert bench.gallery.paths[0].endswith("img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg")


def test_inshop_accepts_the_deepfashion_folders(tmp_path):
    make_inshop(tmp_path / "Img")
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Img" / "list_eval_partition.txt").rename(
        tmp_path / "Eval" / "list_eval_partition.txt"
    )
    bench = read_inshop(tmp_path)
    assert len(bench.query) == 3 and Path(bench.query.paths[0]).is_file()


def test_inshop_errors(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        read_inshop(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"not found: .*list_eval_partition\.txt"):
        read_inshop(tmp_path)
    make_inshop(tmp_path)
    listing = tmp_path / "list_eval_partition.txt"
    _rewrite_line(listing, 4, "img/MEN/Denim/id_00000007/01_1_front.jpg id_00000007 val")
    with pytest.raises(DataError, match=r"line 5 in .*: evaluation_status 'val'"):
        read_inshop(tmp_path)
    _rewrite_line(listing, 4, "img/MEN/Denim/id_00000007/01_1_front.jpg item7 train")
    with pytest.raises(DataError, match=r"line 5 in .*item_id 'item7'"):
        read_inshop(tmp_path)
    _rewrite_line(listing, 4, "img/MEN/Denim/id_00000007/01_1_front.jpg")
    with pytest.raises(DataError, match=r"line 5 in .*expected 3 fields"):
        read_inshop(tmp_path)
    make_inshop(tmp_path)
    _rewrite_line(listing, 0, "11")
    with pytest.raises(DataError, match="declares 11 images but lists 10"):
        read_inshop(tmp_path)
    make_inshop(tmp_path)
    (tmp_path / INSHOP_ROWS[-1][0]).unlink()
    with pytest.raises(
        DataError, match=r"1 of 10 images .* missing, first: .*01_7_additional\.jpg"
    ):
        read_inshop(tmp_path)


# --------------------------------------------------------------------------------------------
# PKU VehicleID: train_test_split/{train_list.txt,test_list_*.txt} + image/


def make_vehicleid(root: Path) -> Path:
    counter = iter(range(1, 10_000))

    def listing(ids, per_id):
        return [(f"{next(counter):07d}", v) for v in ids for _ in range(per_id)]

    train = listing([0, 1, 2], 2)
    tests = {
        800: listing([10, 11, 12, 13], 3),
        1600: listing(range(20, 26), 2),
        2400: listing(range(30, 38), 2),
    }
    split = root / "train_test_split"
    _write_lines(split / "train_list.txt", [f"{n} {v}" for n, v in train])
    for size, rows in tests.items():
        _write_lines(split / f"test_list_{size}.txt", [f"{n} {v}" for n, v in rows])
    names = [n for rows in (train, *tests.values()) for n, _ in rows]
    _write_images(root / "image", [f"{n}.jpg" for n in names])
    # model labels exist for some vehicles only, as in the real attribute/model_attr.txt
    _write_lines(root / "attribute" / "model_attr.txt", ["0 45", "2 7", "11 120"])
    return root


def test_vehicleid_query_gallery(tmp_path):
    make_vehicleid(tmp_path)
    bench = read_vehicleid(tmp_path)
    assert bench.has_query_gallery
    assert len(bench.train) == 6 and bench.train.classes().tolist() == [0, 1, 2]
    assert len(bench.gallery) == 4 and len(bench.query) == 8
    assert bench.gallery.classes().tolist() == [10, 11, 12, 13]
    assert np.unique(bench.gallery.labels, return_counts=True)[1].tolist() == [1, 1, 1, 1]
    assert np.intersect1d(bench.query.paths.astype(str), bench.gallery.paths.astype(str)).size == 0
    _assert_disjoint(bench.train, bench.gallery)
    _assert_paths(bench.query)
    assert Path(bench.query.paths[0]).name == bench.query.meta["image_name"][0] + ".jpg"
    assert bench.train.meta["model_id"].tolist() == [45, 45, -1, -1, 7, 7]
    assert "color_id" not in bench.train.meta
    assert set(bench.gallery.meta["model_id"].tolist()) == {-1, 120}
    for size, ids in ((1600, 6), (2400, 8)):
        other = read_vehicleid(tmp_path, test_size=size)
        assert len(other.gallery) == ids and len(other.query) == ids


def test_vehicleid_accepts_the_archive_folder(tmp_path):
    make_vehicleid(tmp_path / "VehicleID_V1.0")
    assert len(read_vehicleid(tmp_path).train) == 6


def test_vehicleid_gallery_is_deterministic_from_seed(tmp_path):
    make_vehicleid(tmp_path)
    picks = {
        s: read_vehicleid(tmp_path, seed=s).gallery.meta["image_name"].tolist() for s in range(6)
    }
    assert picks[0] == read_vehicleid(tmp_path, seed=0).gallery.meta["image_name"].tolist()
    assert len({tuple(p) for p in picks.values()}) > 1


def test_vehicleid_errors(tmp_path):
    with pytest.raises(DataError, match="test_size must be one of 800, 1600, 2400"):
        read_vehicleid(tmp_path, test_size=1000)
    with pytest.raises(DataError, match="directory not found"):
        read_vehicleid(tmp_path / "nowhere")
    with pytest.raises(DataError, match="train_test_split directory not found"):
        read_vehicleid(tmp_path)
    make_vehicleid(tmp_path)
    split = tmp_path / "train_test_split"
    _rewrite_line(split / "test_list_800.txt", 2, "0000009")
    with pytest.raises(DataError, match=r"line 3 in .*test_list_800\.txt"):
        read_vehicleid(tmp_path)
    (split / "test_list_800.txt").unlink()
    with pytest.raises(DataError, match=r"list file not found: .*test_list_800\.txt"):
        read_vehicleid(tmp_path)
    (tmp_path / "image" / "0000001.jpg").unlink()
    with pytest.raises(
        DataError, match=r"1 of 6 images listed in .*train_list\.txt .* first: .*0000001\.jpg"
    ):
        read_vehicleid(tmp_path, test_size=1600)


def _assert_same_images(a, b) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.labels.tolist() == b.labels.tolist()
    assert a.paths.tolist() == b.paths.tolist()
    assert a.meta.keys() == b.meta.keys()
    for key in a.meta:
        np.testing.assert_array_equal(a.meta[key], b.meta[key])


def _assert_same_benchmark(a, b) -> None:
    assert a.name == b.name
    for split in ("train", "test", "query", "gallery"):
        _assert_same_images(getattr(a, split), getattr(b, split))


@pytest.mark.parametrize(
    "name, make, read",
    [
        ("cub", make_cub, read_cub),
        ("cars", make_cars, read_cars),
        ("sop", make_sop, read_sop),
        ("inshop", make_inshop, read_inshop),
        ("vehicleid", make_vehicleid, read_vehicleid),
    ],
)
def test_registered_datasets_load_with_their_readers(tmp_path, name, make, read):
    make(tmp_path)
    spec = get_dataset(name)
    assert spec.name == name and spec.root == "required"
    assert {"labels", "metadata"} <= spec.provides
    assert ("query_gallery" in spec.provides) == (name in ("inshop", "vehicleid"))
    section = SimpleNamespace(vehicleid=VehicleIDSection())
    bench = spec.load(section, tmp_path)
    # Against the fabricated tree, not against the reader itself (comparing the registry's loader
    # with the function it calls was true by construction). Catches a registry entry bound to
    # another set's reader (no images would be found), lost or duplicated images, and overlap.
    on_disk = {str(p.resolve()) for p in tmp_path.rglob("*") if p.suffix.lower() == ".jpg"}
    splits = [x for x in (bench.train, bench.test, bench.query, bench.gallery) if x is not None]
    read_paths = [str(Path(q).resolve()) for x in splits for q in x.paths]
    assert read_paths and set(read_paths) <= on_disk
    assert len(set(map(str, bench.train.paths))) == len(bench.train)
    evaluated = bench.test if bench.test is not None else bench.query
    assert not set(map(str, bench.train.paths)) & set(map(str, evaluated.paths))
    _assert_disjoint(bench.train, evaluated)
    assert bench.has_query_gallery == ("query_gallery" in spec.provides)


def test_vehicleid_section_picks_the_test_list(tmp_path):
    make_vehicleid(tmp_path)
    spec = get_dataset("vehicleid")
    assert spec.Config is VehicleIDSection and VehicleIDSection().test_size == 800
    for size in (1600, 2400):
        bench = spec.load(SimpleNamespace(vehicleid=VehicleIDSection(test_size=size)), tmp_path)
        _assert_same_benchmark(bench, read_vehicleid(tmp_path, test_size=size))
    with pytest.raises(ValueError):
        VehicleIDSection(test_size=1000)
    with pytest.raises(ValueError):
        VehicleIDSection(test_size=800, seed=1)
