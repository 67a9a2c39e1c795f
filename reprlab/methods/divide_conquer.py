"""Divide and Conquer the Embedding Space for Metric Learning (Sanakoyeu et al., CVPR 2019;
learnable masks from the TPAMI 2021 follow-up).

Divide: every ``recluster_every`` epochs the training set is clustered into K groups (faiss
k-means on the normalized penultimate features, or on the embedding), the new clusters are
matched to the old ones so every learner keeps similar data, and classes with a single sample in a
cluster are dropped there. The embedding is cut into K learners (contiguous slices, each
normalized on its own, or learnable ReLU masks); batches come from the clusters in turn, and a
batch of cluster k trains learner k only, with its own margin criterion.
Conquer: from ``conquer_epoch`` on, the full embedding is fine-tuned on all data. The reference
code moves the loss to the full embedding earlier, on cluster batches (``full_loss_epoch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.eval.clustering import cluster_split, drop_singleton_classes, l2_normalize, match_clusters
from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.dml.method import EmbeddingMethod, MarginSettings, make_optimizer, make_scheduler
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.contract.method import register_method
from reprlab.platform.nn.backbones import EmbeddingNet, build_backbone
from reprlab.platform.core.log import say


class DivideConquerConfig(MarginSettings):
    name: Literal["divide_conquer"] = "divide_conquer"
    num_clusters: int = Field(8, ge=1, description="K: clusters = learners (embedding slices)")
    recluster_every: int = Field(2, ge=1, description="T: epochs between re-clusterings")
    cluster_space: Literal["penultimate", "embedding"] = "penultimate"
    kmeans_niter: int = Field(100, ge=1)
    kmeans_nredo: int = Field(5, ge=1)
    conquer_epoch: int | None = Field(None, ge=1, description="first epoch of full-embedding fine-tuning")
    full_loss_epoch: int | None = Field(
        None, ge=1, description="first epoch whose cluster batches train the full embedding (with their learner's "
        "criterion) until conquer_epoch; the reference code's ceil(finetune_epoch * 8 / 19). None: never")
    masks: bool = Field(False, description="learnable ReLU masks instead of fixed slices")
    mask_lambda: float = Field(0.01, ge=0, description="weight of the masks' orthogonality penalty")
    mask_lr_factor: float = Field(100.0, gt=0, description="mask learning rate = optim.lr x this")

    def check_against(self, cfg: ExperimentConfig) -> None:
        if cfg.model.embed_dim % self.num_clusters:
            raise ConfigError(
                f"config: method.num_clusters: {self.num_clusters} does not divide "
                f"model.embed_dim={cfg.model.embed_dim} into equal slices"
            )


class Learners(nn.Module):
    """K learners on one embedding. Fixed slices: one linear map per slice, so a step of learner
    k leaves the other slices' weights without gradient. Masks: one linear map, learner k sees it
    through relu(mask_k); initialised to the slice layout (1 inside, 0.1 outside)."""

    def __init__(self, in_dim: int, dim: int, k: int, masks: bool) -> None:
        super().__init__()
        self.k = k
        if masks:
            self.fc = nn.Linear(in_dim, dim)
            init = torch.full((k, dim), 0.1)
            init[torch.arange(dim) // (dim // k), torch.arange(dim)] = 1.0
            self.masks = nn.Parameter(init)
        else:
            self.slices = nn.ModuleList(nn.Linear(in_dim, dim // k) for _ in range(k))

    def full(self, feats: torch.Tensor) -> torch.Tensor:
        """The full embedding as the paper and the reference code define it: every learner's
        slice L2-normalized on its own, concatenated, then the whole normalized (a uniform
        1/sqrt(K) for fixed slices, so distances rank as between the concatenated unit slices).
        Masks: each learner's masked embedding overlaps the others, so the one linear map's output
        is normalized as a whole."""
        if hasattr(self, "masks"):
            return F.normalize(self.fc(feats), dim=-1)
        return F.normalize(torch.cat([F.normalize(s(feats), dim=-1) for s in self.slices], dim=1), dim=-1)

    def learner(self, feats: torch.Tensor, k: int) -> torch.Tensor:
        if hasattr(self, "masks"):
            return F.normalize(self.fc(feats) * F.relu(self.masks[k]), dim=-1)
        return F.normalize(self.slices[k](feats), dim=-1)

    def orthogonality(self) -> torch.Tensor:
        """Squared off-diagonal cosine similarities between the K masks."""
        m = F.normalize(F.relu(self.masks), dim=1)
        gram = m @ m.T
        return (gram - torch.diag(torch.diagonal(gram))).pow(2).sum()


class DivideConquerNet(EmbeddingNet):
    """``forward(x)``: features and the full normalized embedding; ``forward(x, learner=k)``:
    features and learner k's normalized sub-embedding only."""

    def forward(self, x: torch.Tensor, learner: int | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        learners = self.heads["learners"]
        if learner is None:
            return {"features": feats, "embed": learners.full(feats)}
        return {"features": feats, "learner": learners.learner(feats, learner)}


@register_method
class DivideConquer(EmbeddingMethod):
    name = "divide_conquer"
    description = "Divide & Conquer (CVPR 2019): K clusters of the data, each trains its own embedding slice"
    Config = DivideConquerConfig
    supports_accumulation = True

    @classmethod
    def network(cls, cfg) -> DivideConquerNet:
        backbone = build_backbone(cfg.model)
        m = cfg.method
        learners = Learners(backbone.out_dim, cfg.model.embed_dim, m.num_clusters, m.masks)
        return DivideConquerNet(backbone, {"learners": learners})

    def build(self) -> None:
        cfg = self.cfg
        self.build_network(partial=not cfg.masks)
        n = self.ctx.data.num_classes
        self.criteria = nn.ModuleList(self.margin_criterion(n) for _ in range(cfg.num_clusters + 1))  # last: conquer
        learners = self.model.heads["learners"]
        masks = [learners.masks] if cfg.masks else []
        others = [p for p in self.trainable(self.net) if all(p is not m for m in masks)]
        groups = [{"params": others}, *self.beta_groups(*self.criteria)]
        if masks:
            groups.append({"params": masks, "lr": self.ctx.cfg.optim.lr * cfg.mask_lr_factor, "weight_decay": 0.0})
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)
        self.raw_clusters: np.ndarray | None = None  # k-means labels, matched to the previous ones
        self.clusters: np.ndarray | None = None  # the same with singleton classes dropped (-1)

    # ---- the divide controller --------------------------------------------------------------
    def conquering(self, epoch: int) -> bool:
        return self.cfg.conquer_epoch is not None and epoch >= self.cfg.conquer_epoch

    def full_loss(self, epoch: int) -> bool:
        """Cluster batches train the full embedding (the reference code's schedule)."""
        return self.cfg.full_loss_epoch is not None and epoch >= self.cfg.full_loss_epoch

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.epoch = epoch
        if not self.conquering(epoch) and (self.clusters is None or (epoch - 1) % self.cfg.recluster_every == 0):
            self.recluster(epoch)

    def cluster_space(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["features"] if self.cfg.cluster_space == "penultimate" else out["embed"]

    def recluster(self, epoch: int) -> None:
        cfg = self.cfg
        self.net.eval()
        try:
            raw = cluster_split(
                self.ctx, self.cluster_space, cfg.num_clusters, transform=l2_normalize,
                niter=cfg.kmeans_niter, nredo=cfg.kmeans_nredo, seed=self.ctx.cfg.experiment.seed * 1000 + epoch,
            )
        finally:
            self.net.train()
        if self.raw_clusters is not None:
            raw = match_clusters(self.raw_clusters, raw, cfg.num_clusters)
        self.raw_clusters = raw
        self.clusters = drop_singleton_classes(raw, self.ctx.data.targets)
        if self.ctx.is_main:
            sizes = np.bincount(self.clusters[self.clusters >= 0], minlength=cfg.num_clusters)
            say(f"[reprlab] epoch {epoch}: clustered into {cfg.num_clusters} ({cfg.cluster_space}); "
                f"sizes {sizes.tolist()}, {int((self.clusters < 0).sum())} singleton-class images left out")

    # ---- batches and steps --------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int | None]]:
        if self.conquering(epoch):
            for x, y in super().batches(epoch):
                yield x, y, None
            return
        index, learner = self.cluster_sampler(self.clusters).batches(epoch)
        for (x, y), k in zip(self.ctx.train_batches(index, epoch), learner.tolist()):
            yield x, y, k

    def train_step(self, batch) -> dict[str, float]:
        x, y, k = batch
        full = k is None or self.full_loss(self.epoch)
        out, backward = self.ctx.micro_batched(self.net, x, **({} if full else {"learner": k}))
        emb = self.ctx.gather(out["embed" if full else "learner"])
        criterion = self.criteria[-1 if k is None else k]
        loss, n_triplets = self.margin_loss(criterion, emb, self.ctx.gather(y))
        logs = {"triplets": float(n_triplets), "conquer": float(k is None), "full_loss": float(full)}
        if self.cfg.masks:
            penalty = self.model.heads["learners"].orthogonality()
            loss = loss + self.cfg.mask_lambda * penalty
            logs["mask_overlap"] = penalty.item()
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return {"loss": loss.item(), **logs}

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()

    def epoch_metrics(self) -> dict[str, float]:
        if self.clusters is None:
            return {}
        sizes = np.bincount(self.clusters[self.clusters >= 0], minlength=self.cfg.num_clusters)
        return {"cluster_size_min": sizes.min(), "cluster_size_max": sizes.max(),
                "clustered_out": float((self.clusters < 0).sum())}

    # ---- state beyond modules and optimizers ------------------------------------------------------
    def extra_state(self) -> dict:
        if self.clusters is None:
            return {}
        return {"raw_clusters": torch.from_numpy(self.raw_clusters), "clusters": torch.from_numpy(self.clusters)}

    def load_extra_state(self, state: dict) -> None:
        if "clusters" in state:
            self.raw_clusters = state["raw_clusters"].numpy()
            self.clusters = state["clusters"].numpy()
