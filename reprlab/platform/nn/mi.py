"""Mutual-information estimation with a separable critic trained as a classifier of joint against
marginal pairs (Esser, Haux, Ommer, ICCV 2019; the reference code's ``MI`` / ``MIEstimator``).

T(pi, alpha) = sum over channels and positions of f(pi) * g(alpha): a logit. Joint pairs are the
batch's own (pi_i, alpha_i); marginal pairs take alpha reversed along the batch. The critic is
trained with the logistic loss 0.5 (softplus(-T_joint) + softplus(T_marginal)); at its optimum
T_joint is the log density ratio log p(pi, alpha) / (p(pi) p(alpha)), so the mean joint logit
estimates the mutual information.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from reprlab.platform.nn.codecs import ResBlock


class ConvResMLP(nn.Module):
    """conv 3x3, ``blocks`` residual blocks, ReLU, conv 3x3 (the reference's ResMLP, made non-linear)."""

    def __init__(self, in_channels: int, width: int, blocks: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), *[ResBlock(width) for _ in range(blocks)],
                                    nn.ReLU(), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SeparableCritic(nn.Module):
    """T(pi, alpha) = <f(pi), g(alpha)> per sample, for codes of shape N x C x H x W (H = W = 1 for
    vectors)."""

    def __init__(self, pi_channels: int, alpha_channels: int, width: int, blocks: int, out_channels: int = 16) -> None:
        super().__init__()
        self.f = ConvResMLP(pi_channels, width, blocks, out_channels)
        self.g = ConvResMLP(alpha_channels, width, blocks, out_channels)

    def forward(self, pi: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return (self.f(pi) * self.g(alpha)).flatten(1).sum(1)


def critic_terms(critic: nn.Module, pi: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """The logistic loss of joint against marginal pairs (alpha reversed along the batch), the
    classification accuracy and the MI reading (the mean joint logit), on one batch."""
    joint = critic(pi, alpha)
    marginal = critic(pi, alpha.flip(0))
    loss = 0.5 * (F.softplus(-joint) + F.softplus(marginal)).mean()
    acc = 0.5 * ((joint > 0).float().mean() + (marginal < 0).float().mean())
    return {"loss": loss, "acc": acc, "mi": joint.mean()}


def frozen_reading(critic: nn.Module, pi: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The MI reading with the critic's weights held fixed: its gradient reaches ``pi`` and
    ``alpha`` only, never the critic (the adversary's term in the encoder's loss)."""
    params = {k: v.detach() for k, v in critic.named_parameters()}
    return functional_call(critic, params, (pi, alpha)).mean()


def critic_step(critic: nn.Module, optimizer: torch.optim.Optimizer, pi: torch.Tensor, alpha: torch.Tensor) -> dict[str, float]:
    """One step of the critic on detached codes; returns the readings taken before the step."""
    terms = critic_terms(critic, pi.detach(), alpha.detach())
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {k: v.item() for k, v in terms.items()}


def estimate_mi(pi: torch.Tensor, alpha: torch.Tensor, make_critic, steps: int, batch: int, lr: float,
                generator: torch.Generator) -> float:
    """A post-hoc MI estimate between frozen codes (N x ...): a fresh critic (``make_critic()``)
    trained ``steps`` Adam steps on random batches, then its mean joint logit over all N."""
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    critic = make_critic().to(pi.device)
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    n = pi.shape[0]
    batch = min(batch, n)
    for _ in range(steps):
        idx = torch.randperm(n, generator=generator)[:batch].to(pi.device)
        critic_step(critic, opt, pi[idx], alpha[idx])
    with torch.no_grad():
        return float(torch.cat([critic(pi[i : i + 1024], alpha[i : i + 1024]) for i in range(0, n, 1024)]).mean())
