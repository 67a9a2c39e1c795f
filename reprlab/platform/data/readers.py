"""Readers for the real deep-metric-learning benchmarks, from their official archive layouts.

Each reader returns a :class:`Benchmark` whose image sets hold absolute file paths, the data set's
own integer class ids, and per-image metadata. Nothing is decoded: a reader only parses the list
files, checks that every listed image exists, and applies the benchmark's standard split
(class-disjoint halves, or the data set's own train/query/gallery lists). Anything wrong with the
files on disk is one :class:`DataError` line naming the file (and the line, for a malformed list).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprlab.platform.data.types import Benchmark, ImageSet, require_dir
from reprlab.platform.errors import DataError

CUB_TRAIN_CLASSES = 100  # CUB-200-2011: classes 1-100 train, 101-200 test
CARS_TRAIN_CLASSES = 98  # CARS196: classes 1-98 train, 99-196 test
VEHICLEID_TEST_SIZES = (800, 1600, 2400)
INSHOP_STATUSES = ("train", "query", "gallery")
SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")
INSHOP_HEADER = ("image_name", "item_id", "evaluation_status")
CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


# --------------------------------------------------------------------------------------------
# list-file parsing


@dataclass(frozen=True)
class _Table:
    """The whitespace-separated rows of a list file, with their 1-based line numbers."""

    path: Path
    rows: np.ndarray  # (n, ncols) str
    lines: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.rows)

    def col(self, i: int) -> np.ndarray:
        return self.rows[:, i]

    def ints(self, i: int, what: str) -> np.ndarray:
        """Column ``i`` as int64; a non-integer names the file and line."""
        col = self.col(i)
        bad = np.flatnonzero(~np.char.isdigit(col))
        if bad.size:
            self.fail(bad[0], f"{what} {str(col[bad[0]])!r} is not a non-negative integer")
        return col.astype(np.int64)

    def fail(self, row: int, why: str) -> None:
        raise DataError(f"data: malformed line {self.lines[row]} in {self.path}: {why}")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"data: {what} list file not found: {path}")
    return path


def _read_lines(path: Path, what: str) -> list[str]:
    _require_file(path, what)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data: cannot read {path}: {exc}") from None


def _parse_rows(path: Path, lines: Sequence[str], ncols: int, first_line: int = 1) -> _Table:
    """The ``ncols`` fields of each non-blank line; ``lines`` are numbered from ``first_line``."""
    fields = [line.split() for line in lines]
    counts = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
    numbers = np.arange(first_line, first_line + len(fields), dtype=np.int64)
    keep = counts > 0
    bad = np.flatnonzero(keep & (counts != ncols))
    if bad.size:
        i = bad[0]
        raise DataError(
            f"data: malformed line {numbers[i]} in {path}: expected {ncols} fields, "
            f"got {counts[i]}: {lines[i].strip()!r}"
        )
    rows = np.array(list(itertools.compress(fields, keep)), dtype=str).reshape(-1, ncols)
    return _Table(path, rows, numbers[keep])


def _read_table(
    path: Path, ncols: int, what: str, *, header: Sequence[str] | None = None
) -> _Table:
    """The rows of a list file, after checking its header line if it has one."""
    lines = _read_lines(path, what)
    if header is None:
        return _parse_rows(path, lines, ncols)
    _check_header(path, lines, 0, header)
    return _parse_rows(path, lines[1:], ncols, first_line=2)


def _check_header(path: Path, lines: Sequence[str], index: int, header: Sequence[str]) -> None:
    found = lines[index].split() if index < len(lines) else []
    if tuple(found) != tuple(header):
        raise DataError(
            f"data: malformed line {index + 1} in {path}: expected header {' '.join(header)!r}, "
            f"got {' '.join(found)!r}"
        )


# --------------------------------------------------------------------------------------------
# paths, existence and splits


def _dataset_dir(root: str | Path, folder: str, marker: str, what: str) -> Path:
    """``root/folder`` when present, else ``root`` itself when it is that folder."""
    root = require_dir(Path(root).expanduser().absolute(), what)
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (root / marker).exists():
        return root
    return require_dir(root / folder, what)


def _join(base: Path, rel: np.ndarray) -> np.ndarray:
    """Absolute paths ``base/rel`` as an object array of str."""
    rel = np.asarray(rel, dtype=str)
    return np.char.add(str(base) + os.sep, rel).astype(object)


def _check_images(paths: np.ndarray, listed_in: Path) -> None:
    """Raise one DataError if any listed image file is absent (one directory scan per folder)."""
    present: set[str] = set()
    for folder in set(map(os.path.dirname, paths)):
        try:
            with os.scandir(folder) as entries:
                present.update(e.path for e in entries)
        except OSError:
            continue
    absent = np.fromiter((p not in present for p in paths), dtype=bool, count=len(paths))
    missing = np.flatnonzero(absent)
    if missing.size:
        raise DataError(
            f"data: {missing.size} of {len(paths)} images listed in {listed_in} are missing, "
            f"first: {paths[missing[0]]}"
        )


def _image_set(
    paths: np.ndarray, labels: np.ndarray, meta: dict[str, np.ndarray], index: np.ndarray
) -> ImageSet:
    return ImageSet(
        labels=np.asarray(labels, dtype=np.int64)[index],
        paths=paths[index],
        meta={k: v[index] for k, v in meta.items()},
    )


def _class_split(
    name: str, paths: np.ndarray, labels: np.ndarray, meta: dict[str, np.ndarray], last_train: int
) -> Benchmark:
    """Class-disjoint benchmark: classes ``<= last_train`` train, the others test."""
    is_train = labels <= last_train
    for split, mask in (("train", is_train), ("test", ~is_train)):
        if not mask.any():
            raise DataError(
                f"data: {name} has no {split} images (train = classes 1-{last_train}, "
                f"test = the classes above); is the data set complete?"
            )
    return Benchmark(
        name=name,
        train=_image_set(paths, labels, meta, np.flatnonzero(is_train)),
        test=_image_set(paths, labels, meta, np.flatnonzero(~is_train)),
    )


def _require_disjoint(name: str, train: np.ndarray, test: np.ndarray) -> None:
    shared = np.intersect1d(train, test)
    if shared.size:
        raise DataError(
            f"data: {name} train and test share {shared.size} classes (e.g. {shared[0]}); "
            f"the protocol needs class-disjoint splits"
        )


def _positions(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query, an index into ``keys`` holding it, and whether it was found at all."""
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    order = np.argsort(keys, kind="stable")
    pos = order[np.clip(np.searchsorted(keys, query, sorter=order), 0, len(keys) - 1)]
    return pos, keys[pos] == query


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray | None:
    """``values`` at the positions of ``query`` in ``keys``; None if some query is not a key."""
    pos, found = _positions(keys, query)
    return values[pos] if found.all() else None


