"""From an ImageSet to batches of normalized tensors.

In-memory pixel sets (the embedded glyphs) are fetched and augmented a whole batch at a time
(``__getitems__``): one gather, one interpolate, one ``grid_sample``. Encoded sets (the real
benchmarks, as files or Parquet shards) are read a batch at a time and decoded and transformed
with the standard protocol transforms, in DataLoader worker processes (``data.loader_workers``),
which prefetch ``data.prefetch_factor`` batches each into (optionally pinned) memory.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from reprlab.platform.data.types import RAW_MAGIC, ImageSet, decode_image_bytes, decode_pil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees=8.0, scale=(0.9, 1.1), shift=0.08,
                  slots: np.ndarray | None = None):
    """Per-image random rotation/scale/translation of a batch (B, C, H, W) in one grid_sample.
    ``slots``: each image's position in the global batch it belongs to; image i takes row
    ``slots[i]`` of the draws for the whole global batch, so a worker holding a share of the batch
    augments its images exactly as one process holding all of it (default: 0..B-1)."""
    b = x.shape[0]
    if slots is None:
        u = torch.rand(b, 4, generator=gen)
    else:
        u = torch.rand(int(slots.max()) + 1, 4, generator=gen)[torch.as_tensor(slots)]
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
        self.gen, self.seed = torch.Generator(), seed
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def reseed(self, seed: int) -> None:
        """The seed the augmentation of every batch derives from (with the batch's number)."""
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitems__(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        number, index, slots = unpack_items(items)
        idx = torch.as_tensor(index)
        x = to_unit(self.pixels[idx], self.size)
        if self.augment:
            x = random_affine(x, self.gen.manual_seed(batch_seed(self.seed, number)), slots=slots)
        return (x - self.mean) / self.std, idx

    def __getitem__(self, i: int):
        x, idx = self.__getitems__([i])
        return x[0], idx[0]


def tensor_transform(size: int, train: bool, *, normalize: bool = True):
    """The benchmarks' standard transforms (protocol.md), scaled to ``size``, on decoded uint8
    3 x H x W tensors (torch's vectorized antialiased uint8 resize: about 2.7x faster than PIL's
    crop + resize + conversion here), and with ``normalize`` the float conversion and
    normalization."""
    from torchvision.transforms import v2

    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if normalize else []
    if train:
        return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *tail])
    return v2.Compose([v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size), *tail])


# torchvision's decoders (libjpeg-turbo, libpng straight into a tensor) are deprecated since
# torchvision 0.29 in favour of TorchCodec, and still in the 0.29 that pyproject.toml pins; they
# decode CUB-sized JPEGs 1.2x faster than PIL and skip PIL's copy. Without them, PIL decodes.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - a torchvision without them
    decode_image = None


def decode_tensor(data: bytes, where: str) -> torch.Tensor:
    """Encoded bytes (JPEG, PNG, raw cells, anything PIL reads) -> uint8 3 x H x W RGB; a
    DataError naming ``where`` if unreadable."""
    if data[:4] == RAW_MAGIC:
        px = decode_image_bytes(data, where)
        return torch.from_numpy(np.repeat(px, 3, axis=2) if px.shape[-1] == 1 else px.copy()).permute(2, 0, 1)
    if decode_image is not None:
        try:
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # a format or variant torchvision does not decode (or corrupt): PIL decides
            pass
    return torch.from_numpy(np.array(decode_pil(data, where))).permute(2, 0, 1)


