"""Unsupervised Robust Disentangling of Latent Characteristics for Image Synthesis (Esser, Haux,
Ommer, ICCV 2019): appearance / pose with the adaptive regularization the paper proposes.

For every global batch of pairs (x_t, x_a) that share their appearance:

    q(pi | x_t) = N(mu, diag s^2) = E_pi(x_t);  alpha = E_alpha(x_a);  pi ~ q  (noise from (seed, epoch, it))
    x_hat = D(pi, alpha)
    L_elbo = sum (x_t - x_hat)^2 / B + gamma KL(q || N(0, I)) / B  (+ 0.5 aux: D_a(alpha), D_p(sg(pi)))
    I1 = mean T1(pi, sg(alpha)) over the gathered batch (T1's weights fixed: its gradient reaches E_pi only)
    c = I1 - eps;  L = L_elbo + [step >= warmup] [mu c + lambda >= 0] (lambda c + mu c^2 / 2)
    step the encoders and decoders (their own Adam); then T1 and T2 each step (own Adam, lr x 2) on the
    detached codes; then lambda <- max(0, lambda + mu c), gamma <- max(0, gamma + l_g (EMA I2 - EMA I1 - b_g))
    (after the warm-up, from the EMAs before this step); then the EMAs take I1 and I2.

Variants (``method.mode``): ``plain`` (gamma 0, no constraint), ``variational`` (fixed gamma),
``adversarial`` (the MI constraint, gamma 0), ``mi_fixed_gamma`` (both, gamma fixed), ``rodi`` (the
paper: both, gamma adapted); the evaluation-only baselines ``copy_pose`` and ``copy_appearance``
output the pose or the appearance image. T1 and T2 train in every trained mode (they only read
the codes where the mode has no constraint), so both MI readings are comparable across variants.

Evaluation on a fixed set of transfer triplets per split (pi = its mean): transfer MSE (mean and
median, [-1, 1] scale: selection and headline), reconstruction MSE, ridge probes of appearance and
pose from each code (fitted on training codes), and ``mi_post`` (a fresh critic on frozen codes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.log import say
from reprlab.platform.data.appearance import appearance_source
from reprlab.platform.eval import transfer as tr
from reprlab.platform.eval.interpretation import probe_r2
from reprlab.platform.nn.codecs import AppearancePoseAutoencoder, DiagonalGaussian
from reprlab.platform.nn.controllers import RegularizationControl
from reprlab.platform.nn.mi import SeparableCritic, critic_step, estimate_mi, frozen_reading

TRAINED = ("plain", "variational", "adversarial", "mi_fixed_gamma", "rodi")
CONSTRAINED = ("adversarial", "mi_fixed_gamma", "rodi")
WITH_KL = ("variational", "mi_fixed_gamma", "rodi")
PROBES = tuple(f"probe/{t}_from_{c}" for c in ("pi", "alpha") for t in ("app", "pose"))
METRICS = ("transfer_mse", "transfer_mse_median", "recon_mse", *PROBES, "mi_post")


class DisentangleConfig(MethodConfig):
    name: Literal["disentangle"] = "disentangle"
    mode: Literal["plain", "variational", "adversarial", "mi_fixed_gamma", "rodi", "copy_pose", "copy_appearance"] = "rodi"
    # networks (defaults: the reference code at 64 px)
    code_size: int = Field(4, ge=1, description="spatial side of both codes (image side / 2^downsamplings)")
    code_channels: int = Field(16, ge=1, description="channels of pi and of alpha")
    width: int = Field(16, ge=1, description="first encoder width, doubling per downsampling")
    max_width: int = Field(256, ge=1)
    encoder_blocks: int = Field(5, ge=0, description="residual blocks at the code's resolution")
    decoder_blocks: int = Field(4, ge=0)
    aux_decoders: bool = Field(True, description="the auxiliary decoders D_a(alpha), D_p(sg(pi)), weight 0.5")
    estimator_width: int = Field(512, ge=1)
    estimator_blocks: int = Field(4, ge=0)
    estimator_channels: int = Field(16, ge=1, description="channels of f(pi) and g(alpha) in T = <f, g>")
    estimator_lr_factor: float = Field(2.0, gt=0, description="the estimators' lr / the main lr")
    betas: tuple[float, float] = (0.5, 0.9)
    # the constraint and the controllers
    epsilon: float = Field(0.1, description="the MI target of the constraint I1 <= epsilon")
    mu: float = Field(0.1, gt=0, description="the augmented Lagrangian's penalty")
    lambda_init: float = Field(0.0, ge=0)
    warmup: int = Field(1000, ge=0, description="iterations before the constraint and the controllers act")
    gamma_init: float = Field(1.0, ge=0, description="the KL weight (fixed in variational / mi_fixed_gamma)")
    gamma_gain: float = Field(0.01, ge=0, description="l_gamma")
    gamma_bias: float = Field(0.01, description="b_gamma")
    gamma_max: float | None = Field(None, gt=0, description="upper clip of gamma (the TF code: 1000)")
    ema_decay: float = Field(0.99, gt=0, lt=1)
    # evaluation
    eval_triplets: int = Field(2000, ge=1, description="fixed transfer triplets per evaluated split")
    probe_images: int = Field(2000, ge=2, description="training images whose codes fit the ridge probes")
    mi_post_steps: int = Field(500, ge=0, description="steps of the post-hoc critic on frozen codes (0: off)")
    mi_post_batch: int = Field(256, ge=2)
    grid: int = Field(6, ge=1, le=16, description="rows and columns of transfer_grid.png")
    history_every: int = Field(10, ge=1, description="iterations between points of controllers.png")

    def check_against(self, cfg: ExperimentConfig) -> None:
        if self.mode in TRAINED and cfg.data.global_batch < 2:
            raise ConfigError(f"config: data.batch_size: the MI estimators need a global batch of 2 or more, "
                              f"got {cfg.data.global_batch}")
        if self.mode in TRAINED and self.max_width < self.width:
            raise ConfigError(f"config: method.max_width: {self.max_width} is below method.width={self.width}")


@register_method
class Disentangle(Method):
    name = "disentangle"
    description = "Robust disentangling (ICCV 2019): appearance / pose codes, MI constraint and adaptive KL weight"
    Config = DisentangleConfig
    selection_metric = headline_metric = "transfer_mse"
    lower_is_better = frozenset({"transfer_mse", "transfer_mse_median", "recon_mse"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"appearance_pairs"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return METRICS

    # ---- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        c, ctx = self.cfg, self.ctx
        self.source = appearance_source(ctx.cfg.data, ctx.data.train)
        self._eval: dict[str, Any] = {}
        self.history: list[list[float]] = []
        self.model = None
        if c.mode not in TRAINED:
            return
        side = self.source.pixels.shape[1]
        downs = round(math.log2(side / c.code_size)) if side >= c.code_size else -1
        if downs < 0 or c.code_size * 2**downs != side:
            raise ConfigError(f"config: method.code_size: images of {side} px cannot be halved to a code of "
                              f"{c.code_size} x {c.code_size} (use {side} / a power of 2)")
        torch.manual_seed(ctx.cfg.experiment.seed)  # identical initial weights on every rank
        net = AppearancePoseAutoencoder(c.code_channels, c.width, c.max_width, downs, c.encoder_blocks,
                                        c.decoder_blocks, c.aux_decoders)
        if ctx.is_main:
            say(f"[reprlab] disentangle ({c.mode}): {sum(p.numel() for p in net.parameters()):,} parameters, "
                f"codes {c.code_channels} x {c.code_size} x {c.code_size}")
        self.model = ctx.prepare(net)
        # The estimators see the gathered global batch on every rank, so they stay identical without DDP.
        self.t1 = self._critic().to(ctx.device)
        self.t2 = self._critic().to(ctx.device)
        lr = ctx.cfg.optim.lr
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=c.betas)  # encoders and decoders only
        self.opt_t1 = torch.optim.Adam(self.t1.parameters(), lr=lr * c.estimator_lr_factor, betas=c.betas)
        self.opt_t2 = torch.optim.Adam(self.t2.parameters(), lr=lr * c.estimator_lr_factor, betas=c.betas)
        self.control = RegularizationControl(
            epsilon=c.epsilon, mu=c.mu, lambda_init=c.lambda_init, gamma_init=c.gamma_init if c.mode in WITH_KL else 0.0,
            gain=c.gamma_gain, bias=c.gamma_bias, warmup=c.warmup, decay=c.ema_decay,
            constrain=c.mode in CONSTRAINED, adapt_gamma=c.mode == "rodi", gamma_max=c.gamma_max)

    def _critic(self) -> SeparableCritic:
        c = self.cfg
        return SeparableCritic(c.code_channels, c.code_channels, c.estimator_width, c.estimator_blocks,
                               c.estimator_channels)

    # ---- batches and steps ----------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        if self.model is None:
            return 0
        return self.ctx.iterations_per_epoch()

    def images_per_step(self) -> int:
        return 2 * self.ctx.local_batch()

    def batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        """The global batch of pairs and the sampling noise at (epoch, iteration), drawn alike on
        every rank; each rank takes its rows."""
        n, rows, ctx = self.ctx.cfg.data.global_batch, self.ctx.share(), self.ctx
        shape = (self.cfg.code_channels, self.cfg.code_size, self.cfg.code_size)
        for it in range(self.steps_per_epoch()):
            x_pose, x_app = self.source.pairs(n, np.random.default_rng(ctx.seed(epoch, it, 0xD15)))
            noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(ctx.seed(epoch, it, 0x4015E)))
            yield {"x_pose": tr.to_unit(x_pose[rows]).to(ctx.device), "x_app": tr.to_unit(x_app[rows]).to(ctx.device),
                   "noise": noise[rows].to(ctx.device)}

    def train_step(self, batch) -> dict[str, float]:
        ctx, control = self.ctx, self.control
        x_t = batch["x_pose"]
        out = self.model(x_t, batch["x_app"], batch["noise"])
        per_sample = (x_t - out["x"]).square().flatten(1).sum(1) + float(control.gamma) * out["kl"]
        if "aux_app" in out:
            per_sample = per_sample + 0.5 * ((x_t - out["aux_app"]).square() + (x_t - out["aux_pose"]).square()).flatten(1).sum(1)
        loss = ctx.global_mean(per_sample)
        pi, alpha = ctx.gather(out["pi"]), ctx.gather(out["alpha"])  # the global batch, gradient to the local rows
        constraint = control.constraint_term(frozen_reading(self.t1, pi, alpha.detach())) if control.constrain else None
        if constraint is not None:
            loss = loss + constraint
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t1 = critic_step(self.t1, self.opt_t1, pi, alpha)  # readings before the estimators' steps
        t2 = critic_step(self.t2, self.opt_t2, pi, alpha)
        control.update(t1["mi"], t2["mi"])
        step = int(control.step)
        if step % self.cfg.history_every == 0:
            v = control.values()
            self.history.append([step, v["gamma"], v["lambda"], t1["mi"], t2["mi"], v["ema_i1"], v["ema_i2"]])
        n = ctx.cfg.data.global_batch
        stats = torch.stack([(x_t - out["x"]).square().mean((1, 2, 3)).sum(), out["kl"].sum()]).detach()
        if ctx.world_size > 1:
            stats = ctx.gather(stats[None]).sum(0)
        return {"loss": loss.item(), "rec_mse": stats[0].item() / n, "kl": stats[1].item() / n,
                "mi_t1": t1["mi"], "mi_t2": t2["mi"], "acc_t1": t1["acc"], "acc_t2": t2["acc"],
                "constraint": t1["mi"] - self.cfg.epsilon, "gamma": float(control.gamma), "lambda": float(control.lam)}

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"history": [list(map(float, h)) for h in self.history]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [list(h) for h in state.get("history", [])]

    def epoch_metrics(self) -> dict[str, float]:
        return self.control.values() if self.model is not None else {}

    # ---- evaluation -----------------------------------------------------------------------------
    def _split(self, split: str) -> dict[str, Any]:
        """The split's source and its fixed triplets (RandomState(1) in the reference: a fixed
        generator, the same for every run and seed)."""
        if split not in self._eval:
            images = self.ctx.data.eval_splits[split].query
            source = appearance_source(self.ctx.cfg.data, images)
            target, app, pose = source.triplets(self.cfg.eval_triplets, np.random.default_rng(1))
            self._eval[split] = {"source": source, "target": target, "app": app, "pose": pose}
        return self._eval[split]

    @torch.no_grad()
    def _encode(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """pi's mean and alpha of every image (CPU tensors)."""
        net, bs = unwrap(self.model), self.ctx.cfg.eval.batch_size
        mus, alphas = [], []
        for i in range(0, len(pixels), bs):
            x = tr.to_unit(pixels[i : i + bs]).to(self.ctx.device)
            q, alpha = net.encode(x, x)
            mus.append(q.mean.cpu())
            alphas.append(alpha.cpu())
        return torch.cat(mus), torch.cat(alphas)

    @torch.no_grad()
    def _decode(self, pi: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        net, bs = unwrap(self.model), self.ctx.cfg.eval.batch_size
        return torch.cat([net.decode(pi[i : i + bs].to(self.ctx.device), alpha[i : i + bs].to(self.ctx.device)).cpu()
                          for i in range(0, len(pi), bs)])

    def evaluate(self, split: str) -> dict[str, float]:
        data = self._split(split)
        result = self._evaluate(split, data) if self.ctx.is_main else None
        return self.ctx.broadcast(result)  # rank 0 computes, every rank returns the same

    def _evaluate(self, split: str, data: dict[str, Any]) -> dict[str, float]:
        source, target = data["source"], tr.to_unit(data["target"])
        nan = float("nan")
        if self.model is None:  # the copy baselines
            copied = source.pixels[data["pose"] if self.cfg.mode == "copy_pose" else data["app"]]
            errors = tr.per_example_mse(tr.to_unit(copied), target)
            out = {"transfer_mse": errors.mean().item(), "transfer_mse_median": errors.median().item()}
            return out | {k: nan for k in METRICS if k not in out}
        net = unwrap(self.model)
        net.eval()
        try:
            mu, alpha = self._encode(source.pixels)
            output = self._decode(mu[data["pose"]], alpha[data["app"]])
            errors = tr.per_example_mse(output, target)
            own = np.arange(min(len(mu), self.cfg.eval_triplets))
            recon = tr.per_example_mse(self._decode(mu[own], alpha[own]), tr.to_unit(source.pixels[own]))
            out = {"transfer_mse": errors.mean().item(), "transfer_mse_median": errors.median().item(),
                   "recon_mse": recon.mean().item(), **self._probes(mu, alpha, source), "mi_post": self._mi_post(mu, alpha)}
            if split == "test":
                self._figures(data, errors.numpy())
        finally:
            net.train()
        return out

    def _probes(self, mu: torch.Tensor, alpha: torch.Tensor, source) -> dict[str, float]:
        """Ridge R^2 of each factor from each code, fitted on training codes, scored on the split's."""
        if "train" not in self._eval:
            n = len(self.source.pixels)
            rows = np.sort(np.random.default_rng(2).permutation(n)[: min(n, self.cfg.probe_images)])
            self._eval["train"] = {"rows": rows, "factors": {k: v[rows] for k, v in self.source.factors().items()}}
        rows, train_factors = self._eval["train"]["rows"], self._eval["train"]["factors"]
        train_mu, train_alpha = self._encode(self.source.pixels[rows])
        codes = {"pi": (train_mu, mu), "alpha": (train_alpha, alpha)}
        factors = source.factors()
        out = {}
        for code, (fit, score) in codes.items():
            for short, name in (("app", "appearance"), ("pose", "pose")):
                if name in factors and name in train_factors:
                    out[f"probe/{short}_from_{code}"] = probe_r2(fit.flatten(1).numpy(), train_factors[name],
                                                                 score.flatten(1).numpy(), factors[name])
                else:
                    out[f"probe/{short}_from_{code}"] = float("nan")
        return out

    def _mi_post(self, mu: torch.Tensor, alpha: torch.Tensor) -> float:
        c = self.cfg
        if c.mi_post_steps == 0:
            return float("nan")
        gen = torch.Generator().manual_seed(self.ctx.seed(0x1F05))
        return estimate_mi(mu.to(self.ctx.device), alpha.to(self.ctx.device), self._critic, c.mi_post_steps,
                           c.mi_post_batch, self.ctx.cfg.optim.lr * c.estimator_lr_factor, gen)

    # ---- figures (test split, rank 0) -------------------------------------------------------------
    def _figures(self, data: dict[str, Any], errors: np.ndarray) -> None:
        if self.ctx.run_dir is None:
            return
        source, k = data["source"], self.cfg.grid
        app_rows, pose_rows = data["app"][:k], data["pose"][:k]
        mu, alpha = self._encode(source.pixels[np.concatenate([app_rows, pose_rows])])
        a_idx = np.repeat(np.arange(len(app_rows)), len(pose_rows))
        p_idx = len(app_rows) + np.tile(np.arange(len(pose_rows)), len(app_rows))
        shape = (len(app_rows), len(pose_rows))
        unit = lambda x: ((x.permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)  # noqa: E731
        output = unit(self._decode(mu[p_idx], alpha[a_idx]))
        output = output.reshape(*shape, *output.shape[1:])
        truth = source.truth(np.repeat(app_rows, len(pose_rows)), np.tile(pose_rows, len(app_rows))) / 255.0
        truth = truth.reshape(*shape, *truth.shape[1:])
        self.ctx.write_artifact("transfer_grid.png", tr.transfer_grid_png(
            source.pixels[app_rows] / 255.0, source.pixels[pose_rows] / 255.0, output, truth,
            f"test transfer ({self.cfg.mode}): mean MSE {errors.mean():.4f}"))
        if self.history:
            h = np.asarray(self.history)
            self.ctx.write_artifact("controllers.png", tr.lines_png(
                h[:, 0], {"gamma (KL weight)": h[:, 1], "lambda": h[:, 2], "I1 (adversary), EMA": h[:, 5],
                          "I2 (referee), EMA": h[:, 6]}, "iteration", f"controllers ({self.cfg.mode})"))
        copies = {name: tr.per_example_mse(tr.to_unit(source.pixels[data[rows]]), tr.to_unit(data["target"])).numpy()
                  for name, rows in (("copy pose", "pose"), ("copy appearance", "app"))}
        self.ctx.write_artifact("violin.png", tr.violin_png({self.cfg.mode: errors, **copies}, "per-example transfer MSE",
                                                            "test transfer error"))
