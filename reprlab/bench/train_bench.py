"""``reprlab bench train``: training images/s of the margin baseline on the platform against
pytorch-metric-learning's trainer (``trainers.MetricLossOnly``), in one process.

Both sides train the same network (our ``SmallCNN`` trunk + ``EmbeddingHead``: linear, then L2
normalization) of the same width and embedding size, on the same glyphs training images, with
class-balanced P x M batches, the margin loss with a learnable beta per class, distance-weighted
negatives, Adam with the same learning rates and weight decay, on the CPU with the same number of
torch threads, for the same number of iterations. Rounds alternate (ours, PML, ours, PML, ...)
so a load change on the machine hits both sides alike.

- **Ours**: the platform's own training loop (``training._train_epoch``) over the ``margin``
  method built through ``Context`` exactly as an in-process run builds it: ``ctx.train_batches``
  (batched fetch of the decoded pixel arrays), ``train_step`` (forward, gather, our
  distance-weighted sampler, ``MarginLoss``, backward, Adam step, ``loss.item()``), the loop's
  finite-loss check, per-step log averaging and progress lines. No evaluation and no checkpoint
  (``bench overhead`` measures those).
- **PML**: ``MetricLossOnly.train`` with ``MPerClassSampler`` (M images per class), PML's
  ``DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)`` and ``MarginLoss(margin=0.2,
  beta=1.2, learn_beta=True, num_classes=C)``, three Adam optimizers (trunk, embedder, loss);
  its DataLoader reads the same pixel arrays through the same batched fetch (a ``collate_fn``
  that passes the batch through), so the data path is the same on both sides and the
  difference is the trainer, sampler, miner and loss. tqdm's bar is switched off.

Images/s is steady state: the time from the end of iteration ``warmup`` to the end of the last
iteration (timestamps from each loop's per-iteration hook: ``on_iteration_end`` / PML's
``end_of_iteration_hook``), over the images of those iterations. Start-up (building the
network, the first batches, allocator warm-up) is left out on both sides.
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings
from types import SimpleNamespace
from typing import Any

import torch

from reprlab.platform.core.errors import ReprlabError


def _pml():
    try:
        from pytorch_metric_learning import losses, miners, samplers, trainers
    except ImportError:
        raise ReprlabError("bench: pytorch-metric-learning is not installed; pip install -e '.[test]'") from None
    return losses, miners, samplers, trainers


class _LabelledImages(torch.utils.data.Dataset):
    """(images, labels) of a list of indices in one batched fetch; the PML side's data set."""

    def __init__(self, images, targets) -> None:
        self.images, self.targets = images, torch.as_tensor(targets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, index):
        x, idx = self.images.__getitems__(index)
        return x, self.targets[idx]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _passthrough(batch):
    return batch


def _context(cfg):
    from reprlab.platform.contract.context import Context
    from reprlab.platform.contract.context import load_run_data

    return Context(cfg, load_run_data(cfg), torch.device("cpu"))


def run_ours(cfg, iterations: int, warmup: int) -> dict[str, float]:
    """The platform's loop over the margin method for ``warmup + iterations`` iterations."""
    from reprlab.platform.core.registry import METHODS
    from reprlab.platform.run.telemetry import Telemetry
    from reprlab.platform.run.loop import _train_epoch

    torch.manual_seed(cfg.experiment.seed)
    ctx = _context(cfg)
    method = METHODS.get(cfg.method.name)(ctx)
    method.build()
    stamps: list[float] = []
    hook = method.on_iteration_end

    def stamped(iteration: int) -> None:
        hook(iteration)
        stamps.append(time.perf_counter())

    method.on_iteration_end = stamped
    logs = _train_epoch(method, ctx, 1, Telemetry("bench", "bench", cfg.method.name, enabled=False))
    return _rate(stamps, warmup, cfg.data.global_batch) | {"loss": logs["loss"]}


