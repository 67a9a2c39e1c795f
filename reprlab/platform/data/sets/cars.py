"""CARS196 (Stanford Cars), from its all-in-one annotation file ``cars_annos.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import check_images, class_split, join, require_file
from reprlab.platform.data.types import Benchmark, require_dir

CARS_TRAIN_CLASSES = 98  # CARS196: classes 1-98 train, 99-196 test
CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    require_file(path, "CARS196 annotation")
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
    paths = join(root, rel)
    check_images(paths, path)
    meta = {
        "image_id": np.arange(1, len(ann) + 1, dtype=np.int64),
        "class_name": class_names[labels - 1].astype(object),
        "bbox": bbox,
        "official_test": _mat_field(path, ann, "test", np.int64).astype(bool),
    }
    return class_split("cars", paths, labels, meta, CARS_TRAIN_CLASSES)


register_dataset(DataSet(
    name="cars", description="CARS196: 196 car models; classes 1-98 train, 99-196 test",
    load=lambda section, root: read_cars(root), provides=frozenset({"labels", "metadata"}),
))
