"""What the platform hands a method: device, rank, data, config, and data-parallel helpers.

Generic for every method family: networks on the device and in DDP, gathers and broadcasts on the
process group's device, seeds, artifacts, the epoch's batches (plain index batches, images with
labels, or whole samples with joint augmentation), and mapping a network over an evaluation split.
Metric-learning helpers (class-balanced samplers, retrieval evaluation) live next to the DML method
base, :mod:`reprlab.platform.dml.batches`."""

from __future__ import annotations

import zlib

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from reprlab.platform.core.config import ExperimentConfig
from reprlab.platform.data import DataBundle
from reprlab.platform.data.pipeline import finish_batch, make_dataset, make_loader, sequential_batches
from reprlab.platform.data.sampler import rank_bounds, shuffled_batches
from reprlab.platform.data.types import ImageSet
from reprlab.platform.contract.speed import apply_speed_options, micro_batched
from reprlab.platform.nn.sync_bn import convert_global_batchnorm
from reprlab.platform.core.storage import Location, resolve


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 (ranks may hold different numbers of rows); backward sums every
    rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        rows = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.zeros_like(rows) for _ in range(world)]
        dist.all_gather(counts, rows)
        counts = [int(c.item()) for c in counts]
        most = max(counts)
        padded = tensor.new_zeros((most, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start = sum(counts[: dist.get_rank()])
        ctx.rows = tensor.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.rows]


@dataclass
class Context:
    cfg: ExperimentConfig
    data: DataBundle
    device: torch.device
    rank: int = 0
    world_size: int = 1
    run_dir: Location | Path | None = None  # where the run's files go (see storage.py)
    _datasets: dict = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- networks ----------------------------------------------------------------------------
    def prepare(self, module: nn.Module, *, partial: bool = False) -> nn.Module:
        """Move to the device; wrap in DDP when several workers train and it has trainable weights.

        ``partial``: some steps use only part of the module (e.g. one learner's slice). DDP then
        looks for unused parameters; those unused on every rank keep ``grad=None``, so optimizers
        leave them untouched.
        """
        module = module.to(self.device)
        if _distributed() and self.cfg.train.sync_bn:  # BatchNorm statistics of the global batch
            module = convert_global_batchnorm(module)
        module = apply_speed_options(module, self.cfg.train, self.device)  # amp, channels_last, compile
        if _distributed() and any(p.requires_grad for p in module.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=partial)
        return module

    def micro_batched(self, net: nn.Module, *inputs, **kwargs):
        """``(outputs, backward)``: ``net(*inputs, **kwargs)`` and the function that back-propagates
        a loss of those outputs, over ``train.grad_accumulation`` micro-batches (see ``speed.py``);
        with one micro-batch, the plain forward and ``loss.backward()``."""
        return micro_batched(net, inputs, kwargs, self.cfg.train.grad_accumulation)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-rank batch over all ranks, keeping gradients to the local part.

        Every rank then computes the same loss on the global batch; the backward pass sums the
        gradients of all ranks for each rank's slice, so DDP's average is the global gradient.
        """
        if not _distributed():
            return tensor
        return _GatherWithGrad.apply(tensor)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not _distributed():
            return flag
        t = torch.tensor([float(flag)], device=self.device)  # on the process group's device (NCCL: the GPU)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def rank_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (once per epoch, for the logs), on the process
        group's device.

        A loss written as ``global_mean`` is, on each rank, that rank's term of the global batch's
        mean (its sum x world size / n); the average of the terms is the global mean, the number
        one process reports. Losses every rank computes on the gathered batch are unchanged. If
        the ranks logged different keys, each keeps its own values."""
        if not _distributed():
            return values
        keys = sorted(values)
        tag = torch.tensor([len(keys), zlib.crc32("\0".join(keys).encode())], dtype=torch.float64, device=self.device)
        tags = [torch.empty_like(tag) for _ in range(self.world_size)]
        dist.all_gather(tags, tag)
        if any(not torch.equal(t, tag) for t in tags):
            return values
        total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return dict(zip(keys, (total / self.world_size).tolist()))

    def rank_spread(self, values) -> float:
        """The largest difference between ranks of ``values`` (numbers that ranks in lock-step
        must agree on; 0 in-process), gathered on the context's device."""
        mine = torch.as_tensor(values, dtype=torch.float64, device=self.device).reshape(-1)
        if not _distributed():
            return 0.0
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine)
        stacked = torch.stack(parts)
        return float((stacked - stacked[0]).abs().max())

    @staticmethod
    def fingerprint(module: nn.Module) -> torch.Tensor:
        """Two numbers that change with any weight of ``module``: the sums of its parameters and
        of their squares, weighted by position (float64), e.g. to check that ranks still hold
        the same network."""
        total = torch.zeros(2, dtype=torch.float64)
        for i, p in enumerate(module.parameters(), start=1):
            v = p.detach().double()
            total += torch.stack([v.sum() * i, (v * v).sum()]).cpu()
        return total

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not _distributed():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def seed(self, *parts: int) -> int:
        """A seed derived from the experiment seed and ``parts`` (e.g. epoch, rank)."""
        return int(np.random.SeedSequence([self.cfg.experiment.seed, *parts]).generate_state(1)[0])

    def write_artifact(self, name: str, data: bytes) -> None:
        """Rank 0 writes ``data`` as ``name`` in the run's storage (a local directory or object
        storage; atomically: a reader never sees half a file); other ranks and runs without a
        run directory write nothing."""
        if not self.is_main or self.run_dir is None:
            return
        (resolve(self.run_dir) / name).write_bytes(data)

    # ---- data --------------------------------------------------------------------------------
    def iterations_per_epoch(self) -> int:
        d = self.cfg.data
        return d.iterations_per_epoch or max(1, len(self.data.train) // d.global_batch)

    def share(self, n: int | None = None) -> slice:
        """This rank's rows of a global batch of ``n`` (default ``data.global_batch``) samples."""
        return slice(*rank_bounds(self.cfg.data.global_batch if n is None else n, self.rank, self.world_size))

    def local_batch(self) -> int:
        """Samples of a global batch this rank holds."""
        s = self.share()
        return s.stop - s.start

    def global_mean(self, per_sample: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """The mean of a per-sample loss over the global batch of ``n`` samples (default
        ``data.global_batch``), as this rank's term: DDP averages the ranks' gradients, so each
        rank's term is its sum x world size / n; with equal shares that is its own mean."""
        n = self.cfg.data.global_batch if n is None else n
        if per_sample.shape[0] * self.world_size == n:
            return per_sample.mean()
        return per_sample.sum() * (self.world_size / n)

    def plain_batches(self, epoch: int) -> np.ndarray:
        """Indices into the training set of this rank's share of every plain shuffled global batch
        of ``data.batch_size`` in ``epoch`` (iterations x share)."""
        return shuffled_batches(len(self.data.train), self.cfg.data.global_batch, self.iterations_per_epoch(),
                                epoch=epoch, seed=self.cfg.experiment.seed, rank=self.rank,
                                world_size=self.world_size)

    def shuffled_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(images, labels) of plain shuffled global batches of ``data.batch_size`` (this rank's
        share of each), for methods that need no class balance; labels are None for unlabeled
        data."""
        share = self.share()
        return self.train_batches(self.plain_batches(epoch), epoch, slots=np.arange(share.start, share.stop))

    def sample_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Whole samples of plain shuffled global batches (this rank's share), as dicts: ``image``,
        and where the data set has them ``label``, ``target`` (the paired image) and its dense
        targets by name (``<name>_visible`` for keypoints). With ``data.augment`` every sample gets
        one random crop and flip, applied jointly to its images and dense targets and drawn for the
        global batch from (seed, epoch, iteration), so a sample is the same whatever the number
        of workers (:mod:`reprlab.platform.data.samples`)."""
        from reprlab.platform.data.samples import SampleLoader

        loader = SampleLoader(self.data.train, self.cfg.data.image_size, self.cfg.data.augment,
                              seed=self.seed(epoch, 0x5A3))
        index = shuffled_batches(len(self.data.train), self.cfg.data.global_batch, self.iterations_per_epoch(),
                                 epoch=epoch, seed=self.cfg.experiment.seed)
        share = self.share()
        labels = torch.from_numpy(self.data.targets) if self.data.train.labels is not None else None
        for it, batch in enumerate(index):
            sample = loader.load(batch, iteration=it, rows=share)
            if labels is not None:
                sample["label"] = labels[batch[share]]
            yield {k: v.to(self.device, non_blocking=True) for k, v in sample.items()}

    def _dataset(self, images: ImageSet, augment: bool):
        key = (id(images), augment)
        if key not in self._datasets:
            self._datasets[key] = make_dataset(images, self.cfg.data.image_size, augment,
                                               uint8=self.device.type == "cuda")
        return self._datasets[key]

    def _loader(self, ds, batches, slots=None):
        d = self.cfg.data
        pin = d.pin_memory if d.pin_memory is not None else self.device.type == "cuda"
        return make_loader(ds, batches, d.loader_workers, pin and torch.cuda.is_available(), d.prefetch_factor, slots)

    def train_batches(
        self, index_batches: np.ndarray, epoch: int, labels: np.ndarray | None = None, *, stream: int = 0,
        slots: np.ndarray | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device for each row of ``index_batches`` into the train set.

        Labels are the class targets, or ``labels`` given per batch slot (same shape as
        ``index_batches``: e.g. cluster labels, possibly noisy). ``stream`` separates the
        augmentation randomness of several loaders in one epoch. ``slots``: where this rank's
        columns sit in the global batch (default: rank x width onwards, the equal contiguous
        shares of class-balanced batches); an image's augmentation is drawn from (seed, epoch,
        stream, batch, slot), so it does not depend on the number of workers.
        """
        ds = self._dataset(self.data.train, self.cfg.data.augment)
        ds.reseed(self.seed(epoch, 0, 0xA06, stream))  # augmentation: (seed, epoch, stream, batch, slot)
        index_batches = np.asarray(index_batches)
        if slots is None:
            width = index_batches.shape[1] if index_batches.ndim == 2 else 0
            slots = self.rank * width + np.arange(width)
        loader = self._loader(ds, index_batches, slots)
        targets = torch.from_numpy(self.data.targets) if self.data.train.labels is not None else None
        for i, (x, idx) in enumerate(loader):
            if labels is not None:
                y = torch.from_numpy(np.asarray(labels[i]))
            else:
                y = None if targets is None else targets[idx]
            yield finish_batch(x, self.device), (None if y is None else y.to(self.device, non_blocking=True))

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor], images: ImageSet, *,
              everywhere: bool = False) -> np.ndarray | None:
        """``fn`` over all of ``images``: each rank embeds a contiguous shard, then the shards are
        gathered to rank 0 (other ranks get None: only rank 0 computes metrics and clusters, so
        the other ranks hold no copy), or to every rank with ``everywhere``."""
        ds = self._dataset(images, augment=False)
        batches = sequential_batches(len(images), self.cfg.eval.batch_size, self.rank, self.world_size)
        loader = self._loader(ds, batches)
        parts = [fn(finish_batch(x, self.device)).float().cpu() for x, _ in loader]
        local = torch.cat(parts) if parts else torch.empty(0)
        return self._gather_rows(local, everywhere)

    @torch.no_grad()
    def map_samples(self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], images: ImageSet, *,
                    everywhere: bool = False) -> np.ndarray | None:
        """``fn`` over every sample of an evaluation set (dicts as :meth:`sample_batches` gives, not
        augmented): each rank maps a contiguous shard, gathered as :meth:`embed` does. ``fn``
        returns one row per sample (e.g. per-sample errors of an image-to-image method)."""
        from reprlab.platform.data.samples import SampleLoader

        loader = SampleLoader(images, self.cfg.data.image_size, augment=False)
        parts = []
        for batch in sequential_batches(len(images), self.cfg.eval.batch_size, self.rank, self.world_size):
            sample = {k: v.to(self.device) for k, v in loader.load(batch).items()}
            parts.append(fn(sample).float().cpu())
        local = torch.cat(parts) if parts else torch.empty(0)
        return self._gather_rows(local, everywhere)

    def _gather_rows(self, local: torch.Tensor, everywhere: bool) -> np.ndarray | None:
        """Every rank's rows in rank order: on rank 0 only, or on every rank."""
        if not _distributed():
            return local.numpy()
        gathered = [None] * self.world_size if (everywhere or self.is_main) else None
        if everywhere:
            dist.all_gather_object(gathered, local.numpy())
        else:
            dist.gather_object(local.numpy(), gathered, dst=0)
            if not self.is_main:
                return None
        return np.concatenate([g for g in gathered if g.size])


def load_run_data(cfg: ExperimentConfig) -> DataBundle:
    """The data of a run under ``cfg``: the data set in its protocol with validation carved out;
    methods drawing class-balanced batches need two images of every training class."""
    from reprlab.platform.core.registry import METHODS
    from reprlab.platform.data import load_bundle

    method = METHODS.get(cfg.method.name)
    return load_bundle(cfg.data, cfg.experiment.seed, min_per_class=2 if method.batching == "class_balanced" else 1)