def finish_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's batch on ``device`` as network input: uint8 batches (decoded images) cross to
    the device as bytes (a quarter of float32's traffic) and are scaled and normalized there in
    one operation; float batches (in-memory sets) are normalized already."""
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x
    scale = 1.0 / (255.0 * torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    shift = -torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) / torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return x.float().mul_(scale).add_(shift)  # one new tensor: (x / 255 - mean) / std


class EncodedImages(Dataset):
    """Encoded images (files, or cells of Parquet shards) decoded and transformed a batch at a
    time (``__getitems__``): in DataLoader worker processes when ``data.loader_workers`` > 0, one
    batch per inter-process message. Shards are read one row group per touched group. With
    ``normalize=False`` (training on a GPU) batches are uint8, a quarter of the bytes to pass
    between processes and to the device, and :func:`finish_batch` normalizes them there."""

    def __init__(self, images: ImageSet, size: int, augment: bool = False, normalize: bool = True,
                 seed: int = 0) -> None:
        self.images, self.augment, self.seed = images, augment, seed
        self.transform = tensor_transform(size, augment, normalize=normalize)

    def reseed(self, seed: int) -> None:
        """The seed the augmentation of every batch derives from (with the batch's number)."""
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        number, idx, slots = unpack_items(items)
        data = self.images.encoded(idx)
        # torchvision's random transforms draw from torch's global generator: fork it and seed it
        # per image from (seed, batch number, slot in the global batch), so an image's crop and
        # flip are the same in any DataLoader worker, in any process, on any number of training
        # workers, and after a resume
        with torch.random.fork_rng(devices=[]):
            out = []
            for i, b, slot in zip(idx, data, slots.tolist()):
                if self.augment:
                    torch.manual_seed(batch_seed(self.seed, number, slot))
                out.append(self.transform(decode_tensor(b, self.images.where(i))))
            # default_collate stacks straight into shared memory inside a worker process (no copy
            # when the batch is handed to the main process)
            x = default_collate(out)
        return x, torch.from_numpy(idx)

    def __getitem__(self, i: int):
        x, idx = self.__getitems__([i])
        return x[0], idx[0]


def _passthrough(batch):
    return batch


def batch_seed(seed: int, number: int, *slot: int) -> int:
    """The augmentation seed of batch ``number`` of a loader seeded with ``seed`` (and of one
    ``slot`` of it)."""
    return int(np.random.SeedSequence([seed, number, 0xBA7, *slot]).generate_state(1)[0])


def unpack_items(items) -> tuple[int, np.ndarray, np.ndarray]:
    """A loader's batch as the datasets receive it, ``[(number, index, slot), ...]`` (see
    :func:`make_loader`), or plain indices (number 0, slots 0..B-1) -> (batch number, int64
    indices, int64 slots in the global batch)."""
    items = list(items)
    if items and isinstance(items[0], tuple):
        return (int(items[0][0]), np.asarray([it[1] for it in items], dtype=np.int64),
                np.asarray([it[2] for it in items], dtype=np.int64))
    return 0, np.asarray(items, dtype=np.int64), np.arange(len(items), dtype=np.int64)


def make_dataset(images: ImageSet, size: int, augment: bool, seed: int = 0, *, uint8: bool = False) -> Dataset:
    """``uint8``: encoded images leave the loader as uint8, normalized on the device (GPU)."""
    if images.pixels is not None:
        return ArrayImages(images, size, augment, seed)
    return EncodedImages(images, size, augment, normalize=not uint8)


def make_loader(dataset: Dataset, batches, workers: int = 0, pin_memory: bool = False,
                prefetch_factor: int = 2, slots=None) -> DataLoader:
    """A DataLoader over precomputed index batches (a sequence of index arrays). Datasets fetch
    whole batches (``__getitems__``), so a batch crosses from a worker process in one piece; each
    index travels with its batch's number and its slot in the global batch (``slots``: one array
    per batch, or one for all; default 0..B-1), from which the dataset seeds its augmentation."""
    if slots is None or np.ndim(slots) == 1:
        slots = [np.arange(len(b)) if slots is None else slots for b in batches]
    return DataLoader(
        dataset,
        batch_sampler=[[(k, i, int(t)) for i, t in zip(np.asarray(b).tolist(), np.asarray(sl).tolist(), strict=True)]
                       for k, (b, sl) in enumerate(zip(batches, slots))],
        num_workers=workers,
        collate_fn=_passthrough,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=False,
    )


def sequential_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Contiguous shard ``rank`` of range(n), cut into batches (evaluation)."""
    shard = np.array_split(np.arange(n), world_size)[rank]
    return [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
