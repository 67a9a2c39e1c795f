"""IIN: A Disentangling Invertible Interpretation Network (Esser, Rombach, Ommer, CVPR 2020).

A frozen first stage E (a finished run: classifier, autoencoder, or any method exporting a frozen
model) gives z = E(x). An invertible network T maps z to z~ = T(z), split into one factor per
concept and a residual. Per step:

- unsupervised: z of a batch of training images; loss = NLL of T(z) under N(0, I);
- factor: z1, z2 of pairs that share a concept k (colored digits: the same digit in a new color,
  or the same color on another digit; glyphs: character, font weight or slant, optionally all
  but one of them; or two sketched drawings, ``method.pairs=sketch``); factor k of z~2 ~
  N(rho z~1_k, (1 - rho^2) I), the rest N(0, I). Factor sizes come from the pairs' covariances
  in z unless given.

Evaluation (every epoch, val and test): the NLL; linear probes of every target (digit, color) from
every factor; the network response (the std of a classifier's logit for its predicted class while
one factor is re-sampled); for autoencoders the Frechet distance, in a classifier's feature space,
of decoded T^-1(eps) and of decoded eps to real images. Figures on the test split: factor swaps
decoded through the autoencoder, samples, the network response.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.data import pair_source, pair_source_class
from reprlab.platform.data.pipeline import denormalize, normalize_pixels
from reprlab.platform.data.sampler import shuffled_batches
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.nn.flows import (
    InvertibleNetwork,
    factor_loss,
    factor_of_dim,
    factor_scores,
    factor_sizes,
    flow_nll,
    parse_sizes,
    unsupervised_loss,
)
from reprlab.platform.contract.frozen import FrozenModel, load_frozen
from reprlab.platform.eval.interpretation import frechet_distance, grids_png, probe_accuracy, probe_r2, response_png, tile
from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.core.log import say

SWAPS_FILE, SAMPLES_FILE, RESPONSE_FILE = "factor_swaps.png", "samples.png", "network_response.png"


class IINConfig(MethodConfig):
    name: Literal["iin"] = "iin"
    first_stage: str = Field(description="a finished run directory whose network is interpreted")
    first_stage_checkpoint: Literal["selected", "last"] = Field(
        "selected", description="the first stage's reported (validation-selected) epoch, or its last epoch")
    feature_model: str | None = Field(
        None, description="a finished classifier run: feature space of the Frechet distance and classifier of "
                          "the network response (default: the first stage when it is a classifier)")
    loss: Literal["factor", "unsupervised"] = "factor"
    pairs: Literal["data", "sketch"] = Field(
        "data", description="factor pairs from the data set's known factors, or from two sketched drawings")
    sketch: str | None = Field(None, description="pairs=sketch: a shipped sketch's name (closed_loop) or a sketch YAML")
    all_but: float = Field(0.0, ge=0.0, le=1.0, description="fraction of pairs sharing every factor but one "
                                                           "(data sets with more than two factors)")
    probe_images: int = Field(1000, ge=10, description="pairs=sketch: renderings to fit probes on (and as many to score)")
    rho: float = Field(0.975, gt=0.0, lt=1.0, description="correlation of a shared factor within a pair")
    blocks: int = Field(12, ge=1)
    width: int = Field(512, ge=2, description="hidden width of the coupling MLPs")
    depth: int = Field(2, ge=1, description="hidden layers of the coupling MLPs")
    factor_sizes: list[int] | None = Field(None, description="dimensions per factor, residual last (default: estimated)")
    size_pairs: int = Field(1000, ge=10, description="pairs per factor for the size estimate")
    betas: tuple[float, float] = (0.5, 0.9)
    lr_decay: Literal["linear", "none"] = "linear"
    eval_samples: int = Field(500, ge=10, description="samples for the Frechet distance")
    response_images: int = Field(64, ge=2, description="network response: images per evaluation")
    resamples: int = Field(16, ge=2, description="network response: re-samples of each factor per image")

    def check_against(self, cfg: ExperimentConfig) -> None:
        first, first_cfg = _frozen(_absolute(self.first_stage), "method.first_stage", None, self.first_stage_checkpoint)
        self.first_stage = _absolute(self.first_stage)
        if first_cfg.data.image_size != cfg.data.image_size:
            raise ConfigError(f"config: data.image_size: the first stage was trained on {first_cfg.data.image_size} px "
                              f"images, got {cfg.data.image_size}")
        if self.feature_model is not None:
            _frozen(_absolute(self.feature_model), "method.feature_model", ("classifier",))
            self.feature_model = _absolute(self.feature_model)
        if self.pairs == "sketch" and self.sketch is None:
            raise ConfigError("config: method.sketch: method.pairs=sketch needs a sketch (a shipped name such as "
                              "closed_loop, or a sketch YAML file)")
        if self.pairs == "data" and self.sketch is not None:
            raise ConfigError("config: method.sketch: a sketch is only read with method.pairs=sketch")
        if self.sketch is not None and not Path(self.sketch).is_absolute() and Path(self.sketch).suffix:
            self.sketch = _absolute(self.sketch)
        if self.loss == "factor":
            source = _pair_spec(cfg)
            if source is None:
                raise ConfigError(f"config: method.loss: factor needs a data set with factor pairs "
                                  f"(colored_digits, glyphs) or method.pairs=sketch, got data.name={cfg.data.name}; "
                                  f"or use method.loss=unsupervised")
            if self.factor_sizes is not None:
                try:
                    parse_sizes(self.factor_sizes, len(source.factors), _dim(first, cfg))
                except ValueError as exc:
                    raise ConfigError(f"config: method.factor_sizes: {exc}") from None


def _pair_spec(cfg: ExperimentConfig):
    """What the factor pairs of ``cfg`` share (``factors``, ``target_kinds``, ``probes``), or None."""
    m = cfg.method
    return pair_source_class(cfg.data, m.sketch if m.pairs == "sketch" else None)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


@lru_cache(maxsize=8)
def _frozen(path: str, key: str, kinds: tuple[str, ...] | None = None,
            checkpoint: str = "selected") -> tuple[FrozenModel, ExperimentConfig]:
    """A finished run's frozen model (read once per process, path and checkpoint)."""
    return load_frozen(path, key, kinds, checkpoint)