def _first_duplicate(table: _Table, values: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(values, return_counts=True)
    dup = np.flatnonzero(counts > 1)
    if dup.size:
        rows = np.flatnonzero(values == uniq[dup[0]])
        table.fail(rows[1], f"duplicate {what} {uniq[dup[0]]}")


# --------------------------------------------------------------------------------------------
# CUB-200-2011


def read_cub(root: str | Path) -> Benchmark:
    """CUB-200-2011 from ``root/CUB_200_2011`` (or ``root`` being that folder).

    Train = classes 1-100, test = classes 101-200. Meta: ``image_id``, ``class_name``.
    """
    base = _dataset_dir(root, "CUB_200_2011", "images.txt", "CUB-200-2011")
    images = _read_table(base / "images.txt", 2, "CUB-200-2011")
    assigned = _read_table(base / "image_class_labels.txt", 2, "CUB-200-2011")
    classes = _read_table(base / "classes.txt", 2, "CUB-200-2011")

    image_id = images.ints(0, "image id")
    _first_duplicate(images, image_id, "image id")
    labels = _lookup(assigned.ints(0, "image id"), assigned.ints(1, "class id"), image_id)
    if labels is None:
        raise DataError(f"data: {images.path} and {assigned.path} list different image ids")
    class_id = classes.ints(0, "class id")
    names = _lookup(class_id, classes.col(1), labels)
    if names is None:
        unknown = np.setdiff1d(labels, class_id)[0]
        raise DataError(f"data: class id {unknown} of {assigned.path} is not in {classes.path}")

    paths = _join(base / "images", images.col(1))
    _check_images(paths, images.path)
    meta = {"image_id": image_id, "class_name": names.astype(object)}
    return _class_split("cub", paths, labels, meta, CUB_TRAIN_CLASSES)


# --------------------------------------------------------------------------------------------
# CARS196


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    _require_file(path, "CARS196 annotation")
    try:
        return loadmat(str(path), squeeze_me=True)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"data: cannot read {path}: {exc}") from None


def _mat_field(path: Path, record: np.ndarray, field: str, dtype: type) -> np.ndarray:
    try:
        return np.asarray(record[field].tolist(), dtype=dtype).reshape(len(record))
    except (ValueError, TypeError) as exc:
        raise DataError(f"data: malformed field {field!r} in {path}: {exc}") from None


