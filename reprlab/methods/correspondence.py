"""Weakly supervised dense semantic correspondence (Ufer, Lui, Schwarz, Warkentin, Ommer; GCPR 2019 /
arXiv 1906.06978). No code was published and the paper's body could not be read: the loop below is
our reading of the abstract (specs/correspondence.md) [design]. The only supervision is the image
category.

    1 warm-up (``warmup_epochs``): category classification of single images, global pool + linear
      on the feature net's body, cross entropy (image labels only; stands in for pretraining)
    2 features (``feature_epochs``): every ``remine_every`` epochs draw a pool of same-category
      training pairs from (seed, round) and MINE matches on it (rank 0, broadcast):
          mutual NN of the descriptors -> RANSAC affine, inliers within tau x side  (``geometric``)
      each step, on the global batch of pool pairs from (seed, epoch, iteration):
          negatives = hardest cells of B farther than r_neg x side from the match
          L_feat = y d^2 + (1 - y) relu(m - d)^2            (contrastive, mined positives)
    3 flow (``flow_epochs``): the flow net on the correlation of A and B (features frozen, or
      fine-tuned with ``joint``), both directions, on the same mined pools; it refines the
      soft-argmax of the correlation, or (``flow_init: affine``) the pair's affine fit to its
      mined matches:
          L_flow = Charbonnier(p + u(p) - q) on mined matches + w_s edge-aware TV(u)
                 + w_f (1 - cos(f_A(p), f_B(p + u(p)))) on predicted foreground
                 + w_m BCE(mask_A(p), mask_B(p + u(p))) + w_a (mean(mask) - prior)^2
                 + w_c BCE(mask_A(p), [p among the prior's fraction of A's cells least like
                   mean_q f_B(q)])        (the figure-ground contrast: ours, not the spec's)

Ground truth never enters ``train_step``: its batches (:class:`ImageBatch`, :class:`PairBatch`)
hold images, the category and the mined matches. Every loss is computed on the gathered global
batch, so a run on several workers equals the in-process one.

``evaluate(split)`` on the split's fixed pairs: PCK of the dense flow (``flow``: ``net``, or the
parametric ``affine`` / ``tps`` fits to matches mined on the pair, ``nn`` the descriptors' argmax,
``identity``), ``nn_pck`` of the descriptors alone, EPE on A's foreground, mask IoU of the flow net's
masks (and of an all-foreground mask), the precision of matches mined on the pairs (the configured
filter and raw mutual NN) and the stereo sanity pair's PCK. ``baseline``: the evaluation-only
``identity`` flow, ``raw_pixels`` (3 x 3 pixel patches as descriptors) and ``random_init`` (the
untrained networks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.log import say
from reprlab.platform.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from reprlab.platform.data.types import ImageSet
from reprlab.platform.eval import correspondence as ev
from reprlab.platform.nn import flownet as fl
from reprlab.platform.nn.matching import (
    Matches,
    affine_flow,
    fit_affine,
    fit_tps,
    hardest_negatives,
    invert_affine,
    match_contrastive_loss,
    mine_matches,
    ransac_affine,
    similarity,
    tps_flow,
)
from reprlab.platform.nn.msconv import build_feature_net

PHASES = ("init", "warmup", "features", "flow")
METRICS = ("pck@0.05", "pck@0.1", "pck@0.15", "nn_pck@0.1", "epe", "mask_iou", "mask_iou_all_fg",
           "mined_precision", "mined_count", "raw_precision", "raw_count", "stereo_pck@0.02", "stereo_pck@0.05")


class CorrespondenceConfig(MethodConfig):
    name: Literal["correspondence"] = "correspondence"
    baseline: Literal["none", "identity", "raw_pixels", "random_init"] = Field(
        "none", description="evaluation-only baselines (no training): identity flow, 3x3 raw-pixel NN, untrained nets")
    # phases (train.epochs must be their sum)
    warmup_epochs: int = Field(1, ge=0, description="category classification on single images")
    feature_epochs: int = Field(2, ge=0, description="feature learning on mined matches")
    flow_epochs: int = Field(1, ge=0, description="the flow network")
    joint: bool = Field(False, description="fine-tune the features with the flow net (else frozen)")
    # the feature net (trunk: model.backbone / width / pretrained; descriptor size: model.embed_dim)
    head: Literal["msconv", "plain_params", "plain_rf"] = "msconv"
    blocks: int = Field(2, ge=1, description="MSConv blocks (the plain heads are derived to match them)")
    dilations: list[int] = Field([1, 2, 4, 8], description="one MSConv branch per dilation (or stride); also '1,2,4' "
                                 "(a sweep's categorical values must be strings)")
    shared_kernel: bool = False
    branch: Literal["dilated", "strided"] = "dilated"
    mixture: Literal["channel", "layer"] = "channel"
    fixed_uniform: bool = Field(False, description="the mixture stays uniform (not learned)")
    padding: Literal["zeros", "replicate"] = Field(
        "zeros", description="how the feature net's convolutions pad (zeros lets descriptors encode position)")
    # mining and the feature loss
    geometric: bool = Field(True, description="RANSAC-affine filter of the mutual nearest neighbours (false: raw)")
    tau: float = Field(0.05, gt=0, description="the spec's tau_px: RANSAC inlier distance, a fraction of the image side")
    r_neg: float = Field(0.1, gt=0, description="negatives lie farther than r_neg x side from the match")
    margin: float = Field(1.0, gt=0, description="m of the contrastive loss")
    remine_every: int = Field(1, ge=1, description="epochs between minings (a new pool of pairs each time)")
    pool_pairs: int = Field(256, ge=1, description="training pairs drawn and mined per mining")
    hypotheses: int = Field(256, ge=8, description="RANSAC minimal sets per pair")
    mine_chunk: int = Field(64, ge=1, description="pairs mined at once (each chunk has its own RANSAC stream)")
    # the flow net and L_flow
    flow: Literal["net", "nn", "affine", "tps", "identity"] = Field(
        "net", description="the evaluated dense flow: the flow net, the descriptors' argmax, or fits to mined matches")
    flow_width: int = Field(32, ge=4)
    flow_init: Literal["soft_argmax", "affine"] = Field(
        "soft_argmax", description="what the flow net refines: the correlation's soft-argmax, or the pair's affine "
        "fit to its mined matches (an untrained net then gives the affine baseline's flow)")
    topk: int = Field(8, ge=1)
    w_s: float = Field(0.1, ge=0, description="edge-aware TV")
    w_f: float = Field(1.0, ge=0, description="feature consistency on predicted foreground")
    w_m: float = Field(0.1, ge=0, description="mask consistency")
    w_a: float = Field(1.0, ge=0, description="area prior")
    w_c: float = Field(0.0, ge=0, description="figure-ground contrast (ours): the mask on cells unlike most of the "
                       "other image")
    area_prior: float = Field(0.3, gt=0, lt=1, description="expected foreground fraction")
    tps_reg: float = Field(0.01, ge=0, description="TPS smoothing of the tps baseline")
    # evaluation
    eval_pairs: int | None = Field(None, ge=1, description="evaluate the first N pairs of a split (default: all)")
    diag_pairs: int = Field(64, ge=1, description="val pairs of the mining diagnostic at each mining")
    stereo: bool = Field(True, description="stereo_pck on scikit-image's motorcycle pair (1/4 scale)")
    stereo_points: int = Field(2000, ge=10, description="left pixels matched in the stereo check")
    figure_pairs: int = Field(6, ge=1, le=16)

    @field_validator("dilations", mode="before")
    @classmethod
    def _dilation_string(cls, v: Any) -> Any:
        return [int(d) for d in v.split(",")] if isinstance(v, str) else v

    def check_against(self, cfg: ExperimentConfig) -> None:
        if self.baseline != "none":
            return
        total = self.warmup_epochs + self.feature_epochs + self.flow_epochs
        if cfg.train.epochs != total:
            raise ConfigError(f"config: train.epochs: the phases (method.warmup_epochs + feature_epochs + flow_epochs) "
                              f"add up to {total} epochs, got train.epochs={cfg.train.epochs}")
        side = getattr(getattr(cfg.data, "synthcorr", None), "side", None)
        if cfg.data.name == "synthcorr" and side != cfg.data.image_size:
            raise ConfigError(f"config: data.image_size: synthcorr images are data.synthcorr.side={side} px, "
                              f"got data.image_size={cfg.data.image_size}")
        if cfg.data.image_size % 4:
            raise ConfigError(f"config: data.image_size: the feature net has stride 4; {cfg.data.image_size} is not a multiple")


@dataclass
class ImageBatch:
    """A warm-up batch: this rank's images (N x 3 x S x S in [0, 1]) and their categories."""

    images: torch.Tensor
    category: torch.Tensor


