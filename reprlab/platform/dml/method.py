"""Shared shape of the embedding (DML) methods: backbone + named heads, class-balanced batches,
margin criteria with distance-weighted mining, retrieval evaluation of one head (or several
concatenated). Methods add criteria, miners and controllers on top."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.core.config import METRIC_KEYS, PROBE_KEYS, ExperimentConfig, MethodConfig, OptimSection
from reprlab.platform.dml import AdversarialDecorrelation, MarginLoss, distance_weighted_triplets
from reprlab.platform.contract.frozen import FrozenModel, load_weights
from reprlab.platform.contract.method import Method, unwrap
from reprlab.platform.dml.batches import class_balanced_sampler, cluster_sampler, evaluate_embeddings
from reprlab.platform.dml.samplers import ClassBalancedSampler, ClusterRoundRobinSampler
from reprlab.platform.nn.backbones import EmbeddingHead, EmbeddingNet, build_backbone


class MarginSettings(MethodConfig):
    """The margin criterion and its distance-weighted miner: the base loss of every DML method."""

    margin: float = Field(0.2, ge=0)
    beta: float = Field(1.2, gt=0, description="initial boundary (0.6 in PADS' CUB/CARS runs)")
    learn_beta: bool = True
    beta_lr: float = Field(5e-4, gt=0)
    nu: float = Field(0.0, ge=0, description="beta regularization")
    cutoff: float = Field(0.5, gt=0, description="distance-weighted sampling: lower distance clamp")
    nonzero_loss_cutoff: float = Field(1.4, gt=0, description="negatives farther than this are not drawn")
    loss_normalization: Literal["active_terms", "active_triplets"] = Field(
        "active_terms", description="divide the summed margin loss by its non-zero terms (Wu et al., PML) or by the "
        "triplets with any non-zero term (the PyTorch reference codes; docs/DEPARTURES.md)")


class DecorrelatedHeadsSettings(MarginSettings):
    """A class head and an auxiliary head decorrelated adversarially (MIC, Sharing Matters)."""

    adversarial_weight: float = Field(2500.0, ge=0, description="weight w of the decorrelation loss")
    adversarial_hidden: int = Field(512, ge=1, description="hidden width of the projection R")
    adversarial_lr: float | None = Field(None, gt=0, description="learning rate of R (default: optim.lr)")
    adversarial_weight_decay: float | None = Field(
        None, ge=0, description="weight decay of R (default: optim.weight_decay; MIC's reference code: 1e-6)")
    evaluate: Literal["class", "concat"] = Field("class", description="evaluate the class head or both heads")


def make_optimizer(groups: list[dict], cfg: OptimSection) -> torch.optim.Optimizer:
    """Optimizer over parameter groups (a group may set its own lr / weight_decay)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimSection) -> torch.optim.lr_scheduler.LRScheduler:
    """Multi-step decay at the configured epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


def evaluated_embedding(out: dict[str, torch.Tensor], heads: tuple[str, ...]) -> torch.Tensor:
    """The evaluated embedding of a forward's output: one head's (L2-normalized) embedding, or
    several heads concatenated and re-normalized."""
    if len(heads) == 1:
        return out[heads[0]]
    return F.normalize(torch.cat([out[h] for h in heads], dim=1), dim=1)


class EvaluatedEmbedding(torch.nn.Module):
    """x -> the evaluated (L2-normalized) embedding of a trained embedding network: the encoder
    of a DML run's frozen model."""

    def __init__(self, net: torch.nn.Module, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.net, self.heads = net, tuple(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return evaluated_embedding(self.net(x), self.heads)


class EmbeddingMethod(Method):
    """``self.net(x)`` returns features and one L2-normalized embedding per name in ``heads``;
    ``eval_heads`` are evaluated (concatenated and re-normalized when there are several)."""

    heads: ClassVar[tuple[str, ...]] = ("embed",)
    eval_heads: tuple[str, ...] = ("embed",)
    batching = "class_balanced"

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"labels"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return METRIC_KEYS + (PROBE_KEYS if cfg.eval.probes else ())

    # ---- networks and criteria ------------------------------------------------------------
    @classmethod
    def network(cls, cfg: ExperimentConfig) -> torch.nn.Module:
        """The (untrained) network of this method under ``cfg``: by default the backbone and one
        ``EmbeddingHead`` per name in ``heads``. Methods with another network override it."""
        backbone = build_backbone(cfg.model)
        return EmbeddingNet(backbone, {h: EmbeddingHead(backbone.out_dim, cfg.model.embed_dim) for h in cls.heads})

    @classmethod
    def evaluated_heads(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        """The heads ``evaluate`` retrieves with under ``cfg``."""
        return cls.eval_heads

    @classmethod
    def frozen_model(cls, cfg: ExperimentConfig, attributes: dict) -> FrozenModel:
        """z = the evaluated embedding (after its L2 normalization, i.e. exactly what retrieval
        used), so IIN interprets the space the run was selected on."""
        net = load_weights(cls.network(cfg), attributes["net"], cls.name)
        return FrozenModel("embedding", EvaluatedEmbedding(net, cls.evaluated_heads(cfg)))

    def build_network(self, net: torch.nn.Module | None = None, *, partial: bool = False) -> None:
        """``self.net`` (``network(cfg)``, or ``net``), and ``self.mining``: a generator seeded
        per epoch and identical on every rank, so all ranks mine the same triplets from the same
        gathered batch."""
        self.net = self.ctx.prepare(self.network(self.ctx.cfg) if net is None else net, partial=partial)
        self.mining = torch.Generator()

    def build_margin_learner(self) -> None:
        """The plain margin learner: ``net``, one margin ``criterion`` over the classes, an
        ``optimizer`` over both and its ``scheduler`` (the baseline, and PADS' learner)."""
        self.build_network()
        self.criterion = self.margin_criterion(self.ctx.data.num_classes)
        groups = [{"params": self.trainable(self.net)}, *self.beta_groups(self.criterion)]
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)

    def margin_criterion(self, num_classes: int) -> MarginLoss:
        c = self.cfg
        return MarginLoss(num_classes, c.margin, c.beta, c.learn_beta, c.nu, c.loss_normalization).to(self.ctx.device)

    def beta_groups(self, *criteria: MarginLoss) -> list[dict]:
        """Optimizer groups for learnable betas (own learning rate, no weight decay)."""
        if not self.cfg.learn_beta:
            return []
        return [{"params": [c.beta for c in criteria], "lr": self.cfg.beta_lr, "weight_decay": 0.0}]

    def margin_loss(self, criterion: MarginLoss, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Margin loss of gathered embeddings with one distance-weighted negative per positive pair.
        Mined on the CPU so that one seeded generator serves every device."""
        triplets = distance_weighted_triplets(
            emb.detach().cpu(), labels.cpu(), self.mining, self.cfg.cutoff, self.cfg.nonzero_loss_cutoff
        )
        return criterion(emb, labels, tuple(t.to(emb.device) for t in triplets)), len(triplets[0])

    def trainable(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    @property
    def model(self) -> torch.nn.Module:
        """``self.net`` without its DDP wrapper (for calls other than the training forward)."""
        return unwrap(self.net)

    # ---- data and loop ------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.mining.manual_seed(self.ctx.seed(epoch, 0x3A1))

    def class_balanced_sampler(self, targets=None, iterations: int | None = None, *, stream: int = 0,
                               repeat_classes: bool = False) -> ClassBalancedSampler:
        """P x M batches over the classes (or other ``targets``): :func:`dml.batches.class_balanced_sampler`."""
        return class_balanced_sampler(self.ctx, targets, iterations, stream=stream, repeat_classes=repeat_classes)

    def evaluate_embeddings(self, fn, split: str, *, class_geometry: bool = False) -> dict[str, float]:
        """Retrieval metrics of ``fn``'s embeddings on a split: :func:`dml.batches.evaluate_embeddings`."""
        return evaluate_embeddings(self.ctx, fn, split, class_geometry=class_geometry)

    def cluster_sampler(self, clusters) -> ClusterRoundRobinSampler:
        """Class-balanced batches inside each cluster, the clusters taking turns."""
        return cluster_sampler(self.ctx, clusters)

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.ctx.train_batches(self.class_balanced_sampler().batches(epoch), epoch)

    def images_per_step(self) -> int:
        return self.ctx.cfg.data.global_batch // self.ctx.world_size

    # ---- evaluation -----------------------------------------------------------------------------
    def embed_for_eval(self, x: torch.Tensor) -> torch.Tensor:
        return evaluated_embedding(self.net(x), self.eval_heads)

    def evaluate(self, split: str) -> dict[str, float]:
        self.net.eval()
        try:
            return self.evaluate_embeddings(self.embed_for_eval, split)
        finally:
            self.net.train()


class DecorrelatedHeadsMethod(EmbeddingMethod):
    """Backbone with a ``class`` head (evaluated) and a ``shared`` head, and the adversarial
    decorrelation criterion between them (MIC and Sharing Matters)."""

    heads = ("class", "shared")

    @classmethod
    def evaluated_heads(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return ("class",) if cfg.method.evaluate == "class" else ("class", "shared")

    def build_heads(self) -> None:
        self.eval_heads = self.evaluated_heads(self.ctx.cfg)
        self.build_network()
        dim = self.ctx.cfg.model.embed_dim
        self.adversary = self.ctx.prepare(AdversarialDecorrelation(dim, self.cfg.adversarial_hidden))

    def adversary_group(self) -> dict:
        group = {"params": list(self.adversary.parameters()), "lr": self.cfg.adversarial_lr or self.ctx.cfg.optim.lr}
        if self.cfg.adversarial_weight_decay is not None:
            group["weight_decay"] = self.cfg.adversarial_weight_decay
        return group

    def decorrelation(self, out_class: torch.Tensor, out_shared: torch.Tensor) -> torch.Tensor:
        """L_adv on embeddings already gathered over the ranks."""
        return self.adversary(out_class, out_shared)