def read_cars(root: str | Path) -> Benchmark:
    """CARS196 from ``root/cars_annos.mat`` and ``root/car_ims/`` (the all-in-one annotation file).

    Train = classes 1-98, test = classes 99-196; the file's own ``test`` flag (the classification
    split) is kept as meta ``official_test``, with ``image_id``, ``class_name`` and ``bbox``.
    """
    root = require_dir(Path(root).expanduser().absolute(), "CARS196")
    path = root / "cars_annos.mat"
    mat = _load_mat(path)
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise DataError(f"data: {path} has no {key!r} variable")
    ann = np.atleast_1d(mat["annotations"])
    missing = [f for f in CARS_FIELDS if ann.dtype.names is None or f not in ann.dtype.names]
    if missing:
        raise DataError(f"data: {path} annotations lack the field(s) {', '.join(missing)}")
    class_names = np.atleast_1d(mat["class_names"]).astype(str)

    labels = _mat_field(path, ann, "class", np.int64)
    bad = np.flatnonzero((labels < 1) | (labels > len(class_names)))
    if bad.size:
        raise DataError(
            f"data: annotation {bad[0] + 1} in {path} has class {labels[bad[0]]}, "
            f"outside 1-{len(class_names)}"
        )
    rel = _mat_field(path, ann, "relative_im_path", str)
    bbox = np.stack([_mat_field(path, ann, f, np.int64) for f in CARS_FIELDS[1:5]], axis=1)
    paths = _join(root, rel)
    _check_images(paths, path)
    meta = {
        "image_id": np.arange(1, len(ann) + 1, dtype=np.int64),
        "class_name": class_names[labels - 1].astype(object),
        "bbox": bbox,
        "official_test": _mat_field(path, ann, "test", np.int64).astype(bool),
    }
    return _class_split("cars", paths, labels, meta, CARS_TRAIN_CLASSES)


# --------------------------------------------------------------------------------------------
# Stanford Online Products


def _sop_split(base: Path, filename: str) -> ImageSet:
    table = _read_table(base / filename, 4, "Stanford Online Products", header=SOP_HEADER)
    image_id = table.ints(0, "image_id")
    labels = table.ints(1, "class_id")
    super_class = table.ints(2, "super_class_id")
    rel = table.col(3)
    paths = _join(base, rel)
    _check_images(paths, table.path)
    folder = np.char.partition(rel, "/")[:, 0]
    meta = {
        "image_id": image_id,
        "super_class": super_class,
        "super_class_name": np.char.replace(folder, "_final", "").astype(object),
    }
    return _image_set(paths, labels, meta, np.arange(len(table)))


def read_sop(root: str | Path) -> Benchmark:
    """Stanford Online Products from ``root/Stanford_Online_Products`` (or ``root`` itself).

    Splits from ``Ebay_train.txt`` / ``Ebay_test.txt``. Meta: ``image_id``, ``super_class``,
    ``super_class_name``.
    """
    base = _dataset_dir(
        root, "Stanford_Online_Products", "Ebay_train.txt", "Stanford Online Products"
    )
    train = _sop_split(base, "Ebay_train.txt")
    test = _sop_split(base, "Ebay_test.txt")
    _require_disjoint("sop", train.labels, test.labels)
    return Benchmark(name="sop", train=train, test=test)


# --------------------------------------------------------------------------------------------
# In-shop Clothes Retrieval


def _first_dir(*candidates: Path) -> Path:
    return next((p for p in candidates if p.is_dir()), candidates[0])


def _inshop_table(path: Path) -> _Table:
    lines = _read_lines(path, "In-shop Clothes")
    declared = lines[0].strip() if lines else ""
    if not declared.isdigit():
        raise DataError(
            f"data: malformed line 1 in {path}: expected the image count, got {declared!r}"
        )
    _check_header(path, lines, 1, INSHOP_HEADER)
    table = _parse_rows(path, lines[2:], 3, first_line=3)
    if int(declared) != len(table):
        raise DataError(f"data: {path} declares {declared} images but lists {len(table)}")
    status = table.col(2)
    bad = np.flatnonzero(~np.isin(status, INSHOP_STATUSES))
    if bad.size:
        table.fail(
            bad[0],
            f"evaluation_status {str(status[bad[0]])!r} is not one of {', '.join(INSHOP_STATUSES)}",
        )
    return table


def _inshop_labels(table: _Table) -> np.ndarray:
    """``id_00000002`` -> 2."""
    item = table.col(1)
    digits = np.char.partition(item, "_")[:, 2]
    bad = np.flatnonzero(~(np.char.startswith(item, "id_") & np.char.isdigit(digits)))
    if bad.size:
        table.fail(bad[0], f"item_id {str(item[bad[0]])!r} is not of the form id_<number>")
    return digits.astype(np.int64)


