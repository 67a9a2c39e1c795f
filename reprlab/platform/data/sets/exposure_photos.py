"""Exposure correction data: the embedded ``exposure_photos`` and a reader for the real data's
layout, ``exposure_fivek`` (Afifi et al., CVPR 2021).

``exposure_photos``: the 14 photos that ship inside scikit-image and scikit-learn, split by scene
(val: chelsea, coins; test: coffee, rocket, both motorcycle views, moon; train: the other eight),
each taken as Expert C's rendering of a scene and re-photographed by the simulated camera of
:mod:`reprlab.platform.data.camera` at EV -1.5, -1, 0, +1, +1.5 with a per-scene white balance.
Every split holds 5 samples per scene: the camera's 8-bit image (``pixels``), Expert C as the
target, and in ``meta`` the EV, the scene, the valid height and width (images are resized to
``side`` on their longest side, then replicate-padded to ``side`` x ``side``) and the five experts
(``expert_a`` ... ``expert_e``, uint8 images). Deterministic from ``data.exposure_photos.seed``;
built in memory in about a second. With eight training scenes, numbers are relative to the
baselines, not absolute. Training batches are rendered from the training scenes on the fly by the
method (``method.inputs=simulated``); the stored pairs serve evaluation and ``inputs=stored``.
The real data's reader is ``exposure_fivek`` (``sets/exposure_fivek.py``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import Section
from reprlab.platform.data.camera import EVS, EXPERTS, expose, render_expert, scene_of_photo
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, ImageSet

SPLITS = {
    "train": ("astronaut", "immunohistochemistry", "camera", "brick", "grass", "gravel", "china", "flower"),
    "val": ("chelsea", "coins"),
    "test": ("coffee", "rocket", "motorcycle_left", "motorcycle_right", "moon"),
}
SCENE_IDS = {name: i for i, name in enumerate(n for names in SPLITS.values() for n in names)}


class ExposurePhotosSection(Section):
    """The embedded photos re-photographed by the simulated camera at five EVs."""

    side: int = Field(256, ge=32, le=1024, description="longest side of the stored images (padded square)")
    seed: int = Field(0, ge=0, description="white balance and noise of the stored renderings")


def shipped_photo(name: str) -> np.ndarray:
    """One of the shipped photos as uint8 H x W x 3 (grey ones repeated over the channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])


def fit_and_pad(img: torch.Tensor, side: int) -> tuple[torch.Tensor, int, int]:
    """3 x H x W in [0, 1] resized (antialiased) to ``side`` on its longest side, replicate-padded
    at the bottom and right to ``side`` x ``side``; with the valid height and width."""
    h, w = img.shape[-2:]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    return F.pad(small[None], (0, side - nw, 0, side - nh), mode="replicate")[0].clamp(0, 1), nh, nw


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def render_split(names: tuple[str, ...], side: int, rng: np.random.Generator) -> ImageSet:
    photos, sizes = [], []
    for name in names:
        px = torch.from_numpy(shipped_photo(name).copy()).permute(2, 0, 1).float() / 255
        padded, h, w = fit_and_pad(px, side)
        photos.append(padded)
        sizes.append((h, w))
    photo = torch.stack(photos)  # S x 3 x side x side: Expert C
    linear = scene_of_photo(photo)
    s, e = len(names), len(EVS)
    wb = torch.from_numpy(rng.uniform(0.9, 1.1, (s, 2)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((s * e, 3, side, side), dtype=np.float32))
    ev = torch.tensor(EVS).repeat(s)
    inputs = expose(linear.repeat_interleave(e, 0), ev, wb.repeat_interleave(e, 0), noise)
    experts = {f"expert_{k}": _to_uint8(render_expert(linear, k)).repeat(e, 0) for k in EXPERTS}
    experts["expert_c"] = _to_uint8(photo).repeat(e, 0)  # C is the photo itself (the round trip is exact to 8 bits)
    h, w = (np.repeat(np.array(v, np.int64), e) for v in zip(*sizes))
    meta = {"scene": np.repeat([SCENE_IDS[n] for n in names], e), "ev": ev.double().numpy(), "height": h, "width": w,
            **experts}
    return ImageSet(pixels=_to_uint8(inputs), target=ImageSet(pixels=experts["expert_c"]), meta=meta)


@lru_cache(maxsize=2)
def load_exposure_photos(side: int = 256, seed: int = 0) -> Benchmark:
    """The embedded set (cached per process: it is deterministic and read-only)."""
    rng = np.random.default_rng([seed, 0xE0])
    parts = {split: render_split(names, side, rng) for split, names in SPLITS.items()}
    return Benchmark("exposure_photos", parts["train"], test=parts["test"], val=parts["val"])


register_dataset(DataSet(
    name="exposure_photos",
    description="exposure: 14 shipped photos (scikit-image, scikit-learn) re-photographed at EV -1.5..+1.5 by a "
                "simulated camera, 5 expert renderings; split by scene (generated in memory)",
    load=lambda section, root: load_exposure_photos(section.exposure_photos.side, section.exposure_photos.seed),
    provides=frozenset({"paired", "metadata"}),
    Config=ExposurePhotosSection,
    root="none",
))
