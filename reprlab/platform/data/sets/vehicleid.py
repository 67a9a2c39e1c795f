"""PKU VehicleID, from its official archive layout; ``data.vehicleid.test_size`` picks the test list."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.core.errors import DataError
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.sets.listfiles import (
    check_images,
    first_dir,
    image_set,
    join,
    positions,
    read_table,
    require_disjoint,
)
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir

VEHICLEID_TEST_SIZES = (800, 1600, 2400)


class VehicleIDSection(Section):
    """PKU VehicleID settings."""

    test_size: Literal[800, 1600, 2400] = Field(
        800, description="test split size: vehicles in test_list_{800,1600,2400}.txt"
    )


def _vehicle_attributes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Optional ``attribute/{model,color}_attr.txt``: meta name -> (vehicle ids, values)."""
    found = {}
    for name in ("model", "color"):
        path = root / "attribute" / f"{name}_attr.txt"
        if path.is_file():
            table = read_table(path, 2, "PKU VehicleID attribute")
            found[f"{name}_id"] = (table.ints(0, "vehicle id"), table.ints(1, f"{name} id"))
    return found


def _vehicle_split(root: Path, path: Path, attributes: dict) -> ImageSet:
    table = read_table(path, 2, "PKU VehicleID")
    labels = table.ints(1, "vehicle id")
    names = table.col(0)
    paths = join(root / "image", np.char.add(names, ".jpg"))
    check_images(paths, path)
    meta = {"image_name": names.astype(object)}
    for key, (ids, values) in attributes.items():
        pos, found = positions(ids, labels)
        meta[key] = np.where(found, values[pos], -1)
    return image_set(paths, labels, meta, np.arange(len(table)))


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
    root = first_dir(root / "VehicleID_V1.0", root)
    split_dir = require_dir(root / "train_test_split", "PKU VehicleID train_test_split")
    attributes = _vehicle_attributes(root)
    train = _vehicle_split(root, split_dir / "train_list.txt", attributes)
    test = _vehicle_split(root, split_dir / f"test_list_{test_size}.txt", attributes)
    require_disjoint("vehicleid", train.labels, test.labels)
    gallery = one_per_label(test.labels, seed)
    query = np.setdiff1d(np.arange(len(test)), gallery, assume_unique=True)
    return Benchmark(
        name="vehicleid", train=train, query=test.subset(query), gallery=test.subset(gallery)
    )


register_dataset(DataSet(
    name="vehicleid",
    description="PKU VehicleID: 26,267 vehicles; 13,164 train, query/gallery over a test list of "
                "800, 1,600 or 2,400 vehicles (gallery: one image per vehicle)",
    load=lambda section, root: read_vehicleid(root, test_size=section.vehicleid.test_size),
    provides=frozenset({"labels", "metadata", "query_gallery"}),
    Config=VehicleIDSection,
))