def read_inshop(root: str | Path) -> Benchmark:
    """In-shop Clothes Retrieval from ``root/list_eval_partition.txt`` and ``root/img/``.

    Also accepts the DeepFashion folder layout (``Eval/list_eval_partition.txt``, ``Img/img/``).
    Returns train plus query/gallery. Labels are the item ids' numbers; meta ``image_name``,
    ``item_id``, ``category`` (e.g. ``WOMEN/Dresses``).
    """
    root = require_dir(Path(root).expanduser().absolute(), "In-shop Clothes")
    list_path = root / "list_eval_partition.txt"
    if not list_path.is_file() and (root / "Eval" / list_path.name).is_file():
        list_path = root / "Eval" / list_path.name
    table = _inshop_table(list_path)
    labels = _inshop_labels(table)
    rel = table.col(0)
    paths = _join(_first_dir(root / "img", root / "Img" / "img").parent, rel)
    _check_images(paths, list_path)
    parent = np.char.rpartition(np.char.rpartition(rel, "/")[:, 0], "/")[:, 0]
    meta = {
        "image_name": rel.astype(object),
        "item_id": table.col(1).astype(object),
        "category": np.char.partition(parent, "/")[:, 2].astype(object),
    }
    status = table.col(2)
    sets = {
        s: _image_set(paths, labels, meta, np.flatnonzero(status == s)) for s in INSHOP_STATUSES
    }
    _require_disjoint(
        "inshop", sets["train"].labels, np.union1d(sets["query"].labels, sets["gallery"].labels)
    )
    return Benchmark(
        name="inshop", train=sets["train"], query=sets["query"], gallery=sets["gallery"]
    )


# --------------------------------------------------------------------------------------------
# PKU VehicleID


def _vehicle_attributes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Optional ``attribute/{model,color}_attr.txt``: meta name -> (vehicle ids, values)."""
    found = {}
    for name in ("model", "color"):
        path = root / "attribute" / f"{name}_attr.txt"
        if path.is_file():
            table = _read_table(path, 2, "PKU VehicleID attribute")
            found[f"{name}_id"] = (table.ints(0, "vehicle id"), table.ints(1, f"{name} id"))
    return found


def _vehicle_split(root: Path, path: Path, attributes: dict) -> ImageSet:
    table = _read_table(path, 2, "PKU VehicleID")
    labels = table.ints(1, "vehicle id")
    names = table.col(0)
    paths = _join(root / "image", np.char.add(names, ".jpg"))
    _check_images(paths, path)
    meta = {"image_name": names.astype(object)}
    for key, (ids, values) in attributes.items():
        pos, found = _positions(ids, labels)
        meta[key] = np.where(found, values[pos], -1)
    return _image_set(paths, labels, meta, np.arange(len(table)))


def one_per_label(labels: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices of one randomly chosen sample per label, deterministic from ``seed``."""
    labels = np.asarray(labels)
    perm = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[perm], return_index=True)
    return np.sort(perm[first])


def read_vehicleid(root: str | Path, test_size: int = 800, seed: int = 0) -> Benchmark:
    """PKU VehicleID from ``root/train_test_split/`` and ``root/image/`` (or the same inside
    ``root/VehicleID_V1.0/``, as the archive unpacks).

    ``test_size`` picks ``test_list_{800,1600,2400}.txt``; the gallery holds one random image
    per vehicle id (deterministic from ``seed``), the query the rest. Meta: ``image_name``, and
    ``model_id`` / ``color_id`` (-1 where unknown) when ``attribute/`` has them.
    """
    if test_size not in VEHICLEID_TEST_SIZES:
        raise DataError(
            f"data: VehicleID test_size must be one of "
            f"{', '.join(map(str, VEHICLEID_TEST_SIZES))}, got {test_size!r}"
        )
    root = require_dir(Path(root).expanduser().absolute(), "PKU VehicleID")
    root = _first_dir(root / "VehicleID_V1.0", root)
    split_dir = require_dir(root / "train_test_split", "PKU VehicleID train_test_split")
    attributes = _vehicle_attributes(root)
    train = _vehicle_split(root, split_dir / "train_list.txt", attributes)
    test = _vehicle_split(root, split_dir / f"test_list_{test_size}.txt", attributes)
    _require_disjoint("vehicleid", train.labels, test.labels)
    gallery = one_per_label(test.labels, seed)
    query = np.setdiff1d(np.arange(len(test)), gallery, assume_unique=True)
    return Benchmark(
        name="vehicleid", train=train, query=test.subset(query), gallery=test.subset(gallery)
    )


READERS: dict[str, Callable[..., Benchmark]] = {
    "cub": read_cub,
    "cars": read_cars,
    "sop": read_sop,
    "inshop": read_inshop,
    "vehicleid": read_vehicleid,
}
