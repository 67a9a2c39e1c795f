"""Margin loss + distance-weighted mining, one training step's worth, against PML's
``MarginLoss`` + ``DistanceWeightedMiner`` on the same batch, in the same process."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from reprlab.platform.dml import MarginLoss, distance_weighted_triplets
from reprlab.platform.core.errors import ReprlabError


def _pml():
    try:
        from pytorch_metric_learning import losses, miners
    except ImportError:
        raise ReprlabError("bench: pytorch-metric-learning is not installed; pip install -e '.[test]'") from None
    return losses, miners


def _batch(batch: int, dim: int, classes_per_batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes_per_batch).repeat_interleave(batch // classes_per_batch)
    centres = F.normalize(torch.randn(classes_per_batch, dim, generator=g), dim=1)
    emb = centres[labels] + 0.6 * torch.randn(len(labels), dim, generator=g) / dim**0.5
    return emb, labels


def _time_steps(step, repeats: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def bench_loss(
    batch: int = 112, dim: int = 128, classes_per_batch: int = 28, repeats: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Seconds per (mine + loss + backward) step for ours and PML's, and the loss of both on the
    same triplets (their values must agree)."""
    losses, miners = _pml()
    raw, labels = _batch(batch, dim, classes_per_batch, seed)
    ours_loss = MarginLoss(classes_per_batch, margin=0.2, beta=1.2, learn_beta=True)
    pml_loss = losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=True, num_classes=classes_per_batch)
    pml_miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    gen = torch.Generator().manual_seed(seed)

    def ours_step():
        emb = F.normalize(raw.clone().requires_grad_(), dim=1)
        triplets = distance_weighted_triplets(emb, labels, gen)
        ours_loss(emb, labels, triplets).backward()

    def pml_step():
        emb = F.normalize(raw.clone().requires_grad_(), dim=1)
        pml_loss(emb, labels, pml_miner(emb, labels)).backward()

    ours_s = _time_steps(ours_step, repeats)
    pml_s = _time_steps(pml_step, repeats)
    emb = F.normalize(raw, dim=1)
    triplets = distance_weighted_triplets(emb, labels, gen)
    value_ours = ours_loss(emb, labels, triplets).item()
    value_pml = pml_loss(emb, labels, triplets).item()
    return {
        "batch": batch, "dim": dim, "classes_per_batch": classes_per_batch, "repeats": repeats,
        "threads": torch.get_num_threads(), "triplets": len(triplets[0]),
        "ours_s": ours_s, "pml_s": pml_s, "speedup": pml_s / ours_s,
        "loss_ours": value_ours, "loss_pml": value_pml, "abs_diff": abs(value_ours - value_pml),
    }


def format_loss_bench(r: dict[str, Any]) -> str:
    return "\n".join([
        f"loss bench: batch {r['batch']} x {r['dim']}, {r['classes_per_batch']} classes, "
        f"{r['repeats']} steps, torch threads {r['threads']}",
        f"step (mine + margin loss + backward): ours {1e3 * r['ours_s']:.3f} ms, "
        f"PML {1e3 * r['pml_s']:.3f} ms, PML/ours = {r['speedup']:.2f}x",
        f"loss on the same {r['triplets']} triplets: ours {r['loss_ours']:.6f}, PML {r['loss_pml']:.6f}, "
        f"|diff| {r['abs_diff']:.1e}",
    ])
