"""Learning Multi-Scale Photo Exposure Correction (Afifi, Derpanis, Ommer, Brown, CVPR 2021).

For every stage s = (patch, batch, epochs, drop, adv_from), with fresh Adam optimizers (G: lr,
D: lr / 10; both halved every ``drop`` epochs) and the weights kept:

    x, T = a batch of input/target patches (rendered by the simulated camera, or cut from pairs)
    Y, [Up_2..Up_L] = G(Laplacian pyramid of x)                 (coarse to fine, one U-Net per level)
    L = mean|Y - T| + w_pyr * sum_l 2^-(l-2) mean|Up_l - expand(G_l(T))| + w_adv * mean -log sigmoid(D(Y))
    step G;  from the stage's epoch adv_from: step D on (T, Y) with binary cross-entropy

``adv_grad: none`` keeps the adversarial term's value but not its gradient (the released code,
where the output reaches D only through ``extractdata``). Evaluation: whole images (8-bit
output) against Expert C and each expert: PSNR (selection and headline), SSIM, L1, split by
under (EV < 0) / over (EV >= 0) exposure and by EV. ``model``: ``pyramid`` (the paper),
``single_scale`` (one U-Net at the same parameter count), or the evaluation-only baselines
``identity``, ``histeq`` (luminance), ``clahe`` and ``oracle_lut`` (reads the target).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.contract.stages import Stage, StageSchedule
from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.core.log import say
from reprlab.platform.data.camera import EV_NAMES, EVS, quantize
from reprlab.platform.data.patches import SimulatedExposures, StoredPatches
from reprlab.platform.data.types import ImageSet
from reprlab.platform.eval import image as im
from reprlab.platform.nn.gan import apply_flips, discriminator_step, flip_choices, generator_term
from reprlab.platform.nn.pyramid import (
    PatchDiscriminator,
    PyramidExposureNet,
    SingleScaleNet,
    expand,
    gaussian_pyramid,
    parameter_count,
    run_padded,
    single_scale_width,
)

TRAINED = ("pyramid", "single_scale")
EXPERT_KEYS = tuple(f"expert_{k}" for k in "abcde")
PAPER_STAGES = [Stage(patch=128, batch=32, epochs=40, drop=20), Stage(patch=256, batch=8, epochs=30, drop=10, adv_from=15),
                Stage(patch=512, batch=4, epochs=20, drop=5, adv_from=5)]


class ExposureConfig(MethodConfig):
    name: Literal["exposure"] = "exposure"
    model: Literal["pyramid", "single_scale", "identity", "histeq", "clahe", "oracle_lut"] = "pyramid"
    levels: int = Field(4, ge=1, le=6, description="pyramid levels (the finest `levels` entries of depths/widths)")
    depths: list[int] = Field([3, 3, 3, 4], description="U-Net depth per level, finest first")
    widths: list[int] = Field([16, 24, 24, 24], description="U-Net filters per level, finest first")
    width_scale: float = Field(1.0, gt=0, description="multiplies every width (sweeps)")
    pyramid_loss_weight: float = Field(1.0, ge=0, description="0 turns the pyramid loss off")
    adv_weight: float = Field(4 / 255, ge=0, description="0 turns the adversarial term (and D) off")
    adv_grad: Literal["generator", "none"] = Field(
        "generator", description="none: the term's value without its gradient (the released code)")
    disc_widths: list[int] = Field([8, 16, 32, 64, 128, 128, 256], description="D's blocks; input side 2^(blocks+1)")
    d_lr_factor: float = Field(0.1, gt=0, description="D's learning rate / G's")
    betas: tuple[float, float] = (0.9, 0.999)
    stages: list[Stage] = Field(default_factory=lambda: [s.model_copy() for s in PAPER_STAGES])
    inputs: Literal["simulated", "stored"] = Field(
        "stored", description="training inputs rendered by the simulated camera from the targets, or the stored pairs")
    eval_side: int | None = Field(None, ge=32, description="evaluate at this longest side (default: as stored)")
    expert_ssim: bool = Field(True, description="SSIM against every expert (else only against the target)")
    figure_scenes: int = Field(3, ge=0, description="test scenes in before_after.png")

    def net_widths(self) -> list[int]:
        return [max(2, round(w * self.width_scale)) for w in self.widths[: self.levels]]

    def check_against(self, cfg: ExperimentConfig) -> None:
        if len(self.depths) < self.levels or len(self.widths) < self.levels:
            raise ConfigError(f"config: method.levels: {self.levels} levels need as many depths and widths, "
                              f"got {len(self.depths)} and {len(self.widths)}")
        if self.model not in TRAINED:
            return
        total = sum(s.epochs for s in self.stages)
        if cfg.train.epochs != total:
            raise ConfigError(f"config: train.epochs: the stages of method.stages add up to {total} epochs, "
                              f"got train.epochs={cfg.train.epochs}")
        depths = self.depths[: self.levels]
        multiple = max(2 ** (i + d) for i, d in enumerate(depths)) if self.model == "pyramid" else 2 ** max(depths)
        bad = next((s.patch for s in self.stages if s.patch % multiple), None)
        if bad is not None:
            raise ConfigError(f"config: method.stages: patch {bad} is not a multiple of {multiple} "
                              f"(levels - 1 halvings, then each level's U-Net)")
        workers = max(1, cfg.scaling.num_workers)
        small = next((s.batch for s in self.stages if s.batch < workers), None)
        if small is not None:
            raise ConfigError(f"config: method.stages: a batch of {small} cannot give each of "
                              f"scaling.num_workers={workers} workers a sample")


def build_generator(c: ExposureConfig) -> nn.Module:
    pyramid = PyramidExposureNet(c.depths[: c.levels], c.net_widths())
    if c.model == "pyramid":
        return pyramid
    depth = max(c.depths[: c.levels])
    return SingleScaleNet(depth, single_scale_width(depth, parameter_count(pyramid)))


def pyramid_terms(ups: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Per sample: sum over l = 2..L of 2^-(l-2) mean|Up_l - expand(G_l(T))|."""
    if not ups:
        return target.new_zeros(target.shape[0])
    g = gaussian_pyramid(target, len(ups) + 1)
    return sum(2.0**-i * (up - expand(g[i + 1], up.shape[-2:])).abs().flatten(1).mean(1) for i, up in enumerate(ups))


