"""A small (variational) autoencoder: a first stage for IIN, which makes it generative (decode
T^-1(eps)) and lets factors be swapped between images and decoded.

image -> backbone -> linear -> (mu, log var) of z (``model.embed_dim``); training decodes
z = mu + sigma * noise, evaluation and the frozen model use z = mu. Loss: mean squared
reconstruction error (in the network-input space) + ``kl_weight`` x KL(q(z|x) || N(0, I)) per
dimension. Evaluated by reconstruction error and KL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.dml.method import make_optimizer, make_scheduler
from reprlab.platform.contract.frozen import FrozenModel, load_weights
from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.nn.backbones import ConvDecoder, VectorEncoder, build_backbone


class AutoencoderConfig(MethodConfig):
    name: Literal["autoencoder"] = "autoencoder"
    kl_weight: float = Field(0.01, ge=0.0, description="0: a plain autoencoder")
    decoder_width: int = Field(32, ge=4)


class MeanEncoder(nn.Module):
    """The encoder's mean: the deterministic representation z = mu(x)."""

    def __init__(self, encoder: VectorEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).chunk(2, dim=1)[0]


class AutoencoderNet(nn.Module):
    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        dim = cfg.model.embed_dim
        self.encoder = VectorEncoder(build_backbone(cfg.model), 2 * dim)
        self.decoder = ConvDecoder(dim, cfg.data.image_size, cfg.method.decoder_width)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu if noise is None else mu + (0.5 * logvar).exp() * noise
        return self.decoder(z), mu, logvar


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of every sample, averaged over the dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(1)


@register_method
class Autoencoder(Method):
    name = "autoencoder"
    description = "Convolutional (variational) autoencoder: a first stage for IIN"
    Config = AutoencoderConfig
    supports_accumulation = True
    selection_metric = "mse"
    headline_metric = "mse"
    lower_is_better = frozenset({"mse", "kl"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return ("mse", "kl")

    @classmethod
    def frozen_model(cls, cfg: ExperimentConfig, attributes: dict[str, Any]) -> FrozenModel:
        net = load_weights(AutoencoderNet(cfg), attributes["net"], "autoencoder")
        return FrozenModel("autoencoder", MeanEncoder(net.encoder), decoder=net.decoder)

    def build(self) -> None:
        self.net = self.ctx.prepare(AutoencoderNet(self.ctx.cfg))
        self.optimizer = make_optimizer([{"params": [p for p in self.net.parameters() if p.requires_grad]}],
                                        self.ctx.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.ctx.cfg.optim)
        self.noise = torch.Generator(self.ctx.device).manual_seed(self.ctx.seed(self.ctx.rank, 0xAE))

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.ctx.shuffled_batches(epoch)

    def images_per_step(self) -> int:
        return self.ctx.local_batch()

    def train_step(self, batch) -> dict[str, float]:
        x, _ = batch
        noise = torch.randn(x.shape[0], self.ctx.cfg.model.embed_dim, generator=self.noise, device=x.device)
        (recon, mu, logvar), backward = self.ctx.micro_batched(self.net, x, noise)
        # means over the global batch, whatever each rank's share of it (ctx.global_mean)
        mse = self.ctx.global_mean((recon - x).pow(2).flatten(1).mean(1))
        kl = self.ctx.global_mean(kl_per_sample(mu, logvar))
        loss = mse + self.cfg.kl_weight * kl
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        return {"loss": loss.item(), "mse": mse.item(), "kl": kl.item()}

    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()

    def evaluate(self, split: str) -> dict[str, float]:
        net = unwrap(self.net)
        dim = self.ctx.cfg.model.embed_dim

        def errors(x: torch.Tensor) -> torch.Tensor:  # per image: squared error, KL (summed over dims)
            recon, mu, logvar = net(x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
            return torch.stack([(recon - x).pow(2).flatten(1).mean(1), kl], 1)

        self.net.eval()
        try:
            per_image = self.ctx.embed(errors, self.ctx.data.eval_splits[split].query)
        finally:
            self.net.train()
        metrics = None
        if self.ctx.is_main:  # the gathered errors are on rank 0
            metrics = {"mse": float(per_image[:, 0].mean()), "kl": float(per_image[:, 1].mean() / dim)}
        return self.ctx.broadcast(metrics)
