"""Tiny plug-ins for the data-layer tests, written the way a user adds them (one module each in
``reprlab/platform/data/sets/`` and ``reprlab/methods/``; here one test module holds them all):

- ``toy_pairs``: unlabeled input/target pairs (the target is the input's photographic negative);
- ``toy_pairs_bad``: the same with targets of another size (a data error);
- ``toy_dense``: images of a bright square with its mask, its corners as keypoints and a flow field;
- ``pixel_map``: a two-layer conv net trained to predict the target image (paired sets) or the mask
  (dense sets) from the image, evaluated by its mean per-sample error.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.core.registry import DATASETS
from reprlab.platform.data.catalog import DataSet, register_dataset
from reprlab.platform.data.types import Benchmark, Dense, ImageSet

SIDE = 20  # stored side; runs resize to data.image_size


def smooth_images(n: int, seed: int, side: int = SIDE) -> np.ndarray:
    """uint8 n x side x side x 3 smooth random images (upsampled noise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 3, 5, 5), dtype=np.float32))
    fine = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (fine.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _pairs(target_side: int):
    def load(section, root) -> Benchmark:
        x = smooth_images(64, 1)
        target = 255 - x
        if target_side != SIDE:
            target = target[:, :target_side, :target_side]

        def part(idx):
            return ImageSet(pixels=x[idx], target=ImageSet(pixels=target[idx]))

        return Benchmark("toy_pairs", part(np.arange(48)), test=part(np.arange(48, 64)))

    return load


def square_samples(n: int, seed: int, side: int = SIDE) -> ImageSet:
    """Images of one bright axis-aligned square each on a dark background, its mask, its four
    corners as keypoints (pixel coordinates of the corner pixels' centres) and a constant flow."""
    rng = np.random.default_rng(seed)
    lo = rng.integers(2, side // 2 - 1, (n, 2))
    hi = lo + rng.integers(4, side // 2, (n, 2))
    yy, xx = np.mgrid[:side, :side]
    inside = ((xx[None] >= lo[:, :1, None]) & (xx[None] < hi[:, :1, None])
              & (yy[None] >= lo[:, 1:, None]) & (yy[None] < hi[:, 1:, None]))
    pixels = np.repeat((inside * 220 + 20).astype(np.uint8)[..., None], 3, axis=3)
    x0, y0, x1, y1 = lo[:, 0] + 0.5, lo[:, 1] + 0.5, hi[:, 0] - 0.5, hi[:, 1] - 0.5
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1),
                        np.stack([x1, y1], 1)], 1).astype(np.float32)
    flow = np.broadcast_to(np.array([1.5, -0.5], np.float32)[None, :, None, None], (n, 2, side, side)).copy()
    return ImageSet(pixels=pixels, dense={"mask": Dense("mask", inside.astype(np.uint8)),
                                          "corners": Dense("keypoints", corners), "flow": Dense("flow", flow)})


def _dense(section, root) -> Benchmark:
    return Benchmark("toy_dense", square_samples(48, 2), test=square_samples(16, 3))


def register_toy_sets() -> None:
    if "toy_pairs" in DATASETS.names():
        return
    register_dataset(DataSet(name="toy_pairs", description="toy input/target pairs (negatives)", load=_pairs(SIDE),
                             provides=frozenset({"paired"}), root="none"))
    register_dataset(DataSet(name="toy_pairs_bad", description="toy pairs whose targets are smaller",
                             load=_pairs(12), provides=frozenset({"paired"}), root="none"))
    register_dataset(DataSet(name="toy_dense", description="toy squares with mask, corners and flow", load=_dense,
                             provides=frozenset({"dense", "keypoints"}), root="none"))


class PixelMapConfig(MethodConfig):
    name: Literal["pixel_map"] = "pixel_map"
    predict: Literal["target", "mask"] = "target"


@register_method
class PixelMap(Method):
    """Predicts the target image (L1) or the mask (binary cross-entropy) from the image."""

    name = "pixel_map"
    description = "toy image-to-image / dense method of the tests"
    Config = PixelMapConfig
    selection_metric = headline_metric = "error"
    lower_is_better = frozenset({"error"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"paired"}) if cfg.method.predict == "target" else frozenset({"dense"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return ("error",)

    def build(self) -> None:
        out = 3 if self.cfg.predict == "target" else 1
        torch.manual_seed(self.ctx.cfg.experiment.seed)
        self.net = self.ctx.prepare(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, out, 3, padding=1)))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.ctx.cfg.optim.lr)

    def batches(self, epoch: int):
        return self.ctx.sample_batches(epoch)

    def errors(self, net: nn.Module, sample: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = net(sample["image"])
        if self.cfg.predict == "target":
            return (pred - sample["target"]).abs().flatten(1).mean(1)
        return F.binary_cross_entropy_with_logits(pred[:, 0], sample["mask"].float(), reduction="none").flatten(1).mean(1)

    def train_step(self, batch) -> dict[str, float]:
        loss = self.ctx.global_mean(self.errors(self.net, batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def images_per_step(self) -> int:
        return self.ctx.local_batch()

    def evaluate(self, split: str) -> dict[str, float]:
        net = unwrap(self.net)
        net.eval()
        try:
            errs = self.ctx.map_samples(lambda s: self.errors(net, s)[:, None], self.ctx.data.eval_splits[split].query)
        finally:
            net.train()
        return self.ctx.broadcast({"error": float(errs.mean())} if self.ctx.is_main else None)