def exposure_loss(y: torch.Tensor, ups: list[torch.Tensor], target: torch.Tensor, pyramid_weight: float = 1.0,
                  adv: torch.Tensor | None = None, adv_weight: float = 4 / 255) -> torch.Tensor:
    """The loss of every sample in the spec's mean form: mean|Y - T| + pyramid_weight x the
    pyramid terms + adv_weight x (-log sigmoid(D(Y))). It is the reference code's sum form (L1 sums
    on the 0..255 scale, pyramid weights 2^(l-2), adversarial weight 3 h w 4) divided by 765 h w."""
    per = (y - target).abs().flatten(1).mean(1) + pyramid_weight * pyramid_terms(ups, target)
    return per if adv is None else per + adv_weight * adv


def _image(source, i: int) -> torch.Tensor:
    """Image ``i`` of an ImageSet, of uint8 N x H x W x 3 pixels, or of an array of file paths, as
    3 x H x W in [0, 1]."""
    if isinstance(source, ImageSet):
        px = source.pixels[i] if source.pixels is not None else np.asarray(source.load(i))
    elif source.dtype == np.uint8:
        px = source[i]
    else:
        px = np.asarray(ImageSet(paths=source[i : i + 1]).load(0))
    return torch.from_numpy(np.array(px, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def _metric_groups() -> list[str]:
    return ["under", "over", *(f"ev_{n}" for n in EV_NAMES), *EXPERT_KEYS, "experts"]


@register_method
class Exposure(Method):
    name = "exposure"
    description = "Multi-scale photo exposure correction (CVPR 2021): Laplacian-pyramid coarse-to-fine U-Nets"
    Config = ExposureConfig
    selection_metric = headline_metric = "psnr"
    lower_is_better = frozenset({"l1"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"paired"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return ("psnr", "ssim", "l1", *(f"{m}/{g}" for m in ("psnr", "ssim") for g in _metric_groups()))

    # ---- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        c, ctx = self.cfg, self.ctx
        self.schedule = StageSchedule(tuple(c.stages))
        self.stage = -1  # no stage entered yet (epoch 0 evaluates the untrained network)
        self.epoch_in_stage = 0
        self.g = self.d = self.opt_g = self.opt_d = self.sched_g = self.sched_d = None
        self._baselines: dict[str, dict[str, list[float]]] = {}
        if c.model not in TRAINED:
            return
        torch.manual_seed(ctx.cfg.experiment.seed)  # identical initial weights on every rank
        gen = build_generator(c)
        self.multiple = gen.multiple
        if ctx.is_main:
            say(f"[reprlab] exposure: {c.model} generator, {parameter_count(gen):,} parameters")
        self.g = ctx.prepare(gen)
        if self.schedule.first_adversarial() is not None and c.adv_weight > 0:
            # several workers: ctx.prepare makes D's BatchNorm one over the global batch
            self.d = ctx.prepare(PatchDiscriminator(c.disc_widths))
        if c.inputs == "simulated":
            try:
                self.source = SimulatedExposures.from_pairs(ctx.data.train)
            except ValueError as exc:
                raise DataError(f"data: method.inputs=simulated: {exc}; use method.inputs=stored") from None
        else:
            self.source = StoredPatches(ctx.data.train)

    def _enter_stage(self, index: int) -> None:
        """Fresh optimizers at the base learning rates; the weights are kept."""
        c, lr = self.cfg, self.ctx.cfg.optim.lr
        stage = self.schedule.stages[index]
        drop = stage.drop or 10**9
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=c.betas)
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, drop, 0.5)
        if self.d is not None:
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr * c.d_lr_factor, betas=c.betas)
            self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, drop, 0.5)
        self.stage = index

    def on_epoch_start(self, epoch: int) -> None:
        if self.g is None:
            return
        index, self.epoch_in_stage = self.schedule.locate(epoch)
        if index != self.stage:
            self._enter_stage(index)
            if self.ctx.is_main:
                s = self.schedule.stages[index]
                say(f"[reprlab] exposure: stage {index + 1}/{len(self.schedule.stages)}: patch {s.patch}, "
                    f"batch {s.batch}, {s.epochs} epochs" + (f", adversarial from its epoch {s.adv_from}" if s.adv_from else ""))

    def on_epoch_end(self, epoch: int) -> None:
        with warnings.catch_warnings():  # D's lr counts the stage's epochs, also those before it trains
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
            for sched in (self.sched_g, self.sched_d):
                if sched is not None:
                    sched.step()

    # ---- batches and steps ----------------------------------------------------------------------
    @property
    def _stage(self) -> Stage:
        return self.schedule.stages[max(self.stage, 0)]

    def steps_per_epoch(self) -> int:
        if self.g is None:
            return 0
        return (self._stage.iterations or self.ctx.cfg.data.iterations_per_epoch
                or max(1, len(self.ctx.data.train) // self._stage.batch))

    def images_per_step(self) -> int:
        s = self.ctx.share(self._stage.batch)
        return s.stop - s.start

    def _global_batch(self, epoch: int, iteration: int) -> dict[str, torch.Tensor]:
        """The stage's global batch at (epoch, iteration): the same on every rank."""
        stage = self._stage
        gen = torch.Generator().manual_seed(self.ctx.seed(epoch, iteration, 0xE4))
        if isinstance(self.source, SimulatedExposures):
            return self.source.sample(stage.batch, stage.patch, gen)
        index = torch.randint(0, len(self.ctx.data.train), (stage.batch,), generator=gen).numpy()
        return self.source.sample(index, stage.patch, gen)

    def batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        rows = self.ctx.share(self._stage.batch)
        for it in range(self.steps_per_epoch()):
            batch = self._global_batch(epoch, it)
            yield {k: v[rows].to(self.ctx.device) for k, v in batch.items()} | {"_key": (epoch, it)}

    def _adversarial(self) -> bool:
        s = self._stage
        return self.d is not None and s.adv_from is not None and self.epoch_in_stage >= s.adv_from

    def train_step(self, batch) -> dict[str, float]:
        c, n = self.cfg, self._stage.batch
        x, t = batch["input"], batch["target"]
        y, ups = self.g(x)
        logs: dict[str, float] = {}
        adv = None
        adversarial = self._adversarial()
        if adversarial:
            flips = torch.Generator().manual_seed(self.ctx.seed(*batch["_key"], 0xD15))
            choices = [flip_choices(n, flips)[self.ctx.share(n)] for _ in range(2)]  # global batch, this rank's rows
            side = unwrap(self.d).side
            fake, real = (apply_flips(F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False), ch)
                          for v, ch in zip((y, t), choices))
            adv = generator_term(self.d, fake, grad=c.adv_grad == "generator")
            logs["adversarial"] = adv.mean().item()
        loss = self.ctx.global_mean(exposure_loss(y, ups, t, c.pyramid_loss_weight, adv, c.adv_weight), n)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if adversarial:
            logs |= discriminator_step(self.d, self.opt_d, real, fake, mean=lambda v: self.ctx.global_mean(v, n))
        return {"loss": loss.item(), **logs}

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"stage": self.stage, "has_d": self.d is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stage = int(state.get("extra", {}).get("stage", -1))
        if stage >= 0 and self.g is not None:
            self._enter_stage(stage)  # the optimizers must exist before their state is loaded
        super().load_state_dict(state)

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("has_d", self.d is not None) != (self.d is not None):
            raise DataError("checkpoint: the discriminator of the checkpoint does not match method.adv_weight/stages")

    def epoch_metrics(self) -> dict[str, float]:
        return {"stage": float(self.stage + 1)} if self.g is not None else {}

    # ---- evaluation -----------------------------------------------------------------------------
    def _sample(self, images, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Input and targets (``target`` = Expert C, and each expert the split has) of sample ``i``,
        3 x h x w in [0, 1], cropped to the valid region and resized to ``eval_side``."""
        x = _image(images, i)
        targets = {"target": _image(images.target, i), **{k: _image(images.meta[k], i) for k in EXPERT_KEYS
                                                          if k in images.meta}}
        if "height" in images.meta:
            h, w = int(images.meta["height"][i]), int(images.meta["width"][i])
            x, targets = x[:, :h, :w], {k: v[:, :h, :w] for k, v in targets.items()}
        side = self.cfg.eval_side
        if side is not None and max(x.shape[-2:]) != side:
            scale = side / max(x.shape[-2:])
            size = tuple(max(1, round(d * scale)) for d in x.shape[-2:])

            def resize(v: torch.Tensor) -> torch.Tensor:
                return quantize(F.interpolate(v[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0])

            x, targets = resize(x), {k: resize(v) for k, v in targets.items()}
        return x, targets

    @torch.no_grad()
    def correct(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The variant's 8-bit output for one image (3 x h x w in [0, 1])."""
        m = self.cfg.model
        if m in TRAINED:
            return quantize(run_padded(unwrap(self.g), x[None].to(self.ctx.device))[0][0].cpu().clamp(0, 1))
        if m == "identity":
            return x
        u8 = lambda v: (v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out = im.oracle_lut(u8(x), u8(target)) if m == "oracle_lut" else im.BASELINES[m](u8(x))
        return torch.from_numpy(out).permute(2, 0, 1).float() / 255

    def _scores(self, y: torch.Tensor, targets: dict[str, torch.Tensor]) -> list[float]:
        """psnr, ssim, l1 against the target, then psnr and ssim against each expert (NaN where the
        split has none)."""
        nan = float("nan")
        t = targets["target"][None]
        row = [im.psnr(y[None], t).item(), im.ssim(y[None], t).item(), im.l1(y[None], t).item()]
        for k in EXPERT_KEYS:
            e = targets.get(k)
            row.append(im.psnr(y[None], e[None]).item() if e is not None else nan)
        for k in EXPERT_KEYS:
            e = targets.get(k)
            if e is None or (not self.cfg.expert_ssim and k != "expert_c"):
                row.append(nan)
            else:
                row.append(row[1] if torch.equal(e, targets["target"]) else im.ssim(y[None], e[None]).item())
        return row

    def evaluate(self, split: str) -> dict[str, float]:
        images = self.ctx.data.eval_splits[split].query
        net = unwrap(self.g) if self.g is not None else None
        if net is not None:
            net.eval()
        try:
            rows = []
            for i in range(*self.ctx.share(len(images)).indices(len(images))):  # this rank's images
                x, targets = self._sample(images, i)
                rows.append(self._scores(self.correct(x, targets["target"]), targets))
        finally:
            if net is not None:
                net.train()
        local = torch.tensor(rows, dtype=torch.float64).reshape(-1, 13)
        table = self.ctx.gather(local).numpy()  # every rank: all samples, in order
        ev = np.asarray(images.meta.get("ev", np.zeros(len(images))), np.float64)
        out = self._aggregate(table, ev)
        if split == "test":
            self._figures(images, table, ev)
        return out

    @staticmethod
    def _aggregate(table: np.ndarray, ev: np.ndarray) -> dict[str, float]:
        def mean(v: np.ndarray) -> float:
            v = v[np.isfinite(v)]
            return float(v.mean()) if v.size else float("nan")

        out = {"psnr": mean(table[:, 0]), "ssim": mean(table[:, 1]), "l1": mean(table[:, 2])}
        for m, col, experts in (("psnr", 0, slice(3, 8)), ("ssim", 1, slice(8, 13))):
            out[f"{m}/under"] = mean(table[ev < 0, col])
            out[f"{m}/over"] = mean(table[ev >= 0, col])
            for name, value in zip(EV_NAMES, EVS):
                out[f"{m}/ev_{name}"] = mean(table[np.isclose(ev, value), col])
            per_expert = [mean(table[:, j]) for j in range(experts.start, experts.stop)]
            out |= {f"{m}/{k}": v for k, v in zip(EXPERT_KEYS, per_expert)}
            out[f"{m}/experts"] = mean(np.array(per_expert))
        return out

    # ---- figures (test split, rank 0) -------------------------------------------------------------
    def _figures(self, images, table: np.ndarray, ev: np.ndarray) -> None:
        if not self.ctx.is_main or self.ctx.run_dir is None:
            return
        if "scene" in images.meta and self.cfg.figure_scenes:
            scenes = list(dict.fromkeys(images.meta["scene"].tolist()))[: self.cfg.figure_scenes]
            grid, titles = [], []
            for sc in scenes:
                idx = np.flatnonzero(images.meta["scene"] == sc)
                pairs = [self._sample(images, int(i)) for i in idx]
                as_np = lambda v: v.permute(1, 2, 0).numpy()
                grid += [[as_np(x) for x, _ in pairs], [as_np(self.correct(x, t["target"])) for x, t in pairs]
                         + [as_np(pairs[0][1]["target"])]]
                titles += [f"scene {sc}: input", "output | target"]
            cols = [f"EV {e:+g}" for e in ev[np.flatnonzero(images.meta["scene"] == scenes[0])]] + ["target"]
            self.ctx.write_artifact("before_after.png", im.image_grid_png(grid, titles, cols))
        curves = {**self._baseline_curves(images, ev), self.cfg.model: self._by_ev(table[:, 0], ev)}
        self.ctx.write_artifact("psnr_by_ev.png", im.curves_png([f"{e:+g}" for e in EVS], curves, "PSNR (dB)",
                                                                "test PSNR against Expert C by EV"))
        net = unwrap(self.g) if self.g is not None else None
        if isinstance(net, PyramidExposureNet) and net.levels > 1:
            x, targets = self._sample(images, 0)
            with torch.no_grad():
                _, ups = run_padded(net, x[None].to(self.ctx.device))
            pad = F.pad(targets["target"][None], (0, ups[0].shape[-1] - x.shape[-1], 0, ups[0].shape[-2] - x.shape[-2]),
                        mode="replicate")
            g = gaussian_pyramid(pad, net.levels)
            rows = [[up[0].cpu().clamp(0, 1).permute(1, 2, 0).numpy(),
                     expand(g[i + 1], up.shape[-2:])[0].clamp(0, 1).permute(1, 2, 0).numpy()] for i, up in enumerate(ups)]
            self.ctx.write_artifact("pyramid.png", im.image_grid_png(rows, [f"level {i + 2}" for i in range(len(ups))],
                                                                     ["Up_l (network)", "G_l upsampled (target)"]))

    @staticmethod
    def _by_ev(values: np.ndarray, ev: np.ndarray) -> list[float]:
        return [float(values[np.isclose(ev, e)].mean()) if np.isclose(ev, e).any() else float("nan") for e in EVS]

    def _baseline_curves(self, images, ev: np.ndarray) -> dict[str, list[float]]:
        """PSNR by EV of the input and of luminance histogram equalization (computed once)."""
        if not self._baselines:
            scores: dict[str, list[float]] = {"input": [], "histeq": []}
            for i in range(len(images)):
                x, targets = self._sample(images, i)
                u8 = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                h = torch.from_numpy(im.histeq_luminance(u8)).permute(2, 0, 1).float() / 255
                t = targets["target"][None]
                scores["input"].append(im.psnr(x[None], t).item())
                scores["histeq"].append(im.psnr(h[None], t).item())
            self._baselines = {k: self._by_ev(np.array(v), ev) for k, v in scores.items()}
        return self._baselines