def run_pml(cfg, iterations: int, warmup: int) -> dict[str, float]:
    """PML's MetricLossOnly trainer on the same network, data, batch, loss and miner."""
    from reprlab.platform.nn.backbones import EmbeddingHead, SmallCNN

    losses, miners, samplers, trainers = _pml()
    torch.manual_seed(cfg.experiment.seed)
    ctx = _context(cfg)
    d, m, o = cfg.data, cfg.method, cfg.optim
    trunk = SmallCNN(cfg.model.width)
    embedder = EmbeddingHead(trunk.out_dim, cfg.model.embed_dim)
    loss = losses.MarginLoss(margin=m.margin, beta=m.beta, learn_beta=m.learn_beta,
                             num_classes=ctx.data.num_classes, nu=m.nu)
    miner = miners.DistanceWeightedMiner(cutoff=m.cutoff, nonzero_loss_cutoff=m.nonzero_loss_cutoff)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=o.lr, weight_decay=o.weight_decay),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=o.lr, weight_decay=o.weight_decay),
        "metric_loss_optimizer": torch.optim.Adam(loss.parameters(), lr=m.beta_lr, weight_decay=0.0),
    }
    total = warmup + iterations
    sampler = samplers.MPerClassSampler(ctx.data.targets, m=d.samples_per_class, batch_size=d.global_batch,
                                        length_before_new_iter=d.global_batch * total)
    stamps: list[float] = []
    values: list[float] = []

    def hook(trainer) -> None:
        values.append(trainer.losses["total_loss"].item())
        stamps.append(time.perf_counter())

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder}, optimizers=optimizers, batch_size=d.global_batch,
        loss_funcs={"metric_loss": loss}, mining_funcs={"tuple_miner": miner},
        dataset=_LabelledImages(ctx._dataset(ctx.data.train, False), ctx.data.targets),
        sampler=sampler, iterations_per_epoch=total, dataloader_num_workers=d.loader_workers,
        collate_fn=_passthrough, data_device=torch.device("cpu"), end_of_iteration_hook=hook,
    )
    from pytorch_metric_learning.trainers import base_trainer

    saved = base_trainer.tqdm
    base_trainer.tqdm = SimpleNamespace(tqdm=functools.partial(saved.tqdm, disable=True))  # no progress bar
    try:
        with warnings.catch_warnings():  # PML formats its loss tensor for the (disabled) bar every step
            warnings.simplefilter("ignore", UserWarning)
            trainer.train(num_epochs=1)
    finally:
        base_trainer.tqdm = saved
    return _rate(stamps, warmup, d.global_batch) | {"loss": sum(values) / len(values)}


def _rate(stamps: list[float], warmup: int, batch: int) -> dict[str, float]:
    measured = len(stamps) - warmup
    if measured < 1:
        raise ReprlabError(f"bench train: {len(stamps)} iterations ran, fewer than the warm-up + 1")
    seconds = stamps[-1] - stamps[warmup - 1] if warmup else stamps[-1] - stamps[0]
    measured = measured if warmup else measured - 1
    return {"images_per_s": measured * batch / seconds, "seconds": seconds, "iterations": float(measured)}


def bench_train(config: str, overrides: list[str], iterations: int = 60, warmup: int = 10, rounds: int = 2,
                threads: int | None = None) -> dict[str, Any]:
    from reprlab.platform.core.config import load_config

    if iterations < 1 or warmup < 1 or rounds < 1:
        raise ReprlabError("bench train: --iterations, --warmup and --rounds must be at least 1")
    given = load_config(config, overrides)
    cfg = load_config(config, [*overrides, "scaling.num_workers=0", "scaling.use_gpu=false",
                               f"data.iterations_per_epoch={warmup + iterations}"])
    if cfg.method.name != "margin" or cfg.model.backbone != "small_cnn":
        raise ReprlabError("bench train: compares the margin method on small_cnn (method.name=margin, "
                           "model.backbone=small_cnn)")
    # default: the CPUs the config's run would use (the glyphs preset: 2 workers x 1 CPU = 2 threads)
    threads = threads or max(1, int(given.scaling.cpus_per_worker * max(1, given.scaling.num_workers)))
    torch.set_num_threads(threads)
    runs = []
    for r in range(rounds):
        ours = run_ours(cfg, iterations, warmup)
        pml = run_pml(cfg, iterations, warmup)
        runs.append({"round": r + 1, "ours_images_per_s": ours["images_per_s"], "pml_images_per_s": pml["images_per_s"],
                     "ratio": ours["images_per_s"] / pml["images_per_s"], "ours_loss": ours["loss"],
                     "pml_loss": pml["loss"]})
    d = cfg.data
    return {
        "config": config, "overrides": overrides, "threads": threads, "iterations": iterations, "warmup": warmup,
        "batch": d.global_batch, "classes_per_batch": d.classes_per_batch, "samples_per_class": d.samples_per_class,
        "width": cfg.model.width, "embed_dim": cfg.model.embed_dim, "image_size": d.image_size,
        "train": {k: v for k, v in cfg.train.model_dump().items() if k in ("amp", "channels_last", "compile",
                                                                          "grad_accumulation")},
        "runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs),
    }


def format_train_bench(r: dict[str, Any]) -> str:
    lines = [
        f"train bench: margin + distance-weighted sampling, SmallCNN width {r['width']}, {r['embed_dim']}-d, "
        f"{r['image_size']} px, batch {r['batch']} = {r['classes_per_batch']} x {r['samples_per_class']}, "
        f"{r['iterations']} iterations after {r['warmup']} warm-up, torch threads {r['threads']}, "
        f"options {r['train']}",
        "| round | ours img/s | PML MetricLossOnly img/s | ours / PML | mean loss ours / PML |",
        "|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(f"| {x['round']} | {x['ours_images_per_s']:.0f} | {x['pml_images_per_s']:.0f} | "
                     f"{x['ratio']:.2f}x | {x['ours_loss']:.4f} / {x['pml_loss']:.4f} |")
    lines.append(f"median ours / PML: {r['median_ratio']:.2f}x")
    return "\n".join(lines)
