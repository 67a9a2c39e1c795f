"""CUB-200-2011 (Caltech-UCSD Birds), from its official archive layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import (
    check_images,
    class_split,
    dataset_dir,
    first_duplicate,
    join,
    lookup,
    read_table,
)
from reprlab.platform.data.types import Benchmark

CUB_TRAIN_CLASSES = 100  # CUB-200-2011: classes 1-100 train, 101-200 test


def read_cub(root: str | Path) -> Benchmark:
    """CUB-200-2011 from ``root/CUB_200_2011`` (or ``root`` being that folder).

    Train = classes 1-100, test = classes 101-200. Meta: ``image_id``, ``class_name``.
    """
    base = dataset_dir(root, "CUB_200_2011", "images.txt", "CUB-200-2011")
    images = read_table(base / "images.txt", 2, "CUB-200-2011")
    assigned = read_table(base / "image_class_labels.txt", 2, "CUB-200-2011")
    classes = read_table(base / "classes.txt", 2, "CUB-200-2011")

    image_id = images.ints(0, "image id")
    first_duplicate(images, image_id, "image id")
    labels = lookup(assigned.ints(0, "image id"), assigned.ints(1, "class id"), image_id)
    if labels is None:
        raise DataError(f"data: {images.path} and {assigned.path} list different image ids")
    class_id = classes.ints(0, "class id")
    names = lookup(class_id, classes.col(1), labels)
    if names is None:
        unknown = np.setdiff1d(labels, class_id)[0]
        raise DataError(f"data: class id {unknown} of {assigned.path} is not in {classes.path}")

    paths = join(base / "images", images.col(1))
    check_images(paths, images.path)
    meta = {"image_id": image_id, "class_name": names.astype(object)}
    return class_split("cub", paths, labels, meta, CUB_TRAIN_CLASSES)


register_dataset(DataSet(
    name="cub", description="CUB-200-2011: 200 bird species; classes 1-100 train, 101-200 test",
    load=lambda section, root: read_cub(root), provides=frozenset({"labels", "metadata"}),
))
