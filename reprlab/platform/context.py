"""What the platform hands a method: device, rank, data, config, and data-parallel helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from reprlab.platform.config import ExperimentConfig
from reprlab.platform.data import DataBundle, EvalSplit
from reprlab.platform.data.pipeline import ArrayImages, finish_batch, make_dataset, make_loader, sequential_batches
from reprlab.platform.data.sampler import ClassBalancedSampler, ClusterRoundRobinSampler, shuffled_batches
from reprlab.platform.data.types import ImageSet
from reprlab.platform.speed import apply_speed_options, micro_batched
from reprlab.platform.storage import Location, resolve


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums every rank's gradient of this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


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
        module = apply_speed_options(module.to(self.device), self.cfg.train, self.device)  # amp, channels_last, compile
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
        t = torch.tensor([float(flag)])
        dist.all_reduce(t)
        return bool(t.item() > 0)

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
        return d.iterations_per_epoch or max(1, len(self.data.train) // d.batch_size)

    def class_balanced_sampler(
        self, targets: np.ndarray | None = None, iterations: int | None = None, *, stream: int = 0,
        repeat_classes: bool = False,
    ) -> ClassBalancedSampler:
        """P x M batches over the training set's classes, or over other ``targets`` (e.g. cluster
        labels); see :class:`ClassBalancedSampler`."""
        d = self.cfg.data
        return ClassBalancedSampler(
            self.data.targets if targets is None else targets,
            d.classes_per_batch,
            d.samples_per_class,
            iterations or self.iterations_per_epoch(),
            rank=self.rank,
            world_size=self.world_size,
            seed=self.cfg.experiment.seed,
            stream=stream,
            repeat_classes=repeat_classes,
        )

    def shuffled_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of plain shuffled global batches of ``data.batch_size`` (this rank's
        slice of each), for methods that need no class balance."""
        index = shuffled_batches(len(self.data.train), self.cfg.data.batch_size, self.iterations_per_epoch(),
                                 epoch=epoch, seed=self.cfg.experiment.seed, rank=self.rank,
                                 world_size=self.world_size)
        return self.train_batches(index, epoch)

    def cluster_sampler(self, clusters: np.ndarray) -> ClusterRoundRobinSampler:
        """Class-balanced batches inside each cluster, the clusters taking turns."""
        d = self.cfg.data
        return ClusterRoundRobinSampler(
            self.data.targets, clusters, d.classes_per_batch, d.samples_per_class, self.iterations_per_epoch(),
            rank=self.rank, world_size=self.world_size, seed=self.cfg.experiment.seed,
        )

    def _dataset(self, images: ImageSet, augment: bool):
        key = (id(images), augment)
        if key not in self._datasets:
            self._datasets[key] = make_dataset(images, self.cfg.data.image_size, augment,
                                               uint8=self.device.type == "cuda")
        return self._datasets[key]

    def _loader(self, ds, batches):
        d = self.cfg.data
        pin = d.pin_memory if d.pin_memory is not None else self.device.type == "cuda"
        return make_loader(ds, batches, d.loader_workers, pin and torch.cuda.is_available(), d.prefetch_factor)

    def train_batches(
        self, index_batches: np.ndarray, epoch: int, labels: np.ndarray | None = None, *, stream: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device for each row of ``index_batches`` into the train set.

        Labels are the class targets, or ``labels`` given per batch slot (same shape as
        ``index_batches``: e.g. cluster labels, possibly noisy). ``stream`` separates the
        augmentation randomness of several loaders in one epoch.
        """
        ds = self._dataset(self.data.train, self.cfg.data.augment)
        if isinstance(ds, ArrayImages):
            ds.reseed(self.seed(epoch, self.rank, 0xA06, stream))
        loader = self._loader(ds, index_batches)
        targets = torch.from_numpy(self.data.targets)
        for i, (x, idx) in enumerate(loader):
            y = targets[idx] if labels is None else torch.from_numpy(np.asarray(labels[i]))
            yield finish_batch(x, self.device), y.to(self.device, non_blocking=True)

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor], images: ImageSet) -> np.ndarray:
        """``fn`` over all of ``images``: each rank embeds a contiguous shard, then all gather."""
        ds = self._dataset(images, augment=False)
        batches = sequential_batches(len(images), self.cfg.eval.batch_size, self.rank, self.world_size)
        loader = self._loader(ds, batches)
        parts = [fn(finish_batch(x, self.device)).float().cpu() for x, _ in loader]
        local = torch.cat(parts) if parts else torch.empty(0)
        if _distributed():
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, local.numpy())
            return np.concatenate([g for g in gathered if g.size])
        return local.numpy()

    def evaluate_embeddings(
        self, fn: Callable[[torch.Tensor], torch.Tensor], split: str, *, class_geometry: bool = False
    ) -> dict[str, float]:
        """Retrieval and clustering metrics of ``fn``'s embeddings on an evaluation split;
        ``class_geometry`` adds the mean intra- and inter-class distances of the query set."""
        from reprlab.platform.evaluation import class_distances, compute_metrics

        es: EvalSplit = self.data.eval_splits[split]
        q = self.embed(fn, es.query)
        g = self.embed(fn, es.gallery) if es.gallery is not None else None
        metrics = None
        if self.is_main:
            metrics = compute_metrics(
                q,
                es.query.labels,
                g,
                None if es.gallery is None else es.gallery.labels,
                kmeans_niter=self.cfg.eval.kmeans_niter,
                seed=self.cfg.experiment.seed,
                use_gpu=None if self.device.type == "cuda" else False,
            )
            if class_geometry:
                metrics.update(class_distances(q, es.query.labels))
        return self.broadcast(metrics)
