"""From an ImageSet to batches of normalized tensors.

In-memory pixel sets (the embedded glyphs) are fetched and augmented a whole batch at a time
(``__getitems__``): one gather, one interpolate, one ``grid_sample``. File-based sets (the real
benchmarks) decode and transform per image in DataLoader worker processes with the standard
protocol transforms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from reprlab.platform.data.types import ImageSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees=8.0, scale=(0.9, 1.1), shift=0.08):
    """Per-image random rotation/scale/translation of a batch (B, C, H, W) in one grid_sample."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=gen)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    t = (u[:, 2:] * 2 - 1) * shift * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_unit(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x H x W x C pixels -> float N x 3 x size x size in [0, 1]."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def normalize_pixels(pixels: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x H x W x C pixels -> the network input every loader produces (resized, normalized)."""
    x = to_unit(torch.as_tensor(np.ascontiguousarray(pixels)), size)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Network input (or a decoder's output in that space) -> RGB in [0, 1] for figures."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


class ArrayImages(Dataset):
    """Batched access to in-memory uint8 pixels, resized to ``size``, optionally augmented."""

    def __init__(self, images: ImageSet, size: int, augment: bool = False, seed: int = 0) -> None:
        self.pixels = torch.from_numpy(np.ascontiguousarray(images.pixels))  # N, H, W, C uint8
        self.size, self.augment = size, augment
        self.gen = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitems__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        x = to_unit(self.pixels[idx], self.size)
        if self.augment:
            x = random_affine(x, self.gen)
        return (x - self.mean) / self.std, idx

    def __getitem__(self, i: int):
        x, idx = self.__getitems__([i])
        return x[0], idx[0]


def protocol_transform(size: int, train: bool):
    """The benchmarks' standard transforms (protocol.md), scaled to ``size``."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), *norm])


class FileImages(Dataset):
    """Per-image decoding of files listed in an ImageSet (run in DataLoader workers)."""

    def __init__(self, images: ImageSet, size: int, augment: bool = False) -> None:
        self.images = images
        self.transform = protocol_transform(size, augment)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images.load(int(i))), int(i)


def _passthrough(batch):
    return batch


def make_dataset(images: ImageSet, size: int, augment: bool, seed: int = 0) -> Dataset:
    if images.pixels is not None:
        return ArrayImages(images, size, augment, seed)
    return FileImages(images, size, augment)


def make_loader(dataset: Dataset, batches, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over precomputed index batches (a sequence of index arrays)."""
    batched = isinstance(dataset, ArrayImages)
    return DataLoader(
        dataset,
        batch_sampler=[np.asarray(b).tolist() for b in batches],
        num_workers=workers,
        collate_fn=_passthrough if batched else None,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def sequential_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Contiguous shard ``rank`` of range(n), cut into batches (evaluation)."""
    shard = np.array_split(np.arange(n), world_size)[rank]
    return [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
