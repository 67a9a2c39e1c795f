"""Afifi et al.'s exposure data (rendered MIT-Adobe FiveK, CVPR 2021) in its released layout.

``data.root`` holds ``training|validation/{INPUT_IMAGES,GT_IMAGES}`` and ``testing/INPUT_IMAGES``
with ``testing/expert_{a..e}_testing_set``. An input ``<name>_<EV>.JPG`` (EV suffixes ``N1.5 N1 0
P1 P1.5``) maps to ``<name>.jpg`` by stripping the last ``_`` token (the code's ``gtRead.m``); the
training target is ``GT_IMAGES`` (Expert C [unverified]), the test target Expert C, and the test
split carries every expert's file in ``meta`` (``expert_a`` ... ``expert_e``). The validation
folder, when present, is the set's own validation split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.camera import EV_NAMES, EVS
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by lower-cased stem."""
    return {p.stem.lower(): p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _ev_of(stem: str, where: Path) -> tuple[str, float]:
    """(scene name, EV) of an input stem ``<name>_<EV>`` (the last ``_`` token is the EV)."""
    name, sep, suffix = stem.rpartition("_")
    names = [n.lower() for n in EV_NAMES]
    if not sep or suffix.lower() not in names:
        raise DataError(f"data: {where}: expected <name>_<EV> with EV one of {', '.join(EV_NAMES)}")
    return name, EVS[names.index(suffix.lower())]


def read_fivek_split(root: Path, split: str, targets: dict[str, str]) -> ImageSet:
    """Inputs of ``root/split/INPUT_IMAGES`` paired with targets by scene name; ``targets``: meta
    name -> folder under ``root/split`` (the first is the training target)."""
    inputs = _images_in(require_dir(root / split / "INPUT_IMAGES", f"exposure_fivek {split} INPUT_IMAGES"))
    if not inputs:
        raise DataError(f"data: no images in {root / split / 'INPUT_IMAGES'}")
    folders = {k: _images_in(require_dir(root / split / f, f"exposure_fivek {split} {f}")) for k, f in targets.items()}
    stems = sorted(inputs)
    scenes, evs = zip(*(_ev_of(s, inputs[s]) for s in stems))
    scene_names = sorted(set(scenes))
    columns = {}
    for key, files in folders.items():
        missing = [sc for sc in scenes if sc.lower() not in files]
        if missing:
            raise DataError(f"data: {root / split / targets[key]} has no image for scene {missing[0]} "
                            f"(input {inputs[stems[scenes.index(missing[0])]].name})")
        columns[key] = np.array([str(files[sc.lower()]) for sc in scenes])
    first = next(iter(targets))
    meta = {"scene": np.array([scene_names.index(s) for s in scenes]), "ev": np.array(evs, np.float64),
            **{k: v for k, v in columns.items() if k != "target"}}
    return ImageSet(paths=np.array([str(inputs[s]) for s in stems]), target=ImageSet(paths=columns[first]), meta=meta)


def load_exposure_fivek(root: Path) -> Benchmark:
    root = require_dir(Path(root), "exposure_fivek (data.root)")
    experts = {f"expert_{k}": f"expert_{k}_testing_set" for k in "abcde"}
    train = read_fivek_split(root, "training", {"target": "GT_IMAGES"})
    val = read_fivek_split(root, "validation", {"target": "GT_IMAGES"}) if (root / "validation").is_dir() else None
    test = read_fivek_split(root, "testing", {"target": "expert_c_testing_set", **experts})
    return Benchmark("exposure_fivek", train, test=test, val=val)


register_dataset(DataSet(
    name="exposure_fivek",
    description="exposure: Afifi et al.'s rendered MIT-Adobe FiveK (INPUT_IMAGES / GT_IMAGES, expert_*_testing_set)",
    load=lambda section, root: load_exposure_fivek(root),
    provides=frozenset({"paired", "metadata"}),
    root="required",
))
