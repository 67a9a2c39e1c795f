"""MIC: Mining Interclass Characteristics for Improved Metric Learning (Roth, Brattoli, Ommer,
ICCV 2019).

Two heads on one backbone: ``class`` (evaluated) learns the classes; ``shared`` learns clusters of
what classes have in common. Initial pseudo-labels: k-means of early-layer features with each
class's mean subtracted (class identity removed); later re-clustering on the shared embedding
every ``recluster_every`` epochs, matched to the previous labels. A fraction of every cluster batch
is replaced by images of random clusters (label noise against bad clusters). An adversarial
projection decorrelates the two heads through gradient reversal. Per iteration: a class-task step,
and with probability ``shared_prob`` a shared-task step, each with its own optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from reprlab.platform.eval.clustering import cluster_split, l2_normalize, match_clusters, remove_class_means
from reprlab.platform.dml.method import DecorrelatedHeadsMethod, DecorrelatedHeadsSettings, make_optimizer, make_scheduler
from reprlab.platform.contract.method import register_method
from reprlab.platform.core.log import say


class MICConfig(DecorrelatedHeadsSettings):
    name: Literal["mic"] = "mic"
    num_clusters: int = Field(30, ge=2, description="C: pseudo-label clusters (CUB 30, CARS 150, SOP 50)")
    recluster_every: int = Field(4, ge=1, description="epochs between re-clusterings of the shared embedding")
    shared_prob: float = Field(0.8, ge=0, le=1, description="probability of a shared-task step per iteration")
    label_noise: float = Field(0.2, ge=0, lt=1, description="fraction of a cluster batch replaced at random")
    kmeans_niter: int = Field(100, ge=1)
    kmeans_nredo: int = Field(1, ge=1)


def noisy_cluster_batches(
    batches: np.ndarray, clusters: np.ndarray, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of cluster batches where each slot, with probability ``noise``, holds an
    image of a uniformly drawn cluster while keeping the label of its own cluster."""
    labels = clusters[batches]
    order = np.argsort(clusters, kind="stable")
    sizes = np.bincount(clusters)
    present = np.flatnonzero(sizes)
    starts = np.cumsum(sizes) - sizes
    pick = present[rng.integers(0, len(present), size=batches.shape)]
    random_images = order[starts[pick] + (rng.random(batches.shape) * sizes[pick]).astype(np.int64)]
    return np.where(rng.random(batches.shape) < noise, random_images, batches), labels


@register_method
class MIC(DecorrelatedHeadsMethod):
    name = "mic"
    description = "MIC (ICCV 2019): auxiliary head on inter-class clusters, decorrelated by gradient reversal"
    Config = MICConfig
    supports_accumulation = True

    def build(self) -> None:
        self.build_heads()
        self.class_criterion = self.margin_criterion(self.ctx.data.num_classes)
        self.shared_criterion = self.margin_criterion(self.cfg.num_clusters)
        groups = [
            {"params": self.trainable(self.net)},
            self.adversary_group(),
            *self.beta_groups(self.class_criterion, self.shared_criterion),
        ]
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)
        self.clusters: np.ndarray | None = None

    # ---- pseudo-labels -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.clusters is None:
            self.recluster(epoch, initial=True)
        elif (epoch - 1) % self.cfg.recluster_every == 0:
            self.recluster(epoch, initial=False)

    def recluster(self, epoch: int, initial: bool) -> None:
        cfg, targets = self.cfg, self.ctx.data.targets
        if initial:  # early-layer features, class identity removed
            fn, transform = self.model.early_features, lambda f: remove_class_means(l2_normalize(f), targets)
        else:
            fn, transform = (lambda x: self.model(x)["shared"]), None
        self.net.eval()
        try:
            clusters = cluster_split(self.ctx, fn, cfg.num_clusters, transform=transform, niter=cfg.kmeans_niter,
                                     nredo=cfg.kmeans_nredo, seed=self.ctx.cfg.experiment.seed * 1000 + epoch)
        finally:
            self.net.train()
        if self.clusters is not None:
            clusters = match_clusters(self.clusters, clusters, cfg.num_clusters)
        self.clusters = clusters
        if self.ctx.is_main:
            sizes = np.bincount(clusters, minlength=cfg.num_clusters)
            say(f"[reprlab] epoch {epoch}: {'initial ' if initial else ''}pseudo-labels, {cfg.num_clusters} "
                f"clusters of {sizes.min()}-{sizes.max()} images")

    # ---- batches: a class batch every iteration, a cluster batch on most ------------------------------
    def batches(self, epoch: int) -> Iterator[tuple[tuple, tuple | None]]:
        ctx, cfg = self.ctx, self.cfg
        rng = np.random.default_rng([ctx.cfg.experiment.seed, epoch, 0x31C])  # same on every rank
        sampler = self.class_balanced_sampler(targets=self.clusters, stream=1, repeat_classes=True)
        images, labels = noisy_cluster_batches(sampler.global_batches(epoch), self.clusters, cfg.label_noise, rng)
        shared_step = rng.random(len(images)) < cfg.shared_prob
        class_batches = ctx.train_batches(self.class_balanced_sampler().batches(epoch), epoch)
        shared_batches = ctx.train_batches(
            sampler.share(images)[shared_step], epoch, sampler.share(labels)[shared_step], stream=1
        )
        for do_shared, class_batch in zip(shared_step, class_batches):
            yield class_batch, (next(shared_batches) if do_shared else None)

    def train_step(self, batch) -> dict[str, float]:
        class_batch, shared_batch = batch
        loss, class_margin, adv = self.task_step(class_batch, "class", self.class_criterion)
        logs = {"loss": loss, "class_loss": class_margin, "adversarial": adv}
        if shared_batch is not None:  # averaged over the iterations that had a shared step
            _, logs["shared_loss"], _ = self.task_step(shared_batch, "shared", self.shared_criterion)
        return logs

    def task_step(self, batch, head: str, criterion) -> tuple[float, float, float]:
        """One optimizer step on a head's margin loss plus the weighted decorrelation;
        returns (total, margin, adversarial)."""
        x, y = batch
        out, backward = self.ctx.micro_batched(self.net, x)
        emb_class, emb_shared = self.ctx.gather(out["class"]), self.ctx.gather(out["shared"])
        margin, _ = self.margin_loss(criterion, emb_class if head == "class" else emb_shared, self.ctx.gather(y))
        adv = self.decorrelation(emb_class, emb_shared)
        loss = margin + self.cfg.adversarial_weight * adv
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return loss.item(), margin.item(), adv.item()

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()

    def images_per_step(self) -> int:
        return round(super().images_per_step() * (1 + self.cfg.shared_prob))

    def epoch_metrics(self) -> dict[str, float]:
        if self.clusters is None:
            return {}
        sizes = np.bincount(self.clusters, minlength=self.cfg.num_clusters)
        return {"cluster_size_min": sizes.min(), "cluster_size_max": sizes.max()}

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {} if self.clusters is None else {"clusters": torch.from_numpy(self.clusters)}

    def load_extra_state(self, state: dict) -> None:
        if "clusters" in state:
            self.clusters = state["clusters"].numpy()
