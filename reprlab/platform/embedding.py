"""Shared shape of the embedding (DML) methods: backbone + named heads, class-balanced batches,
retrieval evaluation of one head. Methods add criteria, miners and controllers on top."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch

from reprlab.platform.config import OptimSection
from reprlab.platform.method import Method
from reprlab.platform.models import EmbeddingHead, EmbeddingNet, build_backbone


def make_optimizer(groups: list[dict], cfg: OptimSection) -> torch.optim.Optimizer:
    """Optimizer over parameter groups (a group may set its own lr / weight_decay)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimSection) -> torch.optim.lr_scheduler.LRScheduler:
    """Multi-step decay at the configured epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


class EmbeddingMethod(Method):
    """``self.net(x)`` returns features and one L2-normalized embedding per name in ``heads``;
    ``eval_head`` is what retrieval is evaluated on."""

    heads: ClassVar[tuple[str, ...]] = ("embed",)
    eval_head: ClassVar[str] = "embed"

    def build_network(self) -> None:
        cfg = self.ctx.cfg.model
        backbone = build_backbone(cfg)
        heads = {h: EmbeddingHead(backbone.out_dim, cfg.embed_dim) for h in self.heads}
        self.net = self.ctx.prepare(EmbeddingNet(backbone, heads))

    def trainable(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.ctx.train_batches(self.ctx.class_balanced_sampler().batches(epoch), epoch)

    def images_per_step(self) -> int:
        d = self.ctx.cfg.data
        return d.batch_size // self.ctx.world_size

    def evaluate(self, split: str) -> dict[str, float]:
        self.net.eval()
        try:
            return self.ctx.evaluate_embeddings(lambda x: self.net(x)[self.eval_head], split)
        finally:
            self.net.train()
