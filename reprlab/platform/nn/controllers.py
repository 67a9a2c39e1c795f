"""The adaptive regularization of robust disentangling (Esser, Haux, Ommer, ICCV 2019; the
reference's ``RoDi`` loss), as a module of buffers, so a checkpoint holds it.

- The MI constraint I1 <= eps by an augmented Lagrangian: with c = I1 - eps, the loss gets
  [step >= warmup] [mu c + lambda >= 0] (lambda c + mu c^2 / 2), and after the step
  lambda <- max(0, lambda + mu c).
- The KL weight gamma <- clip(gamma + gain (EMA(I2) - EMA(I1) - bias), 0, gamma_max): it rises only
  while the referee T2 (trained on detached codes) sees more information than the attacked T1.
- Both updates start after the warm-up, use this step's reading and the EMAs before this step (as
  the reference does); then the bias-corrected EMAs (decay 0.99) take this step's readings.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def bias_corrected_ema(ema: float, count: int, value: float, decay: float) -> float:
    """The bias-corrected EMA after its ``count``-th value (count >= 1): the weighted mean
    sum_k decay^(count-k) v_k / sum_k decay^(count-k), from the previous corrected mean."""
    dc = decay**count
    return ((decay - dc) * ema + (1.0 - decay) * value) / (1.0 - dc)


class RegularizationControl(nn.Module):
    def __init__(self, *, epsilon: float, mu: float, lambda_init: float, gamma_init: float, gain: float, bias: float,
                 warmup: int, decay: float = 0.99, constrain: bool = True, adapt_gamma: bool = True,
                 gamma_max: float | None = None) -> None:
        super().__init__()
        self.epsilon, self.mu, self.gain, self.bias = epsilon, mu, gain, bias
        self.warmup, self.decay, self.gamma_max = warmup, decay, gamma_max
        self.constrain, self.adapt_gamma = constrain, adapt_gamma
        f64 = dict(dtype=torch.float64)
        self.register_buffer("lam", torch.tensor(float(lambda_init), **f64))
        self.register_buffer("gamma", torch.tensor(float(gamma_init), **f64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        for name in ("i1", "i2"):
            self.register_buffer(f"ema_{name}", torch.tensor(0.0, **f64))
            self.register_buffer(f"count_{name}", torch.tensor(0, dtype=torch.int64))

    @property
    def warm(self) -> bool:
        return int(self.step) >= self.warmup

    def constraint_term(self, i1: torch.Tensor) -> torch.Tensor:
        """The augmented-Lagrangian term of this step for the (differentiable) reading ``i1``."""
        if not (self.constrain and self.warm):
            return i1.new_zeros(())
        c = i1 - self.epsilon
        lam = float(self.lam)
        if self.mu * float(c.detach()) + lam < 0:  # inactive: the constraint holds with slack
            return i1.new_zeros(())
        return lam * c + 0.5 * self.mu * c * c

    def update(self, i1: float, i2: float) -> None:
        """After the step: lambda and gamma from this step's I1 and the previous EMAs, then the EMAs."""
        if self.warm:
            if self.constrain:
                self.lam.fill_(max(0.0, float(self.lam) + self.mu * (i1 - self.epsilon)))
            if self.adapt_gamma:
                g = float(self.gamma) + self.gain * (float(self.ema_i2) - float(self.ema_i1) - self.bias)
                g = max(0.0, g) if self.gamma_max is None else min(max(0.0, g), self.gamma_max)
                self.gamma.fill_(g)
        for name, value in (("i1", i1), ("i2", i2)):
            count = getattr(self, f"count_{name}")
            count.add_(1)
            ema = getattr(self, f"ema_{name}")
            ema.fill_(bias_corrected_ema(float(ema), int(count), float(value), self.decay))
        self.step.add_(1)

    def values(self) -> dict[str, float]:
        return {"gamma": float(self.gamma), "lambda": float(self.lam), "ema_i1": float(self.ema_i1),
                "ema_i2": float(self.ema_i2)}
