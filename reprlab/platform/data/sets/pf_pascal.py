"""PF-PASCAL and PF-WILLOW (Ham et al., Proposal Flow): keypoint-annotated image pairs of one
category, in the layout of Rocco et al.'s releases (CNNGeometric, weakalign, NC-Net), which the
semantic-correspondence literature evaluates on.

Layout (facts from those repositories' download scripts and pair lists: ignacio-rocco/
cnngeometric_pytorch ``data/download_datasets.py``, ignacio-rocco/ncnet
``datasets/pf-pascal/image_pairs/*.csv``, ignacio-rocco/weakalign
``training_data/pf-pascal-flip/train_pairs.csv``):

- **PF-PASCAL**: ``<root>/PF-dataset-PASCAL/JPEGImages/*.jpg`` and pair lists with a header row
  ``source_image,target_image,class,XA,YA,XB,YB`` (test / val); ``XA`` ... hold one image's
  keypoint coordinates separated by semicolons (up to 20; the lists of a row have equal
  lengths). Training lists may carry no keypoints (``source_image,target_image,class,flip``,
  weakalign / NC-Net: weak supervision); ``flip`` = 1 means both images are used mirrored.
  ``class`` is 1-20 in :data:`PASCAL_CLASSES` order. Image paths are relative to the folder
  above ``PF-dataset-PASCAL``. The lists are looked up as ``{trn,train,val,test}_pairs_pf_pascal.csv``
  in ``PF-dataset-PASCAL/`` or ``<root>/``, or as NC-Net's ``<root>/image_pairs/{train,val,test}_pairs.csv``.
- **PF-WILLOW**: ``<root>/PF-dataset/<category>/*.png`` (10 sub-categories, e.g. ``car(G)``)
  and ``test_pairs_pf.csv`` (in ``PF-dataset/`` or ``<root>/``): a header row, then per pair the
  two image paths (relative to the folder above ``PF-dataset``) and 40 numbers: the 10 x, then
  the 10 y coordinates of image A, then the same for image B. Columns are read by position
  (as CNNGeometric's reader does); the category is the image's folder.

What the readers return (no image is decoded): ``pixels`` of the pair set are A's paths,
``target`` B's, ``labels`` the category (PF-PASCAL: its 1-20 ids; PF-WILLOW: 0-9 in
:data:`WILLOW_CLASSES` order), ``dense`` ``keypoints`` / ``target_keypoints`` (N x K x 2, NaN
beyond a pair's count; K = 20 or 10), meta ``category``, ``num_keypoints``, ``flip``, and
``box`` / ``target_box``: the bounding box (x0, y0, x1, y1) of A's / B's keypoints.

PCK reference (our reading, to be stated with any number): Rocco et al.'s ``pck_procedure="pf"``
takes the longest side of the keypoints' bounding box in the image where the error is measured
(``target_box`` when keypoints of A are transferred to B); SCNet's procedure (also in their
code) uses the image size after resizing to 224 x 224 instead. The annotated object boxes of
PF-PASCAL's ``Annotations/*.mat`` are not read. Coordinates are as listed (the annotations were
made in MATLAB, likely 1-based: half a pixel off the platform's centre-at-i+0.5 convention,
below PCK's resolution); images are not flipped here.

Splits: PF-PASCAL train / val / test from its three lists. PF-WILLOW has only test pairs; *our
choice*: its ``train`` split is the same pairs without keypoints (images and category: the
weak supervision), for runs that adapt on it; the standard protocol trains on PF-PASCAL and
evaluates that checkpoint on PF-WILLOW. Neither set declares ``paired``: the two images of a
pair differ in size (the platform's paired check wants equal sizes).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import check_images
from reprlab.platform.data.types import Benchmark, Dense, ImageSet, require_dir

PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                  "tvmonitor")
WILLOW_CLASSES = ("car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
                  "winebottle(M)", "winebottle(wC)", "winebottle(woC)")
PASCAL_KEYPOINTS = 20
WILLOW_KEYPOINTS = 10


def _base(root: str | Path, folder: str, what: str) -> Path:
    """``root/folder`` when present, else ``root`` when it is that folder."""
    root = require_dir(Path(root).expanduser().absolute(), what)
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder:
        return root
    raise DataError(f"data: {what}: folder {folder} not found in {root}")


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of every non-blank row of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = [(i + 1, row) for i, row in enumerate(csv.reader(f)) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"data: cannot read {path}: {exc}") from None
    if not lines:
        raise DataError(f"data: {path} is empty (expected a header row and one row per pair)")
    return [c.strip() for c in lines[0][1]], lines[1:]


def _fail(path: Path, line: int, why: str) -> None:
    raise DataError(f"data: malformed line {line} in {path}: {why}")


def _numbers(text: str, path: Path, line: int, column: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split(";") if v.strip()], dtype=np.float64)
    except ValueError:
        _fail(path, line, f"column {column} holds a value that is not a number: {text[:40]!r}")
    if not np.isfinite(values).all():
        _fail(path, line, f"column {column} holds a non-finite coordinate")
    return values


def _image_paths(base: Path, names: list[str]) -> np.ndarray:
    """Listed paths are relative to the folder above ``base`` when they start with its name."""
    out = [str((base.parent if Path(n).parts[:1] == (base.name,) else base) / n) for n in names]
    return np.array(out, dtype=object)


def _box(kp: np.ndarray) -> np.ndarray:
    """N x 4 (x0, y0, x1, y1) bounding boxes of N x K x 2 keypoints (NaN-padded)."""
    return np.concatenate([np.nanmin(kp, 1), np.nanmax(kp, 1)], 1).astype(np.float32)


def _pair_set(base: Path, listed_in: Path, a: list[str], b: list[str], labels: np.ndarray, names: np.ndarray,
              kp_a: np.ndarray | None, kp_b: np.ndarray | None, flip: np.ndarray) -> ImageSet:
    """The pair set; ``names``: the category name of every pair."""
    paths_a, paths_b = _image_paths(base, a), _image_paths(base, b)
    check_images(paths_a, listed_in)
    check_images(paths_b, listed_in)
    meta = {"category": names, "flip": flip}
    dense = {}
    if kp_a is not None:
        dense = {"keypoints": Dense("keypoints", kp_a.astype(np.float32)),
                 "target_keypoints": Dense("keypoints", kp_b.astype(np.float32))}
        meta.update(num_keypoints=(~np.isnan(kp_a[:, :, 0])).sum(1), box=_box(kp_a), target_box=_box(kp_b))
    return ImageSet(labels=labels, paths=paths_a, target=ImageSet(labels=labels, paths=paths_b), meta=meta, dense=dense)


# --------------------------------------------------------------------------------------------
# PF-PASCAL


def _pascal_list(root: Path, base: Path, split: str) -> Path:
    names = {"train": ("trn", "train"), "val": ("val",), "test": ("test",)}[split]
    candidates = [folder / f"{n}_pairs_pf_pascal.csv" for n in names for folder in (base, root)]
    candidates.append(root / "image_pairs" / f"{'train' if split == 'train' else split}_pairs.csv")
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"data: PF-PASCAL {split} pair list not found (looked for {', '.join(str(p) for p in candidates)})")


def read_pascal_pairs(base: Path, path: Path) -> ImageSet:
    """One PF-PASCAL pair list (see the module docstring)."""
    header, rows = _rows(path)
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in ("source_image", "target_image", "class") if c not in col]
    if missing:
        raise DataError(f"data: {path}: header lacks column(s) {', '.join(missing)} (found: {','.join(header)})")
    coords = ("XA", "YA", "XB", "YB")
    has_kp = all(c in col for c in coords)
    if any(c in col for c in coords) and not has_kp:
        raise DataError(f"data: {path}: header has only some of the keypoint columns XA, YA, XB, YB")
    a, b, labels, flip, kp_a, kp_b = [], [], [], [], [], []
    for line, row in rows:
        if len(row) != len(header):
            _fail(path, line, f"expected {len(header)} fields (as the header), got {len(row)}")
        cls = row[col["class"]].strip()
        if not cls.isdigit() or not 1 <= int(cls) <= len(PASCAL_CLASSES):
            _fail(path, line, f"class {cls!r} is not in 1-{len(PASCAL_CLASSES)}")
        f = row[col["flip"]].strip() if "flip" in col else "0"
        if f not in ("0", "1"):
            _fail(path, line, f"flip {f!r} is not 0 or 1")
        if has_kp:
            xa, ya, xb, yb = (_numbers(row[col[c]], path, line, c) for c in coords)
            n = len(xa)
            if not 0 < n <= PASCAL_KEYPOINTS or any(len(v) != n for v in (ya, xb, yb)):
                _fail(path, line, f"XA, YA, XB, YB hold {len(xa)}, {len(ya)}, {len(xb)}, {len(yb)} values "
                                  f"(expected the same number, 1-{PASCAL_KEYPOINTS})")
            pad = np.full((PASCAL_KEYPOINTS, 2), np.nan)
            kp_a.append(pad.copy())
            kp_b.append(pad.copy())
            kp_a[-1][:n] = np.stack([xa, ya], 1)
            kp_b[-1][:n] = np.stack([xb, yb], 1)
        a.append(row[col["source_image"]].strip())
        b.append(row[col["target_image"]].strip())
        labels.append(int(cls))
        flip.append(int(f))
    if not a:
        raise DataError(f"data: {path} lists no pairs")
    labels_ = np.array(labels, np.int64)
    return _pair_set(base, path, a, b, labels_, np.array(PASCAL_CLASSES, dtype=object)[labels_ - 1],
                     np.stack(kp_a) if has_kp else None, np.stack(kp_b) if has_kp else None, np.array(flip, np.int64))


def read_pf_pascal(root: str | Path) -> Benchmark:
    """PF-PASCAL from ``root`` (holding ``PF-dataset-PASCAL/``, or being it)."""
    base = _base(root, "PF-dataset-PASCAL", "PF-PASCAL")
    top = Path(root).expanduser().absolute()
    splits = {s: read_pascal_pairs(base, _pascal_list(top, base, s)) for s in ("train", "val", "test")}
    for s in ("val", "test"):
        if "keypoints" not in splits[s].dense:
            raise DataError(f"data: the PF-PASCAL {s} pair list has no keypoint columns XA, YA, XB, YB")
    return Benchmark("pf_pascal", splits["train"], test=splits["test"], val=splits["val"])


# --------------------------------------------------------------------------------------------
# PF-WILLOW


def read_pf_willow(root: str | Path) -> Benchmark:
    """PF-WILLOW from ``root`` (holding ``PF-dataset/``, or being it)."""
    base = _base(root, "PF-dataset", "PF-WILLOW")
    top = Path(root).expanduser().absolute()
    path = next((p for p in (base / "test_pairs_pf.csv", top / "test_pairs_pf.csv") if p.is_file()), None)
    if path is None:
        raise DataError(f"data: PF-WILLOW pair list not found (looked for {base / 'test_pairs_pf.csv'}, "
                        f"{top / 'test_pairs_pf.csv'})")
    header, rows = _rows(path)
    width = 2 + 4 * WILLOW_KEYPOINTS
    a, b, labels, coords = [], [], [], []
    for line, row in rows:
        if len(row) != width:
            _fail(path, line, f"expected {width} fields (two images, then 10 x and 10 y of each), got {len(row)}")
        folder = Path(row[0].strip()).parent.name
        if folder not in WILLOW_CLASSES or Path(row[1].strip()).parent.name != folder:
            _fail(path, line, f"images {row[0].strip()!r}, {row[1].strip()!r}: not both in one of the folders "
                              f"{', '.join(WILLOW_CLASSES)}")
        try:
            values = np.array([float(v) for v in row[2:]])
        except ValueError:
            _fail(path, line, "a keypoint coordinate is not a number")
        if not np.isfinite(values).all():
            _fail(path, line, "a keypoint coordinate is not finite")
        a.append(row[0].strip())
        b.append(row[1].strip())
        labels.append(WILLOW_CLASSES.index(folder))
        coords.append(values.reshape(4, WILLOW_KEYPOINTS))  # xA, yA, xB, yB
    if not a:
        raise DataError(f"data: {path} lists no pairs")
    c = np.stack(coords)
    kp_a, kp_b = np.stack([c[:, 0], c[:, 1]], -1), np.stack([c[:, 2], c[:, 3]], -1)
    labels_ = np.array(labels, np.int64)
    flip = np.zeros(len(a), np.int64)
    names = np.array(WILLOW_CLASSES, dtype=object)[labels_]
    test = _pair_set(base, path, a, b, labels_, names, kp_a, kp_b, flip)
    train = _pair_set(base, path, a, b, labels_, names, None, None, flip)
    return Benchmark("pf_willow", train, test=test)


register_dataset(DataSet(
    name="pf_pascal",
    description="PF-PASCAL: keypoint-annotated same-category image pairs of 20 PASCAL classes "
                "(Rocco et al.'s train / val / test pair lists)",
    load=lambda section, root: read_pf_pascal(root),
    provides=frozenset({"labels", "metadata", "keypoints"}),
))

register_dataset(DataSet(
    name="pf_willow",
    description="PF-WILLOW: 900 keypoint-annotated pairs of 10 object sub-categories (test only; train = the "
                "same pairs without keypoints)",
    load=lambda section, root: read_pf_willow(root),
    provides=frozenset({"labels", "metadata", "keypoints"}),
))
