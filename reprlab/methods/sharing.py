"""Sharing Matters for Generalization in Deep Metric Learning (Milbich, Roth, Brattoli, Ommer,
arXiv 2004.05582).

Characteristics shared across training classes are likely to recur in unseen classes, so a
second head learns them explicitly: its triplets take anchor and positive from *different*
classes (negative distance-weighted among other classes, positive from a third class). The class
head keeps the usual margin loss; the two heads share the backbone and are decorrelated with MIC's
adversarial criterion. One optimizer step per batch on the sum of the three losses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reprlab.platform.dml import shared_triplets
from reprlab.platform.dml.shared_triplets import SharedVariant
from reprlab.platform.dml.method import DecorrelatedHeadsMethod, DecorrelatedHeadsSettings, make_optimizer, make_scheduler
from reprlab.platform.contract.method import register_method


class SharingConfig(DecorrelatedHeadsSettings):
    name: Literal["sharing"] = "sharing"
    adversarial_weight: float = Field(2400.0, ge=0, description="CUB 2400, CARS 900")
    shared_weight: float = Field(1.0, ge=0, description="weight of the shared head's triplet loss")
    variant: SharedVariant = Field("random_positive", description="how the shared triplets are drawn")
    triplets_per_anchor: int | None = Field(
        None, ge=1, description="shared triplets per sample (default: samples_per_class - 1, as the class task)"
    )


@register_method
class Sharing(DecorrelatedHeadsMethod):
    name = "sharing"
    description = "Sharing Matters (TPAMI): a head trained on triplets whose anchor and positive differ in class"
    Config = SharingConfig
    supports_accumulation = True

    def build(self) -> None:
        self.build_heads()
        self.class_criterion = self.margin_criterion(self.ctx.data.num_classes)
        self.shared_criterion = self.margin_criterion(1)  # one boundary: shared triplets span classes
        groups = [
            {"params": self.trainable(self.net)},
            self.adversary_group(),
            *self.beta_groups(self.class_criterion, self.shared_criterion),
        ]
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)

    def train_step(self, batch) -> dict[str, float]:
        cfg = self.cfg
        x, y = batch
        out, backward = self.ctx.micro_batched(self.net, x)
        emb_class, emb_shared, labels = self.ctx.gather(out["class"]), self.ctx.gather(out["shared"]), self.ctx.gather(y)
        class_loss, _ = self.margin_loss(self.class_criterion, emb_class, labels)
        per_anchor = cfg.triplets_per_anchor or max(1, self.ctx.cfg.data.samples_per_class - 1)
        triplets = shared_triplets(
            emb_shared, labels, self.mining, per_anchor=per_anchor, variant=cfg.variant,
            cutoff=cfg.cutoff, nonzero_loss_cutoff=cfg.nonzero_loss_cutoff,
        )
        shared_loss = self.shared_criterion(emb_shared, labels, tuple(t.to(emb_shared.device) for t in triplets))
        adv = self.decorrelation(emb_class, emb_shared)
        loss = class_loss + cfg.shared_weight * shared_loss + cfg.adversarial_weight * adv
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return {
            "loss": loss.item(), "class_loss": class_loss.item(), "shared_loss": shared_loss.item(),
            "adversarial": adv.item(), "shared_triplets": float(len(triplets[0])),
        }

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()
