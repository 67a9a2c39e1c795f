"""Margin loss with distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding
Learning", ICCV 2017): the baseline every DML paper compares to.

Per step: embed a class-balanced batch (gathered over all workers), draw one distance-weighted
negative for every anchor-positive pair, and minimize the margin loss with a learnable boundary
beta per class.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from reprlab.platform.config import MethodConfig
from reprlab.platform.dml import MarginLoss, distance_weighted_triplets
from reprlab.platform.embedding import EmbeddingMethod, make_optimizer, make_scheduler
from reprlab.platform.method import register_method


class MarginConfig(MethodConfig):
    name: Literal["margin"] = "margin"
    margin: float = Field(0.2, ge=0)
    beta: float = Field(1.2, gt=0, description="initial boundary (0.6 in PADS' CUB/CARS runs)")
    learn_beta: bool = True
    beta_lr: float = Field(5e-4, gt=0)
    nu: float = Field(0.0, ge=0, description="beta regularization")
    cutoff: float = Field(0.5, gt=0, description="distance-weighted sampling: lower distance clamp")
    nonzero_loss_cutoff: float = Field(1.4, gt=0, description="negatives farther than this are not drawn")


@register_method
class Margin(EmbeddingMethod):
    name = "margin"
    description = "Margin loss + distance-weighted sampling (Wu et al. 2017), the DML baseline"
    Config = MarginConfig

    def build(self) -> None:
        self.build_network()
        cfg = self.cfg
        self.criterion = MarginLoss(
            self.ctx.data.num_classes, cfg.margin, cfg.beta, cfg.learn_beta, cfg.nu
        ).to(self.ctx.device)
        groups = [{"params": self.trainable(self.net)}]
        if cfg.learn_beta:
            groups.append({"params": [self.criterion.beta], "lr": cfg.beta_lr, "weight_decay": 0.0})
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)
        self.mining = torch.Generator()  # same stream on every rank: identical triplets everywhere

    def on_epoch_start(self, epoch: int) -> None:
        self.mining.manual_seed(self.ctx.seed(epoch, 0x3A1))

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
        emb = self.ctx.gather(self.net(x)["embed"])
        labels = self.ctx.gather(y)
        triplets = distance_weighted_triplets(
            emb.detach().cpu(), labels.cpu(), self.mining, self.cfg.cutoff, self.cfg.nonzero_loss_cutoff
        )  # mined on the CPU so one seeded generator serves every device
        loss = self.criterion(emb, labels, tuple(t.to(emb.device) for t in triplets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "triplets": float(len(triplets[0])), "beta": self.criterion.beta.mean().item()}

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()
