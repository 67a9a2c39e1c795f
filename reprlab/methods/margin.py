"""Margin loss with distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding
Learning", ICCV 2017): the baseline every DML paper compares to.

Per step: embed a class-balanced batch (gathered over all workers), draw one distance-weighted
negative for every anchor-positive pair, and minimize the margin loss with a learnable boundary
beta per class.
"""

from __future__ import annotations

from typing import Literal

from reprlab.platform.dml.method import EmbeddingMethod, MarginSettings
from reprlab.platform.contract.method import register_method


class MarginConfig(MarginSettings):
    name: Literal["margin"] = "margin"


@register_method
class Margin(EmbeddingMethod):
    name = "margin"
    description = "Margin loss + distance-weighted sampling (Wu et al. 2017), the DML baseline"
    Config = MarginConfig
    supports_accumulation = True

    def build(self) -> None:
        self.build_margin_learner()

    def train_step(self, batch) -> dict[str, float]:
        x, y = batch
        out, backward = self.ctx.micro_batched(self.net, x)
        emb = self.ctx.gather(out["embed"])
        loss, n_triplets = self.margin_loss(self.criterion, emb, self.ctx.gather(y))
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return {"loss": loss.item(), "triplets": float(n_triplets), "beta": self.criterion.beta.mean().item()}

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()
