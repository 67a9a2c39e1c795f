"""The adversarial pieces every image-to-image method shares (exposure correction, style
transfer): the generator's non-saturating term and one discriminator step, both on logits.

- :func:`generator_term`: ``-log sigmoid(D(fake))`` per sample (``softplus(-logit)``). With
  ``grad=False`` the value is computed without a graph: it is reported and added to the loss,
  but no gradient reaches the generator (the exposure reference code's behaviour, where the
  output reaches D only through ``extractdata``).
- :func:`discriminator_step`: binary cross-entropy of real (1) and detached fake (0) samples in one
  forward pass (one pass keeps DDP to one reduction per step; BatchNorm then sees real and fake
  together), a step of D's optimizer, and its logs.
- :func:`flip_choices` / :func:`apply_flips`: a random vertical, horizontal or no flip per sample
  (D's input augmentation in the exposure code), drawn for the global batch from a given generator.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def generator_term(disc: nn.Module, fake: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Per-sample ``-log sigmoid(D(fake))``."""
    if grad:
        return F.softplus(-disc(fake))
    with torch.no_grad():
        return F.softplus(-disc(fake.detach()))


def discriminator_step(disc: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       mean=torch.mean) -> dict[str, float]:
    """One step of D on ``real`` and ``fake`` (detached). ``mean`` reduces the per-sample losses
    (a method's global-batch mean under uneven rank shares, e.g. ``ctx.global_mean``)."""
    n = real.shape[0]
    logits = disc(torch.cat([real, fake.detach()]))
    labels = torch.cat([torch.ones(n, device=logits.device), torch.zeros(fake.shape[0], device=logits.device)])
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss = mean(per[:n]) + mean(per[n:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        acc = ((logits > 0).float() == labels).float().mean()
    return {"d_loss": loss.item(), "d_acc": acc.item()}


def flip_choices(n: int, gen: torch.Generator) -> torch.Tensor:
    """For each of ``n`` samples: 0 (as it is), 1 (flipped vertically) or 2 (horizontally), one
    third each. Drawn for a whole global batch, then each rank takes its rows, so that the flips
    do not depend on the number of workers."""
    return torch.randint(0, 3, (n,), generator=gen, device=gen.device)


def apply_flips(x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Each sample of ``x`` flipped as its entry of ``choice`` says (see :func:`flip_choices`)."""
    choice = choice.to(x.device)
    out = torch.where((choice == 1)[:, None, None, None], x.flip(-2), x)
    return torch.where((choice == 2)[:, None, None, None], x.flip(-1), out)
