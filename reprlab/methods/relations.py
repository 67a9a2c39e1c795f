"""Unsupervised Representation Learning by Discovering Reliable Image Relations (Milbich*, Ghori*,
Diego, Ommer; Pattern Recognition 102, 2020). No code was published and the paper's body could not
be read: this loop is our reading of its abstract and highlights (specs/relations.md) [design].

Training never reads a label. Every ``epochs_per_round`` epochs, for ``rounds`` rounds:

    F <- the training images in the current space (round 0: the random-init trunk; then g)
    GROUP      compact groups of mutual nearest neighbours, tightest first, until coverage rho_r
    PARTITION  the groups into S subsets whose groups are far apart; per subset a local head h_s
               (re-initialized) and seeded random unit targets T_s, one per group
    each step  L = CE(<h_s(x), T_s> / tau, group(x))          on a batch of subset s's groups
                 + lambda_g * margin(g(x), component(x))      on a batch of pseudo-classes
    INFER      (every epoch's end) x is assigned to group argmax <h_s(x), t> of subset s when the
               best beats the second by gamma; x ~ y when co-assigned in >= v subsets
    CONSOLIDATE the connected components of ~ (transitivity), cut at c_max by k-means, are the
               pseudo-classes of the global head g (until the first inference: the groups)

Grouping, partitioning and inference run on rank 0 on gathered embeddings and are broadcast (as
D&C's re-clustering); batches are a function of (seed, epoch, iteration). ``mode=kmeans`` is the
DeepCluster-style baseline with the same budget: k-means pseudo-labels (K = the number of groups
the round would accept) every round, the margin loss on both batch slots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.contract.method import register_method
from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.log import say
from reprlab.platform.dml import relations as rel
from reprlab.platform.dml.method import EmbeddingMethod, MarginSettings, make_optimizer, make_scheduler
from reprlab.platform.dml.samplers import ClassBalancedSampler, ClusterRoundRobinSampler
from reprlab.platform.eval.clustering import kmeans, l2_normalize
from reprlab.platform.nn.backbones import EmbeddingHead, EmbeddingNet, build_backbone

GLOBAL_STREAM, SECOND_STREAM = 1000, 1001  # sampler streams (the subsets' samplers use 1..S)


class RelationsConfig(MarginSettings):
    name: Literal["relations"] = "relations"
    mode: Literal["relations", "kmeans"] = Field(
        "relations", description="relations: the method; kmeans: k-means pseudo-labels every round (baseline)")
    rounds: int = Field(3, ge=1, description="R: grouping rounds")
    epochs_per_round: int = Field(4, ge=1, description="E: epochs between groupings")
    group_size: int = Field(4, ge=2, description="n: images per group")
    k_nn: int = Field(10, ge=1, description="neighbours searched; a group's members must be mutual within k_nn")
    coverage: list[float] = Field([0.3, 0.5, 0.7], min_length=1,
                                  description="rho_r: share of the images in groups, per round (the last repeats)")
    grouping: Literal["compact", "raw"] = Field(
        "compact", description="compact: mutual-kNN groups, tightest first; raw: kNN sets in random order")
    group_space: Literal["embedding", "trunk"] = Field(
        "embedding", description="space of rounds >= 1 (round 0: the trunk): the global embedding g or the trunk")
    subsets: int = Field(4, ge=1, description="S: subsets of far-apart groups (1: no partitioning)")
    delta_quantile: float = Field(
        0.01, ge=0, le=1, description="a group closer than this quantile of centroid distances to one kept in "
                                      "its subset is dropped")
    target_dim: int = Field(64, ge=2, description="d_t: dimension of the local heads and random targets")
    tau: float = Field(0.1, gt=0, description="temperature of the local loss")
    local_loss: Literal["ce", "l2"] = Field(
        "ce", description="ce: softmax over the subset's targets; l2: squared distance to the own target")
    local_lr_factor: float = Field(
        1.0, gt=0, description="learning rate of the local heads = optim.lr x this (they restart every round)")
    gamma: float = Field(0.1, ge=0, description="inference: best minus second-best target similarity needed")
    votes: int = Field(2, ge=1, description="v: subsets that must co-assign two images to relate them")
    max_component: int = Field(50, ge=2, description="c_max: larger components are cut by k-means")
    keep_groups: bool = Field(
        True, description="inference extends the round's groups (their relations stay edges of the graph); "
                          "false: components of the co-assignment edges alone")
    lambda_g: float = Field(1.0, ge=0, description="weight of the global margin loss (0: no consolidation)")
    evaluate: Literal["global", "local_concat"] = Field(
        "global", description="global: g; local_concat: the current local heads concatenated (no consolidation)")

    def coverage_of(self, round_: int) -> float:
        return self.coverage[min(round_, len(self.coverage) - 1)]

    def check_against(self, cfg: ExperimentConfig) -> None:
        where = "config: method."
        if any(not 0 < c <= 1 for c in self.coverage):
            raise ConfigError(f"{where}coverage: {self.coverage}: every value must be in (0, 1]")
        if self.group_size > self.k_nn + 1:
            raise ConfigError(f"{where}group_size: {self.group_size} needs k_nn >= {self.group_size - 1} "
                              f"(k_nn is {self.k_nn})")
        if self.votes > self.subsets:
            raise ConfigError(f"{where}votes: {self.votes} is more than the {self.subsets} subsets")
        if cfg.data.samples_per_class > self.group_size:
            raise ConfigError(f"{where}group_size: {self.group_size} is smaller than data.samples_per_class "
                              f"{cfg.data.samples_per_class} (images of one group in a batch)")
        last_start = 1 + (self.rounds - 1) * self.epochs_per_round
        if cfg.train.epochs < last_start:
            raise ConfigError(f"{where}rounds: {self.rounds} rounds of {self.epochs_per_round} epochs start their "
                              f"last round at epoch {last_start}, after train.epochs={cfg.train.epochs}")
        if self.evaluate == "local_concat" and self.mode == "kmeans":
            raise ConfigError(f"{where}evaluate: local_concat needs mode=relations (kmeans has no local heads)")


class LocalHeads(nn.Module):
    """S linear maps trunk -> d_t, each L2-normalized: one per subset, re-initialized every round.
    The trunk features are standardized first (a BatchNorm without affine parameters, shared): a
    random-init trunk's features share one dominant direction, and a linear head on them barely
    separates its groups within the few steps a round gives it [design]."""

    def __init__(self, in_dim: int, dim: int, count: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)
        self.maps = nn.ModuleList(nn.Linear(in_dim, dim) for _ in range(count))

    @torch.no_grad()
    def reset(self, seed: int) -> None:
        """PyTorch's default Linear initialization, drawn from a generator seeded with ``seed``."""
        gen = torch.Generator().manual_seed(int(seed))
        for m in self.maps:
            bound = 1.0 / m.in_features ** 0.5
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
            m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * bound - bound)

    def forward(self, feats: torch.Tensor, which: int) -> torch.Tensor:
        return F.normalize(self.maps[which](self.norm(feats)), dim=-1)

    def all(self, feats: torch.Tensor) -> torch.Tensor:
        """N x S x d_t: every head's normalized output."""
        feats = self.norm(feats)
        return torch.stack([F.normalize(m(feats), dim=-1) for m in self.maps], dim=1)