@dataclass
class PairBatch:
    """A batch of same-category pairs: this rank's images and categories, and the matches mined on
    the whole global batch (from the mining cache; none of it is ground truth)."""

    img_a: torch.Tensor
    img_b: torch.Tensor
    category: torch.Tensor
    matches: Matches


class CorrespondenceNet(nn.Module):
    """The feature net and the warm-up classifier (global average pool + linear on its body) as one
    module: ``forward(x)`` gives descriptors, ``forward(x, classify=True)`` category logits."""

    def __init__(self, features: nn.Module, classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(features.body_dim, max(classes, 1))

    def forward(self, x: torch.Tensor, classify: bool = False) -> torch.Tensor:
        if classify:
            return self.classifier(self.features.body(x).mean((2, 3)))
        return self.features(x)


def normalize_input(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def raw_pixel_descriptors(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 RGB patches around every pixel, L2-normalized: N x 27 x H x W (stride 1)."""
    n, _, h, w = x.shape
    return F.normalize(F.unfold(x, 3, padding=1).view(n, 27, h, w), dim=1)


def _resize(px: np.ndarray, side: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """uint8 H x W x 3 -> 3 x side x side in [0, 1] and the scale (sx, sy) of the resize."""
    x = torch.from_numpy(np.array(px, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    h, w = x.shape[1:]
    if (h, w) != (side, side):
        x = F.interpolate(x[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1), (side / w, side / h)


def load_images(images: ImageSet, index: np.ndarray, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``index`` of a set at side x side (N x 3 x S x S in [0, 1]) and their scales (N x 2)."""
    out, scales = [], []
    for i in np.asarray(index):
        px = images.pixels[i] if images.pixels is not None else np.asarray(images.load(int(i)))
        if px.shape[-1] == 1:
            px = np.repeat(px, 3, -1)
        x, s = _resize(px, side)
        out.append(x)
        scales.append(s)
    return torch.stack(out), torch.tensor(scales, dtype=torch.float32).reshape(-1, 2)


class PairSource:
    """Same-category training pairs without ground truth: drawn from the embedded set's material,
    or picked from a stored pair list (PF-PASCAL / PF-WILLOW style: images and category)."""

    def __init__(self, ctx) -> None:
        self.side = ctx.cfg.data.image_size
        extra = getattr(_dataset_spec(ctx.cfg.data.name), "extra", None) or {}
        self.material, self.draw_fn = None, None
        if "pair_material" in extra:
            self.material = extra["pair_material"](ctx.cfg.data, "train")
            self.draw_fn = extra["draw_pairs"]
        elif ctx.data.train.target is not None:
            self.images = ctx.data.train
        else:
            raise ConfigError(f"config: data.name: {ctx.cfg.data.name} has neither pair material nor stored pairs "
                              "to draw training pairs from")

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.material is not None:
            return self.draw_fn(self.material, n, generator)
        rows = torch.randint(len(self.images), (n,), generator=generator).numpy()
        a, _ = load_images(self.images, rows, self.side)
        b, _ = load_images(self.images.target, rows, self.side)
        return a, b, torch.from_numpy(np.asarray(self.images.labels)[rows])


def _dataset_spec(name: str):
    from reprlab.platform.core.registry import DATASETS

    return DATASETS.get(name)


@dataclass
class EvalPairs:
    """A split's fixed pairs at side x side, keypoints in that frame, ground truth where the set has
    it (else None); ``scale_b`` maps B's resized frame back to its original one for PCK."""

    img_a: torch.Tensor
    img_b: torch.Tensor
    kp_a: torch.Tensor
    kp_b: torch.Tensor  # original frame of B
    box_b: torch.Tensor  # original frame of B
    scale_b: torch.Tensor  # N x 2
    flow: torch.Tensor | None
    mask_a: torch.Tensor | None
    mask_b: torch.Tensor | None

    def rows(self, s: slice) -> EvalPairs:
        return EvalPairs(*(None if getattr(self, f.name) is None else getattr(self, f.name)[s] for f in fields(self)))

    def __len__(self) -> int:
        return len(self.img_a)


def eval_pairs(images: ImageSet, side: int, limit: int | None = None) -> EvalPairs:
    n = len(images) if limit is None else min(limit, len(images))
    index = np.arange(n)
    img_a, scale_a = load_images(images, index, side)
    img_b, scale_b = load_images(images.target, index, side)
    kp_a = torch.from_numpy(np.asarray(images.dense["keypoints"].values[:n], np.float32)) * scale_a[:, None]
    kp_b = torch.from_numpy(np.asarray(images.dense["target_keypoints"].values[:n], np.float32))
    box_b = torch.from_numpy(np.asarray(images.meta["target_box"][:n], np.float32))
    dense = images.dense or {}
    flow = mask_a = mask_b = None
    if "flow" in dense and bool((scale_a == 1).all() and (scale_b == 1).all()):
        flow = torch.from_numpy(np.asarray(dense["flow"].values[:n], np.float32))
        mask_a = torch.from_numpy(np.asarray(dense["mask"].values[:n])).bool()
        mask_b = torch.from_numpy(np.asarray(dense["target_mask"].values[:n])).bool()
    return EvalPairs(img_a, img_b, kp_a, kp_b, box_b, scale_b, flow, mask_a, mask_b)


@register_method
class Correspondence(Method):
    name = "correspondence"
    description = ("Weakly supervised dense semantic correspondence (GCPR 2019), our reading: multi-scale conv "
                   "features on mined matches, then a semantic flow net")
    Config = CorrespondenceConfig
    selection_metric = headline_metric = "pck@0.1"
    lower_is_better = frozenset({"epe"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"labels", "keypoints"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return METRICS

    # ---- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        c, ctx = self.cfg, self.ctx
        self.side = ctx.cfg.data.image_size
        self.phase = "init"
        self.round = -1  # the mining round the cache holds
        self.pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # uint8 A, B, category
        self._pool_round = -1
        self.cache: Matches | None = None
        self.mining_history: list[list[float]] = []  # epoch, precision, count, raw precision, raw count, pool count
        self.mixture_history: list[tuple[int, dict[str, list[float]]]] = []
        self._eval: dict[str, EvalPairs] = {}
        self.net = self.flow_net = None
        if c.baseline in ("identity", "raw_pixels"):
            return
        m = ctx.cfg.model
        torch.manual_seed(ctx.cfg.experiment.seed)  # identical initial weights on every rank
        features = build_feature_net(m.backbone, m.width, m.pretrained, m.embed_dim, c.blocks, c.head, c.dilations,
                                     c.shared_kernel, c.branch, c.mixture, c.fixed_uniform, m.freeze_bn, c.padding)
        net = CorrespondenceNet(features, ctx.data.num_classes)
        flow = fl.SemanticFlowNet(m.embed_dim, c.flow_width, c.topk, init_input=c.flow_init == "affine")
        if ctx.is_main:
            match = f", matched to MSConv: width {features.match.width}, depth {features.match.depth}" if features.match else ""
            say(f"[reprlab] correspondence: {c.head} head{match}, {sum(p.numel() for p in features.parameters()):,} "
                f"feature parameters, {sum(p.numel() for p in flow.parameters()):,} flow parameters")
        self.net = ctx.prepare(net, partial=True)  # warm-up leaves the projection unused, descriptors the classifier
        self.flow_net = ctx.prepare(flow)
        self._record_mixture(0)
        if c.baseline != "none":
            return
        self.source = PairSource(ctx)
        lr, wd = ctx.cfg.optim.lr, ctx.cfg.optim.weight_decay
        feats = list(unwrap(self.net).features.parameters())
        self.opt_warmup = torch.optim.Adam(unwrap(self.net).parameters(), lr=lr, weight_decay=wd)
        self.opt_features = torch.optim.Adam(feats, lr=lr, weight_decay=wd)
        self.opt_flow = torch.optim.Adam(list(self.flow_net.parameters()) + (feats if c.joint else []), lr=lr)

    @property
    def features(self):
        return unwrap(self.net).features

    def phase_of(self, epoch: int) -> str:
        c = self.cfg
        if epoch <= 0:
            return "init"
        if epoch <= c.warmup_epochs:
            return "warmup"
        return "features" if epoch <= c.warmup_epochs + c.feature_epochs else "flow"

    def round_of(self, epoch: int) -> int:
        """The mining round of a features / flow epoch (a new one every ``remine_every`` epochs)."""
        return (epoch - self.cfg.warmup_epochs - 1) // self.cfg.remine_every

    # ---- hooks ----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        if self.cfg.baseline != "none":
            return
        phase = self.phase_of(epoch)
        if phase != self.phase and self.ctx.is_main:
            say(f"[reprlab] correspondence: epoch {epoch}: {phase} phase")
        self.phase = phase
        frozen = phase == "flow" and not self.cfg.joint
        self.net.train(not frozen)
        if phase in ("features", "flow"):
            r = self.round_of(epoch)
            self._draw_pool(r)
            if r != self.round:  # a resumed run holds its round's matches: no re-mining
                self.mine(r, epoch)

    def on_epoch_end(self, epoch: int) -> None:
        if self.net is not None and self.cfg.baseline == "none":
            self._record_mixture(epoch)

    def _record_mixture(self, epoch: int) -> None:
        weights = {k: v.tolist() for k, v in self.features.mixture_weights().items()}
        if weights:
            self.mixture_history.append((epoch, weights))

    # ---- mining ---------------------------------------------------------------------------------
    def _draw_pool(self, r: int) -> None:
        """The round's pool of training pairs, from (seed, round): the same on every rank and after a
        resume (images only; stored as bytes)."""
        if self.pool is not None and self._pool_round == r:
            return
        a, b, cat = self.source.draw(self.cfg.pool_pairs, torch.Generator().manual_seed(self.ctx.seed(r, 0xC0)))
        u8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
        self.pool, self._pool_round = (u8(a), u8(b), cat), r

    @torch.no_grad()
    def _descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors of images in [0, 1] (eval mode, in chunks of ``eval.batch_size``), on the CPU."""
        net = self.features
        was = net.training
        net.eval()
        try:
            bs = self.ctx.cfg.eval.batch_size
            return torch.cat([net(normalize_input(x[i : i + bs].to(self.ctx.device))).float().cpu()
                              for i in range(0, len(x), bs)])
        finally:
            net.train(was)

    def _mine(self, fa: torch.Tensor, fb: torch.Tensor, key: int, geometric: bool) -> Matches:
        """Matches of descriptor maps (N pairs, on the CPU), in chunks of ``mine_chunk`` pairs, chunk
        i's RANSAC drawn from (seed, key, i): the same whatever the number of workers."""
        c, stride = self.cfg, self.side / fa.shape[-1]
        parts = []
        for i, lo in enumerate(range(0, len(fa), c.mine_chunk)):
            g = torch.Generator().manual_seed(self.ctx.seed(key, i, 0x3A7))
            parts.append(mine_matches(fa[lo : lo + c.mine_chunk], fb[lo : lo + c.mine_chunk], stride,
                                      c.tau * self.side, c.hypotheses, g, geometric))
        return Matches(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Matches)))

    def mine(self, r: int, epoch: int) -> None:
        """Mine the round's pool (rank 0; broadcast), and run the mining diagnostic on val pairs."""
        ctx = self.ctx
        result = None
        if ctx.is_main:
            a, b, _ = self.pool
            matches = self._mine(self._descriptors(a.float() / 255), self._descriptors(b.float() / 255), r,
                                 self.cfg.geometric)
            diag = self._mining_diagnostic(epoch)
            result = (matches.state_dict(), diag)
        state, diag = ctx.broadcast(result)
        self.cache, self.round = Matches.from_state_dict(state), r
        self.mining_history.append([float(epoch), *diag, float(self.cache.count().float().mean())])
        if ctx.is_main:
            say(f"[reprlab] correspondence: mined round {r}: {self.mining_history[-1][-1]:.1f} matches per pair; "
                f"val precision {diag[0]:.3f} (raw mutual NN {diag[2]:.3f})")

    def _mining_diagnostic(self, epoch: int) -> list[float]:
        """Precision and count of matches mined on the first val pairs (the configured filter, then
        raw mutual NN): ground truth used here only, outside ``train_step``."""
        if "val" not in self.ctx.data.eval_splits:
            return [float("nan")] * 4
        pairs = self._pairs("val").rows(slice(0, self.cfg.diag_pairs))
        if pairs.flow is None:
            return [float("nan")] * 4
        fa, fb = self._descriptors(pairs.img_a), self._descriptors(pairs.img_b)
        return [*self._precision(fa, fb, pairs, self.cfg.geometric), *self._precision(fa, fb, pairs, False)]

    def _precision(self, fa, fb, pairs: EvalPairs, geometric: bool) -> list[float]:
        m = self._mine(fa, fb, 0x7E57, geometric)
        box = ev.mask_box(pairs.mask_b)
        p = ev.match_precision(m.pos_a, m.pos_b, m.valid, pairs.flow, box, (self.side, self.side))
        return [p["precision"], p["count"]]

    # ---- batches and steps ----------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return 0 if self.cfg.baseline != "none" else self.ctx.iterations_per_epoch()

    def images_per_step(self) -> int:
        return self.ctx.local_batch() * (1 if self.phase == "warmup" else 2)

    def batches(self, epoch: int) -> Iterator[ImageBatch | PairBatch]:
        ctx = self.ctx
        if self.cfg.baseline != "none":
            return
        if self.phase == "warmup":
            train = ctx.data.train
            targets = torch.from_numpy(ctx.data.targets)
            for rows in ctx.plain_batches(epoch):
                x, _ = load_images(train, rows, self.side)
                yield ImageBatch(x.to(ctx.device), targets[rows].to(ctx.device))
            return
        a, b, cat = self.pool
        n, share = ctx.cfg.data.global_batch, ctx.share()
        for it in range(self.steps_per_epoch()):
            rows = torch.randint(len(a), (n,), generator=torch.Generator().manual_seed(ctx.seed(epoch, it, 0xBA7)))
            m = Matches(*(getattr(self.cache, f.name)[rows].to(ctx.device) for f in fields(Matches)))
            mine = rows[share]
            yield PairBatch((a[mine].float() / 255).to(ctx.device), (b[mine].float() / 255).to(ctx.device),
                            cat[mine].to(ctx.device), m)

    def train_step(self, batch: ImageBatch | PairBatch) -> dict[str, float]:
        if isinstance(batch, ImageBatch):
            return self._warmup_step(batch)
        if self.phase == "features":
            return self._feature_step(batch)
        return self._flow_step(batch)

    def _warmup_step(self, batch: ImageBatch) -> dict[str, float]:
        logits = self.net(normalize_input(batch.images), classify=True)
        loss = self.ctx.global_mean(F.cross_entropy(logits, batch.category, reduction="none"))
        self.opt_warmup.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_warmup.step()
        acc = (logits.argmax(1) == batch.category).float().mean().item()
        return {"loss": loss.item(), "warmup_acc": acc}

    def _feature_step(self, batch: PairBatch) -> dict[str, float]:
        c, ctx = self.cfg, self.ctx
        fa = ctx.gather(self.net(normalize_input(batch.img_a)))  # the global batch; gradients to this rank's rows
        fb = ctx.gather(self.net(normalize_input(batch.img_b)))
        m, stride = batch.matches, self.side / fa.shape[-1]
        neg, neg_valid = hardest_negatives(fa.detach(), fb.detach(), m, c.r_neg * self.side, stride)
        loss = match_contrastive_loss(fa, fb, m, neg, neg_valid, c.margin)
        self.opt_features.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_features.step()
        return {"loss": loss.item(), "matches": m.count().float().mean().item()}

    def _affine_init(self, theta: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The flows A -> B and B -> A (pixels, on the h x w map) of affine maps A -> B."""
        stride = self.side / w
        return affine_flow(theta, h, w, stride).float(), affine_flow(invert_affine(theta), h, w, stride).float()

    def _flow_step(self, batch: PairBatch) -> dict[str, float]:
        c, ctx, size, m = self.cfg, self.ctx, (self.side, self.side), batch.matches
        with torch.set_grad_enabled(c.joint):
            fa_l, fb_l = self.net(normalize_input(batch.img_a)), self.net(normalize_input(batch.img_b))
        init = ()
        if c.flow_init == "affine":  # the global batch's cached matches (RANSAC inliers): their LS fit, this rank's rows
            theta, _ = fit_affine(m.pos_a, m.pos_b, m.valid.to(m.pos_a.dtype))
            init = self._affine_init(theta[ctx.share()], *fa_l.shape[-2:])
        out = self.flow_net(fa_l, fb_l, size, *init)
        g = ctx.gather
        fa, fb = g(fa_l), g(fb_l)
        flow = torch.cat([g(out.flow_ab), g(out.flow_ba)])  # both directions of the global batch
        logit_src, logit_dst = torch.cat([g(out.logit_a), g(out.logit_b)]), torch.cat([g(out.logit_b), g(out.logit_a)])
        guide = torch.cat([g(batch.img_a), g(batch.img_b)])
        terms = {
            "charbonnier": fl.charbonnier_match_loss(flow, torch.cat([m.pos_a, m.pos_b]), torch.cat([m.pos_b, m.pos_a]),
                                                     torch.cat([m.valid, m.valid]), size),
            "tv": fl.edge_aware_tv(flow, guide),
            "feature": fl.feature_consistency_loss(torch.cat([fa, fb]), torch.cat([fb, fa]), flow,
                                                   torch.sigmoid(logit_src), size),
            "mask": fl.mask_consistency_loss(logit_src, logit_dst, flow, size),
            "area": fl.area_prior_loss(logit_src, c.area_prior),
            "contrast": fl.contrast_loss(torch.cat([fa, fb]).detach(), torch.cat([fb, fa]).detach(),
                                         logit_src, c.area_prior),
        }
        loss = (terms["charbonnier"] + c.w_s * terms["tv"] + c.w_f * terms["feature"] + c.w_m * terms["mask"]
                + c.w_a * terms["area"] + c.w_c * terms["contrast"])
        self.opt_flow.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_flow.step()
        return {"loss": loss.item(), **{f"flow_{k}": v.item() for k, v in terms.items()}}

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"phase": self.phase, "round": self.round,
                "cache": None if self.cache is None else self.cache.state_dict(),
                "mining_history": [list(map(float, h)) for h in self.mining_history],
                "mixture_history": [(e, {k: list(v) for k, v in w.items()}) for e, w in self.mixture_history]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.phase = state.get("phase", "init")
        self.round = int(state.get("round", -1))
        cache = state.get("cache")
        self.cache = None if cache is None else Matches.from_state_dict(cache)
        self.mining_history = [list(h) for h in state.get("mining_history", [])]
        self.mixture_history = [(int(e), dict(w)) for e, w in state.get("mixture_history", [])]
        if self.round >= 0 and self.cfg.baseline == "none":
            self._draw_pool(self.round)  # the pool's images are a function of (seed, round)

    def epoch_metrics(self) -> dict[str, float]:
        out = {"phase": float(PHASES.index(self.phase)), "selectable": float(not self._flow_untrained())}
        if self.mining_history:
            _, prec, count, raw_prec, raw_count, pool = self.mining_history[-1]
            out |= {"mined_count": pool, "val_mined_precision": prec, "val_mined_count": count,
                    "val_raw_precision": raw_prec, "val_raw_count": raw_count}
        if self.mixture_history:
            for layer, w in self.mixture_history[-1][1].items():
                out |= {f"mix/{layer}/d{d}": float(v) for d, v in zip(self.cfg.dilations, w)}
        return out

    # ---- evaluation -----------------------------------------------------------------------------
    def _pairs(self, split: str) -> EvalPairs:
        if split not in self._eval:
            self._eval[split] = eval_pairs(self.ctx.data.eval_splits[split].query, self.side, self.cfg.eval_pairs)
        return self._eval[split]

    def evaluate(self, split: str) -> dict[str, float]:
        pairs = self._pairs(split)
        result = self._evaluate(split, pairs) if self.ctx.is_main else None
        return self.ctx.broadcast(result)  # rank 0 computes, every rank returns the same

    def _describe(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.baseline == "raw_pixels":
            return raw_pixel_descriptors(x)
        return self._descriptors(x)

    @torch.no_grad()
    def _flow_and_masks(self, pairs: EvalPairs, fa, fb) -> tuple[torch.Tensor, tuple | None, torch.Tensor | None]:
        """The dense flow A -> B at full resolution (per ``flow``), the flow net's masks (A, B; None
        when it did not train) and its flow B -> A at full resolution (for warp.png)."""
        c, size, n = self.cfg, (self.side, self.side), len(pairs)
        kind = "identity" if c.baseline == "identity" else ("nn" if c.baseline == "raw_pixels" else c.flow)
        masks = flow_ba = theta = m = None
        refines = self.flow_net is not None and c.flow_init == "affine"  # the flow net refines the affine fit
        if kind in ("affine", "tps") or refines:  # matches mined on the pairs, once
            m = self._mine(fa, fb, 0xF17, c.geometric)
        if kind == "affine" or refines:
            theta, _ = ransac_affine(m.pos_a, m.pos_b, m.valid, c.tau * self.side, c.hypotheses,
                                     torch.Generator().manual_seed(self.ctx.seed(0xAFF)))
        if self.flow_net is not None:
            net = unwrap(self.flow_net)
            net.eval()
            dev, outs, inits = self.ctx.device, [], []
            for i in range(0, n, 64):
                init = () if not refines else tuple(t.to(dev) for t in self._affine_init(theta[i : i + 64], *fa.shape[-2:]))
                outs.append(net(fa[i : i + 64].to(dev), fb[i : i + 64].to(dev), size, *init))
                inits.append(init)
            net.train()
            up = lambda t: F.interpolate(torch.cat(t).float().cpu(), size=size, mode="bilinear", align_corners=False)  # noqa: E731
            if not refines:
                net_ab, flow_ba = up([o.flow_ab for o in outs]), up([o.flow_ba for o in outs])
            else:  # the fit at full resolution plus the upsampled residual (an untrained net: the fit exactly)
                net_ab = affine_flow(theta, *size).float() + up([o.flow_ab - i[0] for o, i in zip(outs, inits)])
                flow_ba = (affine_flow(invert_affine(theta), *size).float()
                           + up([o.flow_ba - i[1] for o, i in zip(outs, inits)]))
            if c.flow_epochs > 0 or c.baseline == "random_init":  # masks of a flow net that trains (or the floor)
                masks = (up([o.logit_a for o in outs])[:, 0] > 0, up([o.logit_b for o in outs])[:, 0] > 0)
        if kind == "net":
            flow = net_ab
        elif kind == "identity":
            flow = torch.zeros(n, 2, *size)
        elif kind == "nn":
            step = max(1, int(3e7 // (fa.shape[-2] * fa.shape[-1]) ** 2))  # pairs per similarity block
            flow = torch.cat([self._nn_flow(fa[i : i + step], fb[i : i + step]) for i in range(0, n, step)])
        elif kind == "affine":
            flow = affine_flow(theta, *size)
        else:
            stride = self.side / fa.shape[-1]
            coarse = tps_flow(fit_tps(m.pos_a, m.pos_b, m.valid, self.side, c.tps_reg), *fa.shape[-2:], stride)
            flow = fl.upsample_flow(coarse.float(), size)
        return flow.float(), masks, flow_ba

    def _nn_flow(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """Each cell of A to its most similar cell of B, upsampled to full resolution."""
        h, w = fa.shape[-2:]
        best = similarity(fa, fb).argmax(-1)  # N x HWa
        stride = self.side / w
        ys, xs = torch.div(best, w, rounding_mode="floor"), best % w
        target = torch.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], 1).float().view(len(fa), 2, h, w)
        return fl.upsample_flow(target - fl.grid_points(h, w, (self.side, self.side)), (self.side, self.side))

    def _evaluate(self, split: str, pairs: EvalPairs) -> dict[str, float]:
        size, nan = (self.side, self.side), float("nan")
        out = {k: nan for k in METRICS}
        fa = fb = None
        if self.cfg.baseline != "identity":
            fa, fb = self._describe(pairs.img_a), self._describe(pairs.img_b)
        flow, masks, flow_ba = self._flow_and_masks(pairs, fa, fb)
        back = lambda kp: kp / pairs.scale_b[:, None]  # noqa: E731  B's resized frame -> its original one
        visible = torch.isfinite(pairs.kp_a).all(-1) & torch.isfinite(pairs.kp_b).all(-1)
        kp_a = torch.nan_to_num(pairs.kp_a)
        pred = back(ev.transfer_by_flow(kp_a, flow, size))
        out |= ev.pck(pred, pairs.kp_b, pairs.box_b, visible=visible)
        if fa is not None:
            nn_pred = back(ev.transfer_by_nn(kp_a, fa, fb, size))
            out |= ev.pck(nn_pred, pairs.kp_b, pairs.box_b, alphas=(0.1,), visible=visible, name="nn_pck")
        if pairs.flow is not None:
            out["epe"] = ev.epe(flow, pairs.flow, pairs.mask_a)
            all_fg = torch.ones_like(pairs.mask_a)
            out["mask_iou_all_fg"] = (ev.mask_iou(all_fg, pairs.mask_a) + ev.mask_iou(all_fg, pairs.mask_b)) / 2
            if masks is not None:
                out["mask_iou"] = (ev.mask_iou(masks[0], pairs.mask_a) + ev.mask_iou(masks[1], pairs.mask_b)) / 2
            if fa is not None and self.cfg.baseline != "raw_pixels":
                out["mined_precision"], out["mined_count"] = self._precision(fa, fb, pairs, self.cfg.geometric)
                out["raw_precision"], out["raw_count"] = self._precision(fa, fb, pairs, False)
        if self.cfg.stereo:
            out |= self._stereo()
        if split == "test":
            self._figures(pairs, flow, masks, flow_ba, pred)
        return {k: v for k, v in out.items() if math.isfinite(v)}  # what the set or the variant cannot measure is left out

    def _flow_untrained(self) -> bool:
        """Whether this is a warm-up or feature epoch of a run whose evaluated flow is a flow net that
        has yet to train: its flow metrics are the untrained net's (the soft-argmax of the features),
        so the epoch is reported as not selectable and the summary's epoch is one of the flow epochs."""
        c = self.cfg
        return (c.baseline == "none" and c.flow == "net" and c.flow_epochs > 0
                and self.phase in ("warmup", "features"))

    @torch.no_grad()
    def _stereo(self) -> dict[str, float]:
        """NN matching of descriptors upsampled to pixel resolution on the rectified motorcycle pair
        (1/4 scale), at ``stereo_points`` left pixels with a finite disparity; PCK at 0.02 / 0.05 of
        the longest side. The identity baseline predicts the same position."""
        from reprlab.platform.data.sets.synthcorr import stereo_motorcycle

        if not hasattr(self, "_stereo_pair"):
            left, right, disp = stereo_motorcycle()
            ok = np.flatnonzero(np.isfinite(disp).ravel())
            pick = np.sort(np.random.default_rng(0).choice(ok, min(self.cfg.stereo_points, len(ok)), replace=False))
            self._stereo_pair = (left, right, disp, pick)
        left, right, disp, pick = self._stereo_pair
        h, w = disp.shape
        ys, xs = pick // w, pick % w
        src = torch.from_numpy(np.stack([xs + 0.5, ys + 0.5], -1)).float()
        true = src - torch.from_numpy(np.stack([disp.ravel()[pick], np.zeros(len(pick))], -1)).float()
        if self.cfg.baseline == "identity":
            pred = src
        else:
            to = lambda px: torch.from_numpy(px).permute(2, 0, 1).float()[None] / 255  # noqa: E731
            fl_, fr = self._describe(to(left)), self._describe(to(right))
            up = lambda f: F.normalize(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False), dim=1)  # noqa: E731
            dl, dr = up(fl_)[0].flatten(1)[:, pick].T, up(fr)[0].flatten(1)  # P x D, D x HW
            best = torch.cat([(dl[i : i + 500] @ dr).argmax(1) for i in range(0, len(dl), 500)])
            pred = torch.stack([(best % w).float() + 0.5, torch.div(best, w, rounding_mode="floor").float() + 0.5], -1)
        return ev.stereo_pck(pred, true, float(max(h, w)))

    # ---- figures (test split, rank 0) -------------------------------------------------------------
    def _figures(self, pairs: EvalPairs, flow, masks, flow_ba, pred) -> None:
        if self.ctx.run_dir is None:
            return
        k = min(self.cfg.figure_pairs, len(pairs))
        hwc = lambda x: x[:k].permute(0, 2, 3, 1).numpy()  # noqa: E731
        label = self.cfg.baseline if self.cfg.baseline != "none" else f"flow={self.cfg.flow}"
        self.ctx.write_artifact("transfers.png", ev.transfers_png(
            hwc(pairs.img_a), hwc(pairs.img_b), pairs.kp_a[:k].numpy(), (pred * pairs.scale_b[:, None])[:k].numpy(),
            (pairs.kp_b * pairs.scale_b[:, None])[:k].numpy(), (pairs.box_b * pairs.scale_b.repeat(1, 2))[:k].numpy(),
            title=f"test keypoint transfer ({label})"))
        if flow_ba is not None and masks is not None and pairs.mask_a is not None:
            a_on_b = fl.warp(pairs.img_a[:k], flow_ba[:k])
            self.ctx.write_artifact("warp.png", ev.warp_png(
                hwc(pairs.img_a), hwc(pairs.img_b), a_on_b.permute(0, 2, 3, 1).numpy(), flow[:k].numpy(),
                {"mask A": (masks[0][:k].numpy(), pairs.mask_a[:k].numpy()),
                 "mask B": (masks[1][:k].numpy(), pairs.mask_b[:k].numpy())}, title="flow net"))
        if self.mixture_history:
            epochs = np.array([e for e, _ in self.mixture_history], np.float64)
            layers = self.mixture_history[-1][1].keys()
            weights = {name: np.array([w[name] for _, w in self.mixture_history]) for name in layers}
            self.ctx.write_artifact("mixture.png", ev.mixture_png(epochs, weights, self.cfg.dilations,
                                                                  "MSConv mixture weights (mean over channels)"))
        if self.mining_history:
            h = np.asarray(self.mining_history, np.float64)
            filt = "RANSAC-affine filtered" if self.cfg.geometric else "mined (no filter)"
            self.ctx.write_artifact("mining.png", ev.mining_png(
                h[:, 0], {filt: h[:, 1], "raw mutual NN": h[:, 3]}, {filt: h[:, 2], "raw mutual NN": h[:, 4]},
                "matches mined on val pairs"))
