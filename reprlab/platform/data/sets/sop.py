"""Stanford Online Products, from its official archive layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import (
    check_images,
    dataset_dir,
    image_set,
    join,
    read_table,
    require_disjoint,
)
from reprlab.platform.data.types import Benchmark, ImageSet

SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")


def _sop_split(base: Path, filename: str) -> ImageSet:
    table = read_table(base / filename, 4, "Stanford Online Products", header=SOP_HEADER)
    image_id = table.ints(0, "image_id")
    labels = table.ints(1, "class_id")
    super_class = table.ints(2, "super_class_id")
    rel = table.col(3)
    paths = join(base, rel)
    check_images(paths, table.path)
    folder = np.char.partition(rel, "/")[:, 0]
    meta = {
        "image_id": image_id,
        "super_class": super_class,
        "super_class_name": np.char.replace(folder, "_final", "").astype(object),
    }
    return image_set(paths, labels, meta, np.arange(len(table)))


def read_sop(root: str | Path) -> Benchmark:
    """Stanford Online Products from ``root/Stanford_Online_Products`` (or ``root`` itself).

    Splits from ``Ebay_train.txt`` / ``Ebay_test.txt``. Meta: ``image_id``, ``super_class``,
    ``super_class_name``.
    """
    base = dataset_dir(
        root, "Stanford_Online_Products", "Ebay_train.txt", "Stanford Online Products"
    )
    train = _sop_split(base, "Ebay_train.txt")
    test = _sop_split(base, "Ebay_test.txt")
    require_disjoint("sop", train.labels, test.labels)
    return Benchmark(name="sop", train=train, test=test)


register_dataset(DataSet(
    name="sop",
    description="Stanford Online Products: 22,634 products; the official Ebay_train / Ebay_test split",
    load=lambda section, root: read_sop(root), provides=frozenset({"labels", "metadata"}),
))
