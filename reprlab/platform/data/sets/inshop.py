"""In-shop Clothes Retrieval (DeepFashion), from its official archive layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import (
    Table,
    check_header,
    check_images,
    first_dir,
    image_set,
    join,
    parse_rows,
    read_lines,
    require_disjoint,
)
from reprlab.platform.data.types import Benchmark, require_dir

INSHOP_STATUSES = ("train", "query", "gallery")
INSHOP_HEADER = ("image_name", "item_id", "evaluation_status")


def _inshop_table(path: Path) -> Table:
    lines = read_lines(path, "In-shop Clothes")
    declared = lines[0].strip() if lines else ""
    if not declared.isdigit():
        raise DataError(
            f"data: malformed line 1 in {path}: expected the image count, got {declared!r}"
        )
    check_header(path, lines, 1, INSHOP_HEADER)
    table = parse_rows(path, lines[2:], 3, first_line=3)
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


def _inshop_labels(table: Table) -> np.ndarray:
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
    paths = join(first_dir(root / "img", root / "Img" / "img").parent, rel)
    check_images(paths, list_path)
    parent = np.char.rpartition(np.char.rpartition(rel, "/")[:, 0], "/")[:, 0]
    meta = {
        "image_name": rel.astype(object),
        "item_id": table.col(1).astype(object),
        "category": np.char.partition(parent, "/")[:, 2].astype(object),
    }
    status = table.col(2)
    sets = {
        s: image_set(paths, labels, meta, np.flatnonzero(status == s)) for s in INSHOP_STATUSES
    }
    require_disjoint(
        "inshop", sets["train"].labels, np.union1d(sets["query"].labels, sets["gallery"].labels)
    )
    return Benchmark(
        name="inshop", train=sets["train"], query=sets["query"], gallery=sets["gallery"]
    )


register_dataset(DataSet(
    name="inshop",
    description="In-shop Clothes Retrieval: 7,982 clothing items; 3,997 train, "
                "query/gallery over the 3,985 others (the official partition)",
    load=lambda section, root: read_inshop(root),
    provides=frozenset({"labels", "metadata", "query_gallery"}),
))
