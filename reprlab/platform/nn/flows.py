"""Invertible networks on vectors (IIN's T) and their likelihood losses.

A flow block is ActNorm (per-dimension affine with data-dependent initialisation), a double affine
coupling (each half rescaled and shifted by MLPs of the other half, ``s`` ending in tanh) and a
fixed random permutation. Every block returns its exact log-determinant, so
``T(z) -> (z~, logdet)`` and ``T.reverse(z~) -> z``.

Losses (IIN, Esser et al. 2020), per dimension so that their size does not depend on the width:

- :func:`unsupervised_loss`: the flow's negative log-likelihood under N(0, I) (constant dropped).
- :func:`factor_loss`: pairs that share some factors: a shared factor k of the second member is
  N(rho z~1_k, (1 - rho^2) I), everything else N(0, I). With nothing shared it is the unsupervised
  loss of both members.
- :func:`factor_sizes`: how many dimensions each factor gets, from the covariance of z between the
  members of pairs that share it (the residual scores 1; sizes follow a softmax of the scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn


class ActNorm(nn.Module):
    """y = scale * (x + shift) per dimension; on the first forward pass in training (or through
    :meth:`initialize`) shift = -mean and scale = 1 / (std + 1e-6) of that batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        self.shift.copy_(-x.mean(0))
        self.log_scale.copy_(-torch.log(x.std(0) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.shift) * self.log_scale.exp()
        return y, self.log_scale.sum().expand(x.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp() - self.shift


def mlp(n_in: int, n_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` (LeakyReLU); the output layer starts at zero, so a fresh
    coupling is the identity."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.LeakyReLU(0.2)]
    out = nn.Linear(width if depth else n_in, n_out)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


class DoubleAffineCoupling(nn.Module):
    """x_a <- x_a * exp(s1(x_b)) + t1(x_b), then x_b <- x_b * exp(s2(x_a)) + t2(x_a)."""

    def __init__(self, dim: int, width: int, depth: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError("a coupling needs at least 2 dimensions")
        self.na = dim // 2
        nb = dim - self.na
        self.s = nn.ModuleList([mlp(nb, self.na, width, depth), mlp(self.na, nb, width, depth)])
        self.t = nn.ModuleList([mlp(nb, self.na, width, depth), mlp(self.na, nb, width, depth)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, : self.na], x[:, self.na :]
        s1 = torch.tanh(self.s[0](b))
        a = a * s1.exp() + self.t[0](b)
        s2 = torch.tanh(self.s[1](a))
        b = b * s2.exp() + self.t[1](a)
        return torch.cat([a, b], 1), s1.sum(1) + s2.sum(1)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y[:, : self.na], y[:, self.na :]
        b = (b - self.t[1](a)) * (-torch.tanh(self.s[1](a))).exp()
        a = (a - self.t[0](b)) * (-torch.tanh(self.s[0](b))).exp()
        return torch.cat([a, b], 1)


class Permutation(nn.Module):
    """A fixed random permutation of the dimensions (log-determinant 0)."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inverse", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.inverse]


class InvertibleNetwork(nn.Module):
    """``blocks`` x (ActNorm, double affine coupling, permutation) on ``dim``-vectors."""

    def __init__(self, dim: int, blocks: int, width: int, depth: int, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [ActNorm(dim), DoubleAffineCoupling(dim, width, depth), Permutation(dim, seed * 1000 + i)]
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def reverse(self, zt: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            zt = layer.reverse(zt)
        return zt

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        """Data-dependent initialisation of every ActNorm from one batch (each sees that batch as
        it arrives at its block)."""
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                layer.initialize(z)
            z, _ = layer(z)


# ---------------------------------------------------------------------------------------- losses


def flow_nll(zt: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-likelihood per dimension of z under N(0, I) pulled back through T
    (the constant 0.5 log 2 pi dropped)."""
    return (0.5 * zt.pow(2).sum(1) - logdet) / zt.shape[1]


def unsupervised_loss(zt: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    return flow_nll(zt, logdet).mean()


def factor_of_dim(sizes: Sequence[int], device=None) -> torch.Tensor:
    """The factor index of every dimension of z~ (factors in order, the residual last)."""
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.as_tensor(list(sizes), device=device))


def factor_loss(zt1: torch.Tensor, logdet1: torch.Tensor, zt2: torch.Tensor, logdet2: torch.Tensor,
                shared: torch.Tensor, sizes: Sequence[int], rho: float) -> torch.Tensor:
    """IIN's loss on pairs. ``shared``: (B, F + 1) booleans, which factors each pair shares (the
    last column, the residual, is never shared). z~1 ~ N(0, I); a shared factor k of z~2 ~
    N(rho z~1_k, (1 - rho^2) I); the other factors of z~2 ~ N(0, I). The mean of both members'
    negative log-likelihood per dimension."""
    shared = shared.clone()
    shared[:, -1] = False
    mask = shared[:, factor_of_dim(sizes, zt1.device)]
    var = torch.where(mask, torch.full_like(zt2, 1.0 - rho * rho), torch.ones_like(zt2))
    mean = torch.where(mask, rho * zt1, torch.zeros_like(zt1))
    nll2 = (0.5 * (zt2 - mean).pow(2) / var + 0.5 * var.log()).sum(1) - logdet2
    nll1 = 0.5 * zt1.pow(2).sum(1) - logdet1
    return ((nll1 + nll2) / (2 * zt1.shape[1])).mean()


def factor_scores(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """score_F = sum_d Cov(z1_d, z2_d) / sum_d Var(z_d) over pairs sharing F (variance over both
    members)."""
    scores = {}
    for name, (z1, z2) in pairs.items():
        z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
        cov = ((z1 - z1.mean(0)) * (z2 - z2.mean(0))).mean(0).sum()
        var = np.concatenate([z1, z2]).var(0).sum()
        scores[name] = float(cov / max(var, 1e-12))
    return scores


def factor_sizes(scores: Mapping[str, float], dim: int) -> list[int]:
    """Dimensions per factor (in the order of ``scores``) and the residual (last, score 1):
    proportional to softmax(scores), each at least 1, summing to ``dim`` (largest remainders)."""
    s = np.array([*scores.values(), 1.0])
    if dim < len(s):
        raise ValueError(f"{dim} dimensions cannot hold {len(s)} factors")
    share = np.exp(s - s.max())
    share = share / share.sum() * dim
    sizes = np.maximum(np.floor(share).astype(int), 1)
    while sizes.sum() > dim:  # the minimum of 1 overshot: take from the largest
        sizes[np.argmax(sizes)] -= 1
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    for i in range(dim - sizes.sum()):
        sizes[order[i % len(sizes)]] += 1
    return [int(v) for v in sizes]


def parse_sizes(sizes: Sequence[int], n_factors: int, dim: int) -> list[int]:
    """Check given factor sizes (factors, then the residual) against the representation."""
    if len(sizes) != n_factors + 1 or sum(sizes) != dim or min(sizes) < 1:
        raise ValueError(f"factor sizes {list(sizes)} must be {n_factors + 1} positive numbers "
                         f"(factors, then the residual) summing to {dim}")
    return list(sizes)