class RelationsNet(EmbeddingNet):
    """``forward(x)``: features and the global embedding g; ``forward(x, subset=s)`` adds local head
    s's output (``local``)."""

    def forward(self, x: torch.Tensor, subset: int | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = {"features": feats, "embed": self.heads["embed"](feats)}
        if subset is not None:
            out["local"] = self.heads["local"](feats, subset)
        return out


@register_method
class Relations(EmbeddingMethod):
    name = "relations"
    description = "Reliable relations (PR 2020, our reading): groups, subsets, random targets, transitivity; no labels"
    Config = RelationsConfig

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"labels"})  # for evaluation and diagnostics only: training never reads them

    @classmethod
    def network(cls, cfg: ExperimentConfig) -> RelationsNet:
        backbone = build_backbone(cfg.model)
        m = cfg.method
        return RelationsNet(backbone, {"embed": EmbeddingHead(backbone.out_dim, cfg.model.embed_dim),
                                       "local": LocalHeads(backbone.out_dim, m.target_dim, m.subsets)})

    def build(self) -> None:
        self.build_network(partial=True)  # a step uses one local head of S
        self.criterion = self.margin_criterion(1)  # pseudo-classes change every epoch: one shared beta
        local = list(self.model.heads["local"].parameters())
        others = [p for p in self.trainable(self.net) if all(p is not q for q in local)]
        groups = [{"params": others}, {"params": local, "lr": self.ctx.cfg.optim.lr * self.cfg.local_lr_factor},
                  *self.beta_groups(self.criterion)]
        self.optimizer = make_optimizer(groups, self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)
        n = len(self.ctx.data.train)
        self.round = -1
        self.group_of = np.full(n, -1, np.int64)  # group index within its subset
        self.subset_of = np.full(n, -1, np.int64)
        self.component = np.full(n, -1, np.int64)  # pseudo-class of the global head
        self.targets = torch.zeros(0)  # S x G_max x d_t (rows past a subset's group count unused)
        self.counts = np.zeros(self.cfg.subsets, np.int64)  # groups per subset
        self.diagnostics: dict[str, float] = {}
        self.curves: list[list[float]] = []  # per round: precision of the k-th neighbour, k = 1..50
        self.rounds_log: list[dict[str, float]] = []  # per round: purity, coverage, ...

    # ---- the round controller -------------------------------------------------------------------
    def round_of(self, epoch: int) -> int:
        return min((epoch - 1) // self.cfg.epochs_per_round, self.cfg.rounds - 1)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        r = self.round_of(epoch)
        if r != self.round:  # a resume inside a round restores self.round: grouping is not run again
            self.new_round(r, epoch)

    def space(self, r: int):
        trunk = r == 0 or self.cfg.group_space == "trunk"
        return lambda x: F.normalize(self.model(x)["features"], dim=-1) if trunk else self.model(x)["embed"]

    def new_round(self, r: int, epoch: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.net.eval()
        try:
            feats = ctx.embed(self.space(r), ctx.data.train)
        finally:
            self.net.train()
        plan = None
        if ctx.is_main:
            plan = self.plan_round(l2_normalize(feats), r, epoch)
        plan = ctx.broadcast(plan)
        if "error" in plan:  # raised on every rank: none waits for the others
            raise ConfigError(plan["error"])
        self.round = r
        self.group_of, self.subset_of, self.component = plan["group_of"], plan["subset_of"], plan["component"]
        self.counts = self.group_counts()
        self.targets = plan["targets"].to(ctx.device)
        self.curves.append(plan["curve"])
        self.rounds_log.append(plan["log"])
        self.diagnostics = dict(plan["log"])
        heads = self.model.heads["local"]
        heads.reset(ctx.seed(r, 0x10C))
        for p in heads.parameters():  # new heads start without the old ones' optimizer moments
            self.optimizer.state.pop(p, None)
        if ctx.is_main:
            log = plan["log"]
            say(f"[reprlab] epoch {epoch}: round {r} ({cfg.mode}): {int(log['n_groups'])} groups in "
                f"{int(log['n_subsets'])} subsets, coverage {log['coverage']:.2f}")
            self.write_figures(plan["members"], plan["subset"])

    def plan_round(self, feats: np.ndarray, r: int, epoch: int) -> dict:
        """Rank 0: groups, subsets and targets of round ``r`` (diagnostics read the labels)."""
        cfg, ctx = self.cfg, self.ctx
        seed = ctx.seed(r, 0x6E0) % 2**20  # faiss takes a 32-bit seed
        n = len(feats)
        truth = ctx.data.targets
        knn = rel.neighbours(feats, max(cfg.k_nn, 50))
        curve = rel.neighbour_precision(knn[:, :50], truth).tolist()
        groups = rel.find_groups(feats, cfg.group_size, cfg.k_nn, cfg.coverage_of(r),
                                 compact=cfg.grouping == "compact", seed=seed, knn=knn[:, : cfg.k_nn])
        group_of = np.full(n, -1, np.int64)
        subset_of = np.full(n, -1, np.int64)
        component = np.full(n, -1, np.int64)
        log = {"round": float(r), "n_groups": float(len(groups)), "raw_precision": float(curve[cfg.group_size - 2])}
        if cfg.mode == "kmeans":  # DeepCluster-style: as many clusters as the round's groups
            component = kmeans(feats, max(2, len(groups)), niter=20, nredo=1, seed=seed)
            subset = np.zeros(0, np.int64)
            targets = torch.zeros(0)
            log.update(coverage=1.0, n_subsets=0.0, group_purity=rel.pair_precision(component, truth),
                       subset_dissim=float("nan"))
        else:
            subset = rel.partition_groups(rel.centroids(feats, groups), groups.compactness, cfg.subsets,
                                          cfg.delta_quantile, seed=seed)
            largest = 0
            targets_list = []
            for s in range(cfg.subsets):
                mine = np.flatnonzero(subset == s)
                members = groups.members[mine]
                group_of[members.ravel()] = np.repeat(np.arange(len(mine)), members.shape[1])
                subset_of[members.ravel()] = s
                targets_list.append(rel.random_targets(max(len(mine), 1), cfg.target_dim, ctx.seed(r, s, 0x7A6)))
                largest = max(largest, len(mine))
            if not any((subset == s).sum() >= 2 for s in range(cfg.subsets)):
                return {"error": f"training: relations round {r} (epoch {epoch}): no subset holds two groups "
                                 f"({len(groups)} groups of {cfg.group_size} from {n} images); lower method.subsets "
                                 "or method.group_size, or raise method.coverage"}
            targets = torch.zeros(cfg.subsets, max(largest, 1), cfg.target_dim)
            for s, t in enumerate(targets_list):
                targets[s, : len(t)] = t
            kept = subset >= 0
            component = groups.labels(n)  # until the first inference: the groups are the pseudo-classes
            component[subset_of < 0] = -1
            _, component[component >= 0] = np.unique(component[component >= 0], return_inverse=True)
            log.update(coverage=float((subset_of >= 0).mean()), n_subsets=float(cfg.subsets),
                       group_purity=rel.pair_precision(groups.labels(n), truth),
                       subset_dissim=rel.subset_dissimilarity(groups, np.where(kept, subset, -1), truth),
                       dropped=float((~kept).sum()))
        return {"group_of": group_of, "subset_of": subset_of, "component": component, "targets": targets,
                "curve": curve, "log": log, "members": groups.members, "subset": subset}

    # ---- batches and steps -------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[tuple]:
        ctx, d = self.ctx, self.ctx.cfg.data
        iterations = ctx.iterations_per_epoch()
        second = self.pseudo_class_batches(epoch, iterations, GLOBAL_STREAM)
        if self.cfg.mode == "kmeans":
            first = self.pseudo_class_batches(epoch, iterations, SECOND_STREAM)
            subsets = np.full(iterations, -1)
        else:
            sampler = ClusterRoundRobinSampler(
                np.maximum(self.group_of, 0), self.subset_of, d.classes_per_batch, d.samples_per_class, iterations,
                rank=ctx.rank, world_size=ctx.world_size, seed=ctx.cfg.experiment.seed)
            first, subsets = sampler.batches(epoch)
        if second is None:
            index = first
        else:
            index = np.concatenate([first, second], axis=1)
        labels = np.concatenate([self.first_labels(first), self.component[second]], axis=1) if second is not None \
            else self.first_labels(first)
        width = first.shape[1]  # this rank's shares: its columns of the local and of the global batch
        slots = ctx.rank * width + np.arange(width)
        if second is not None:
            slots = np.concatenate([slots, width * ctx.world_size + ctx.rank * second.shape[1] + np.arange(second.shape[1])])
        for (x, y), s in zip(ctx.train_batches(index, epoch, labels, slots=slots), subsets.tolist()):
            yield x, y, s, first.shape[1]

    def first_labels(self, index: np.ndarray) -> np.ndarray:
        return (self.component if self.cfg.mode == "kmeans" else self.group_of)[index]

    def pseudo_class_batches(self, epoch: int, iterations: int, stream: int) -> np.ndarray | None:
        """This rank's share of P x M batches over the current pseudo-classes (indices into the
        training set), or None when the global head does not train."""
        if self.cfg.mode != "kmeans" and (self.cfg.lambda_g == 0 or stream != GLOBAL_STREAM):
            return None
        ctx, d = self.ctx, self.ctx.cfg.data
        members = np.flatnonzero(self.component >= 0)
        sampler = ClassBalancedSampler(self.component[members], d.classes_per_batch, d.samples_per_class, iterations,
                                       rank=ctx.rank, world_size=ctx.world_size, seed=ctx.cfg.experiment.seed,
                                       stream=stream, repeat_classes=True)
        return members[sampler.batches(epoch)]

    def local_loss(self, emb: torch.Tensor, groups: torch.Tensor, subset: int) -> torch.Tensor:
        """Matching to the subset's random targets: softmax over its targets (``ce``) or the squared
        distance to the own target (``l2``), averaged over the gathered batch."""
        targets = self.targets[subset]
        if self.cfg.local_loss == "l2":
            return (emb - targets[groups]).pow(2).sum(1).mean()
        return F.cross_entropy(emb @ targets[: self.counts[subset]].T / self.cfg.tau, groups)

    def group_counts(self) -> np.ndarray:
        """Groups per subset."""
        counts = np.zeros(self.cfg.subsets, np.int64)
        mine = self.subset_of >= 0
        np.maximum.at(counts, self.subset_of[mine], self.group_of[mine] + 1)
        return counts

    def train_step(self, batch) -> dict[str, float]:
        x, y, subset, split = batch
        kmeans_mode = self.cfg.mode == "kmeans"
        out = self.net(x, **({} if kmeans_mode else {"subset": subset}))
        first_y = self.ctx.gather(y[:split])
        logs: dict[str, float] = {}
        if kmeans_mode:
            loss1, t1 = self.margin_loss(self.criterion, self.ctx.gather(out["embed"][:split]), first_y)
            loss2, t2 = self.margin_loss(self.criterion, self.ctx.gather(out["embed"][split:]), self.ctx.gather(y[split:]))
            loss = loss1 + loss2
            logs.update(margin=(loss1.item() + loss2.item()) / 2, triplets=float(t1 + t2))
        else:
            local = self.local_loss(self.ctx.gather(out["local"][:split]), first_y, subset)
            loss = local
            logs["local"] = local.item()
            if x.shape[0] > split:
                margin, triplets = self.margin_loss(self.criterion, self.ctx.gather(out["embed"][split:]),
                                                    self.ctx.gather(y[split:]))
                loss = loss + self.cfg.lambda_g * margin
                logs.update(margin=margin.item(), triplets=float(triplets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **logs}

    def images_per_step(self) -> int:
        two = self.cfg.mode == "kmeans" or self.cfg.lambda_g > 0
        return (2 if two else 1) * self.ctx.cfg.data.global_batch // self.ctx.world_size

    # ---- inference and consolidation ---------------------------------------------------------
    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()
        if self.cfg.mode == "kmeans":
            return
        cfg, ctx = self.cfg, self.ctx
        heads = self.model.heads["local"]
        self.net.eval()
        try:
            def both(x):
                feats = self.model.backbone(x)
                return torch.cat([self.model.heads["embed"](feats), heads.all(feats).flatten(1)], dim=1)
            rows = ctx.embed(both, ctx.data.train)
        finally:
            self.net.train()
        result = None
        if ctx.is_main:
            dim = self.ctx.cfg.model.embed_dim
            g, local = rows[:, :dim], rows[:, dim:].reshape(len(rows), cfg.subsets, cfg.target_dim)
            targets = self.targets.cpu().numpy()
            assign = np.full((len(rows), cfg.subsets), -1, np.int64)
            for s in range(cfg.subsets):
                if self.counts[s]:
                    assign[:, s] = rel.confident_assignments(local[:, s] @ targets[s, : self.counts[s]].T, cfg.gamma)
            grouped = np.where(self.subset_of >= 0, self.subset_of * (self.counts.max() + 1) + self.group_of, -1)
            comp = rel.coassignment_components(assign, cfg.votes, grouped if cfg.keep_groups else None)
            comp = rel.split_components(comp, l2_normalize(g), cfg.max_component, seed=ctx.seed(epoch, 0xC0) % 2**20)
            if (comp >= 0).sum() < 2 or comp.max() < 1:  # nothing reliable inferred: keep the groups
                comp = self.component
            truth = ctx.data.targets
            result = {"component": comp, "diag": {
                "relation_precision": rel.pair_precision(comp, truth),
                "component_coverage": float((comp >= 0).mean()),
                "n_components": float(comp.max() + 1),
                "assigned": float((assign >= 0).mean()),
            }}
        result = ctx.broadcast(result)
        self.component = result["component"]
        self.diagnostics.update(result["diag"])
        if self.rounds_log:
            self.rounds_log[-1].update(result["diag"])

    def epoch_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.diagnostics.items() if k != "round"} | {"round": float(self.round)}

    # ---- evaluation ------------------------------------------------------------------------------
    def embed_for_eval(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.evaluate == "local_concat":
            return F.normalize(self.model.heads["local"].all(self.model.backbone(x)).flatten(1), dim=1)
        return self.model(x)["embed"]

    # ---- figures -------------------------------------------------------------------------------
    def write_figures(self, members: np.ndarray, subset: np.ndarray) -> None:
        from reprlab.platform.eval.image import xy_png

        k = np.arange(1, len(self.curves[0]) + 1)
        self.ctx.write_artifact("knn_reliability.png", xy_png(
            {f"round {r}": (k, np.asarray(c)) for r, c in enumerate(self.curves)},
            "k (k-th nearest neighbour)", "precision (same class)", "kNN reliability per round (labels: diagnosis only)"))
        rounds = np.arange(len(self.rounds_log))
        series = {key: (rounds, np.array([log.get(key, np.nan) for log in self.rounds_log]))
                  for key in ("group_purity", "raw_precision", "coverage", "relation_precision")}
        self.ctx.write_artifact("purity_coverage.png", xy_png(series, "round", "share", "groups per round"))
        if len(subset):
            self.ctx.write_artifact("groups.png", self.groups_png(members, subset))

    def groups_png(self, members: np.ndarray, subset: np.ndarray, per_subset: int = 6) -> bytes:
        from reprlab.platform.data.pipeline import denormalize
        from reprlab.platform.eval.interpretation import grids_png, tile

        ds = self.ctx._dataset(self.ctx.data.train, augment=False)
        panels = {}
        for s in range(int(subset.max()) + 1):
            rows = members[subset == s][:per_subset]
            if not len(rows):
                continue
            x, _ = ds.__getitems__(rows.ravel().tolist())
            x = x.float() / 255 if x.dtype == torch.uint8 else denormalize(x)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            panels[f"subset {s}"] = tile(x.clamp(0, 1), len(rows))
        return grids_png(panels, f"round {self.round}: sample groups (one row each)")

    # ---- state ------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"round": self.round, "group_of": torch.from_numpy(self.group_of),
                "subset_of": torch.from_numpy(self.subset_of), "component": torch.from_numpy(self.component),
                "targets": self.targets.cpu(), "diagnostics": dict(self.diagnostics), "curves": list(self.curves),
                "rounds_log": [dict(x) for x in self.rounds_log]}

    def load_extra_state(self, state: dict) -> None:
        if "round" not in state:
            return
        self.round = int(state["round"])
        self.group_of, self.subset_of = state["group_of"].numpy(), state["subset_of"].numpy()
        self.component = state["component"].numpy()
        self.counts = self.group_counts()
        self.targets = state["targets"].to(self.ctx.device)
        self.diagnostics, self.curves = dict(state["diagnostics"]), list(state["curves"])
        self.rounds_log = [dict(x) for x in state["rounds_log"]]