def _dim(model: FrozenModel, cfg: ExperimentConfig) -> int:
    size = cfg.data.image_size
    with torch.no_grad():
        return int(model.encode(torch.zeros(1, 3, size, size)).shape[1])


@register_method
class IIN(Method):
    name = "iin"
    description = "IIN (CVPR 2020): an invertible network splits a frozen model's representation into factors"
    Config = IINConfig
    selection_metric = "nll"
    headline_metric = "nll"
    lower_is_better = frozenset({"nll", "fd_flow", "fd_prior"})

    # ---- what it interprets and reports -------------------------------------------------------------
    @staticmethod
    def _models(cfg: ExperimentConfig) -> tuple[FrozenModel, FrozenModel | None]:
        """The first stage, and the classifier that judges images (the feature model, or the
        first stage itself when it is a classifier)."""
        first, _ = _frozen(_absolute(cfg.method.first_stage), "method.first_stage", None,
                           cfg.method.first_stage_checkpoint)
        if cfg.method.feature_model is not None:
            return first, _frozen(_absolute(cfg.method.feature_model), "method.feature_model", ("classifier",))[0]
        return first, first if first.head is not None else None

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        """Factor pairs from the data set for the factor loss on data pairs; nothing else (a
        sketch renders its own pairs, the unsupervised loss needs images only)."""
        m = cfg.method
        return frozenset({"factor_pairs"}) if m.loss == "factor" and m.pairs == "data" else frozenset()

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        first, judge = cls._models(cfg)
        names = ["nll"]
        source = _pair_spec(cfg) if cfg.method.loss == "factor" else None
        if source is not None:
            parts = [*source.factors, "residual"]
            for target, kind in source.target_kinds.items():
                names += [f"{target}_{'acc' if kind == 'class' else 'r2'}_from_{p}" for p in parts]
            if judge is not None:
                names += [f"response_std_{p}" for p in parts]
        if first.decoder is not None and judge is not None:
            names += ["fd_flow", "fd_prior"]
        return tuple(names)

    # ---- build -----------------------------------------------------------------------------------
    def build(self) -> None:
        ctx, c = self.ctx, self.cfg
        first, judge = self._models(ctx.cfg)
        self.first = ctx.prepare(copy.deepcopy(first))  # no trainable weights: never DDP-wrapped
        self.judge = None if judge is None else (self.first if judge is first else ctx.prepare(copy.deepcopy(judge)))
        self.dim = _dim(first, ctx.cfg)
        self.source = None
        if c.loss == "factor":
            self.source = pair_source(ctx.cfg.data, ctx.data.train, c.sketch if c.pairs == "sketch" else None, c.all_but)
        self.parts = [*self.source.factors, "residual"] if self.source is not None else ["residual"]
        self.sizes = self._factor_sizes() if self.source is not None else [self.dim]

        flow = InvertibleNetwork(self.dim, c.blocks, c.width, c.depth, seed=ctx.cfg.experiment.seed).to(ctx.device)
        flow.initialize(self._first_batch_z())  # the same global batch on every rank: identical weights
        self.flow = ctx.prepare(flow)
        o = ctx.cfg.optim
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=o.lr, betas=c.betas, weight_decay=o.weight_decay)
        total = max(1, ctx.cfg.train.epochs * self.steps_per_epoch())
        decay = (lambda i: max(0.0, 1.0 - i / total)) if c.lr_decay == "linear" else (lambda i: 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay)
        self._train_z: np.ndarray | None = None
        self._train_z_embedded = False

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.first.encode(x)

    def _images(self, pixels: np.ndarray) -> torch.Tensor:
        return normalize_pixels(pixels, self.ctx.cfg.data.image_size).to(self.ctx.device)

    def _factor_sizes(self) -> list[int]:
        if self.cfg.factor_sizes is not None:
            return list(self.cfg.factor_sizes)
        rng = np.random.default_rng(self.ctx.seed(0xF51))
        pairs = {}
        for k, name in enumerate(self.source.factors):
            p1, p2, _ = self.source.sample(self.cfg.size_pairs, rng, factor=np.full(self.cfg.size_pairs, k))
            pairs[name] = (self.encode(self._images(p1)).cpu().numpy(), self.encode(self._images(p2)).cpu().numpy())
        scores = factor_scores(pairs)
        sizes = factor_sizes(scores, self.dim)
        if self.ctx.is_main:
            say("[reprlab] iin: factor scores " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                + f" (residual 1) -> sizes {dict(zip(self.parts, sizes))}")
        return sizes

    def _first_batch_z(self) -> torch.Tensor:
        """z of the first global training batch (ActNorm's data-dependent initialisation)."""
        if self.source is not None:
            x1, x2, _ = self._global_pairs(1, 0)
            return self.encode(torch.cat([x1, x2]))
        d = self.ctx.cfg.data
        index = shuffled_batches(len(self.ctx.data.train), d.global_batch, 1, epoch=1, seed=self.ctx.cfg.experiment.seed)
        x, _ = next(iter(self.ctx.train_batches(index, 1, slots=np.arange(index.shape[1]))))  # every rank: the whole batch
        return self.encode(x)

    # ---- data and steps ---------------------------------------------------------------------------
    def _global_pairs(self, epoch: int, iteration: int):
        rng = np.random.default_rng(self.ctx.seed(epoch, iteration, 0x11A))
        p1, p2, shared = self.source.sample(self.ctx.cfg.data.global_batch, rng)
        return self._images(p1), self._images(p2), torch.from_numpy(shared).to(self.ctx.device)

    def batches(self, epoch: int) -> Iterable[Any]:
        if self.source is None:
            yield from self.ctx.shuffled_batches(epoch)
            return
        rows = self.ctx.share()  # this rank's share of the global batch (need not divide evenly)
        for it in range(self.ctx.iterations_per_epoch()):
            x1, x2, shared = self._global_pairs(epoch, it)
            yield x1[rows], x2[rows], shared[rows]

    def images_per_step(self) -> int:
        per = self.ctx.local_batch()
        return 2 * per if self.source is not None else per

    def train_step(self, batch) -> dict[str, float]:
        # the loss of the global batch on every rank (gathered with gradient, as DML methods do),
        # so that logs and gradients match a single process
        gather = self.ctx.gather
        if self.source is not None:
            x1, x2, shared = batch
            n = len(x1)
            zt, logdet = self.flow(self.encode(torch.cat([x1, x2])))  # one forward: DDP's reducer sees one
            zt1, zt2, logdet1, logdet2 = zt[:n], zt[n:], logdet[:n], logdet[n:]
            loss = factor_loss(gather(zt1), gather(logdet1), gather(zt2), gather(logdet2), gather(shared),
                               self.sizes, self.cfg.rho)
        else:
            x, _ = batch
            zt, logdet = self.flow(self.encode(x))
            loss = unsupervised_loss(gather(zt), gather(logdet))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "logdet": (logdet.mean() / self.dim).item()}

    def extra_state(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sizes = list(state.get("sizes", self.sizes))

    def epoch_metrics(self) -> dict[str, float]:
        return {f"size_{p}": float(s) for p, s in zip(self.parts, self.sizes)}

    # ---- evaluation ---------------------------------------------------------------------------------
    def _slices(self) -> dict[str, slice]:
        ends = np.cumsum(self.sizes)
        return {p: slice(int(e - s), int(e)) for p, s, e in zip(self.parts, self.sizes, ends)}

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        """The judging classifier's logits for representations z of the first stage."""
        if self.first.head is not None:
            return self.first.classify(z)
        return self.judge.classify(self.judge.encode(self.first.decode(z)))

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        images = self.ctx.data.eval_splits[split].query
        z = self.ctx.embed(self.first.encode, images)  # collective: every rank
        if self.source is not None and self.source.probes == "train" and not self._train_z_embedded:
            # a collective: every rank takes part once (only rank 0 receives the codes, so the
            # flag, not the value, says whether it is done)
            self._train_z = self.ctx.embed(self.first.encode, self.ctx.data.train)
            self._train_z_embedded = True
        real = self.ctx.embed(self.judge.encode, images) if self.judge is not None and self.first.decoder is not None else None
        metrics = None
        if self.ctx.is_main:
            flow = unwrap(self.flow)
            flow.eval()
            try:
                metrics = self._measure(flow, images, z, real, split)
            finally:
                flow.train()
        return self.ctx.broadcast(metrics)

    def _measure(self, flow: InvertibleNetwork, images, z: np.ndarray, real: np.ndarray | None, split: str) -> dict[str, float]:
        dev = self.ctx.device
        zt, logdet = flow(torch.from_numpy(z).to(dev))
        out = {"nll": flow_nll(zt, logdet).mean().item()}
        gen = torch.Generator(dev).manual_seed(self.ctx.seed(0xE7A1))
        slices = self._slices()
        if self.source is not None:
            (fit_z, fit_t), (score_z, score_t) = self._probe_sets(flow, zt, images, split)
            for target, kind in self.source.target_kinds.items():
                probe = probe_accuracy if kind == "class" else probe_r2
                for p, sl in slices.items():
                    out[f"{target}_{'acc' if kind == 'class' else 'r2'}_from_{p}"] = probe(
                        fit_z[:, sl], fit_t[target], score_z[:, sl], score_t[target])
            if self.judge is not None:
                out.update(self._response(flow, zt, gen, split == "test"))
        if self.first.decoder is not None and self.judge is not None:
            out.update(self._generation(flow, real, gen, split == "test"))
        if split == "test" and self.first.decoder is not None and self.source is not None:
            self._swap_figure(flow, zt)
        return out

    def _probe_sets(self, flow, zt: torch.Tensor, images, split: str):
        """(factors, targets) to fit the linear probes on and to score them on, as the pair source
        says: the training split and the evaluated split (``train``); two fixed halves of the
        evaluated split (``within``: class-disjoint splits); or two sets of the source's own
        renderings (``rendered``: sketches)."""
        dev, mode = self.ctx.device, self.source.probes
        if mode == "train":
            zt_train = flow(torch.from_numpy(self._train_z).to(dev))[0].cpu().numpy()
            return (zt_train, self.source.targets(self.ctx.data.train)), (zt.cpu().numpy(), self.source.targets(images))
        if mode == "within":
            zt_np, targets = zt.cpu().numpy(), self.source.targets(images)
            order = np.random.default_rng(self.ctx.seed(0xB0BE)).permutation(len(zt_np))
            halves = order[: len(order) // 2], order[len(order) // 2 :]
            return tuple((zt_np[h], {k: np.asarray(v)[h] for k, v in targets.items()}) for h in halves)
        sets = []
        for which in (0, 1):  # the same renderings at every evaluation
            rng = np.random.default_rng(self.ctx.seed(0x5E7, which))
            pixels, targets = self.source.rendered(self.cfg.probe_images, rng)
            z = torch.cat([self.encode(self._images(pixels[i : i + 256])) for i in range(0, len(pixels), 256)])
            sets.append((flow(z)[0].cpu().numpy(), targets))
        return tuple(sets)

    def _response(self, flow, zt: torch.Tensor, gen: torch.Generator, figure: bool) -> dict[str, float]:
        """Std of the judging classifier's logit of its predicted class while one factor is
        re-sampled from N(0, I) (the others kept), averaged over images."""
        m, r = min(self.cfg.response_images, len(zt)), self.cfg.resamples
        zt = zt[:m]
        predicted = self._logits(flow.reverse(zt)).argmax(1)
        which = factor_of_dim(self.sizes, zt.device)
        out, curves = {}, {}
        for k, p in enumerate(self.parts):
            rep = zt[:, None].expand(m, r, self.dim).clone()
            noise = torch.randn(rep.shape, generator=gen, device=zt.device)
            rep[..., which == k] = noise[..., which == k]
            logits = self._logits(flow.reverse(rep.reshape(m * r, self.dim))).view(m, r, -1)
            chosen = logits.gather(2, predicted[:, None, None].expand(m, r, 1))[..., 0]
            out[f"response_std_{p}"] = chosen.std(1).mean().item()
            curves[p] = chosen[:6].cpu().numpy()
        if figure:
            self.ctx.write_artifact(RESPONSE_FILE, response_png(
                curves, {p: out[f"response_std_{p}"] for p in self.parts}, "logit of the predicted class"))
        return out

    def _generation(self, flow, real: np.ndarray, gen: torch.Generator, figure: bool) -> dict[str, float]:
        """Frechet distance, in the judging classifier's feature space, of decoded T^-1(eps) and of
        decoded eps to the split's real images."""
        eps = torch.randn(self.cfg.eval_samples, self.dim, generator=gen, device=self.ctx.device)
        x_flow, x_prior = self.first.decode(flow.reverse(eps)), self.first.decode(eps)
        feats = [self.judge.encode(x).cpu().numpy() for x in (x_flow, x_prior)]
        if figure:
            side = min(8, int(np.sqrt(len(eps))))
            self.ctx.write_artifact(SAMPLES_FILE, grids_png({
                "decoded T^-1(eps)": tile(denormalize(x_flow[: side * side]), side),
                "decoded eps (no IIN)": tile(denormalize(x_prior[: side * side]), side)}))
        return {"fd_flow": frechet_distance(real, feats[0]), "fd_prior": frechet_distance(real, feats[1])}

    def _swap_figure(self, flow, zt: torch.Tensor, n: int = 8) -> None:
        """Per factor: row i, column j decodes image i with factor k taken from image j; the first
        row and column are the decoded images themselves."""
        a, b = zt[:n], zt[n : 2 * n]
        which = factor_of_dim(self.sizes, zt.device)
        dec_a, dec_b = (denormalize(self.first.decode(flow.reverse(v))) for v in (a, b))
        blank = torch.ones_like(dec_a[:1])
        panels = {}
        for k, p in enumerate(self.parts):
            swapped = a[:, None].expand(n, n, self.dim).clone()
            swapped[..., which == k] = b[None].expand(n, n, self.dim)[..., which == k]
            cells = denormalize(self.first.decode(flow.reverse(swapped.reshape(n * n, self.dim)))).view(n, n, *dec_a.shape[1:])
            rows = torch.cat([torch.cat([blank, dec_b]), torch.cat([dec_a[:, None], cells], 1).reshape(n * (n + 1), *dec_a.shape[1:])])
            panels[f"{p} from the top row"] = tile(rows, n + 1)
        self.ctx.write_artifact(SWAPS_FILE, grids_png(panels, "rows: images; columns: the image a factor is taken from"))
