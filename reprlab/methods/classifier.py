"""A small image classifier: a first stage for IIN (which interprets its hidden representation z).

image -> backbone -> linear -> z (``model.embed_dim``) -> linear -> class logits, trained with
cross-entropy on plain shuffled batches. Evaluated by accuracy and cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.dml.method import make_optimizer, make_scheduler
from reprlab.platform.contract.frozen import FrozenModel, load_weights
from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.nn.backbones import VectorEncoder, build_backbone


class ClassifierConfig(MethodConfig):
    name: Literal["classifier"] = "classifier"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class ClassifierNet(nn.Module):
    def __init__(self, cfg: ExperimentConfig, num_classes: int) -> None:
        super().__init__()
        self.encoder = VectorEncoder(build_backbone(cfg.model), cfg.model.embed_dim)
        self.head = nn.Linear(cfg.model.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@register_method
class Classifier(Method):
    name = "classifier"
    description = "Image classifier (cross-entropy): a first stage for IIN"
    Config = ClassifierConfig
    supports_accumulation = True
    selection_metric = "accuracy"
    headline_metric = "accuracy"
    lower_is_better = frozenset({"cross_entropy"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"labels"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return ("accuracy", "cross_entropy")

    @classmethod
    def frozen_model(cls, cfg: ExperimentConfig, attributes: dict[str, Any]) -> FrozenModel:
        classes = attributes["net"]["head.weight"].shape[0]
        net = load_weights(ClassifierNet(cfg, classes), attributes["net"], "classifier")
        return FrozenModel("classifier", net.encoder, head=net.head)

    def build(self) -> None:
        self.net = self.ctx.prepare(ClassifierNet(self.ctx.cfg, self.ctx.data.num_classes))
        self.optimizer = make_optimizer([{"params": [p for p in self.net.parameters() if p.requires_grad]}],
                                        self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.ctx.shuffled_batches(epoch)

    def images_per_step(self) -> int:
        return self.ctx.local_batch()

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
        logits, backward = self.ctx.micro_batched(self.net, x)
        # the global batch's mean, whatever each rank's share of it (ctx.global_mean)
        loss = self.ctx.global_mean(F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing, reduction="none"))
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()

    def evaluate(self, split: str) -> dict[str, float]:
        images = self.ctx.data.eval_splits[split].query
        self.net.eval()
        try:
            logits = self.ctx.embed(unwrap(self.net), images)  # on rank 0
        finally:
            self.net.train()
        metrics = None
        if self.ctx.is_main:
            logits, y = torch.from_numpy(logits), torch.from_numpy(np.searchsorted(self.ctx.data.class_ids, images.labels))
            metrics = {"accuracy": (logits.argmax(1) == y).float().mean().item(),
                       "cross_entropy": F.cross_entropy(logits, y).item()}
        return self.ctx.broadcast(metrics)
