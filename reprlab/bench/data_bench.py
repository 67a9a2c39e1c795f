"""``reprlab bench data``: loading images/s from Parquet shards against individual image files.

No real data set can be downloaded on a build machine, so by default the bench fabricates one in
CUB-200-2011's archive layout (``make_cub_like``: JPEG files of CUB's typical size and file size,
read by the real CUB reader); ``--root`` points it at a real data set instead. Every side loads the
same class-balanced training batches (the platform's sampler, P x M) through a DataLoader with the
same number of worker processes, the same decoding (PIL) and the same train transforms
(RandomResizedCrop + flip at ``--image-size``); sides differ only in where the bytes come from and
how a batch is assembled:

- ``files, per image`` (the reference): a torchvision-style dataset that opens each file, decodes
  and normalizes one image per ``__getitem__``, and the default collate: how research code and
  pytorch-metric-learning's examples load images;
- ``files, batched``: the platform's loader over the same files (one batch per worker message,
  uint8 batches normalized after the transfer);
- ``shards``: the platform's loader over the Parquet shards holding the same bytes;
- ``shards, short side N``: over shards whose images were stored downscaled to the protocol's
  resize (``reprlab data pack --short-side N``, JPEG);
- ``shards, short side N, raw``: the same, stored as decoded pixels (``--encoding raw``).

Timed: from the first batch received to the last (DataLoader workers already started), after a
warm-up pass that brings every file into the page cache (so disk speed is out of it: this
compares the formats on a local disk at their best; on network storage per-file access costs more).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reprlab.platform.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, EncodedImages, finish_batch, make_loader
from reprlab.platform.data.sets.cub import read_cub
from reprlab.platform.dml.samplers import ClassBalancedSampler
from reprlab.platform.data.shards import open_shards, pack
from reprlab.platform.data.types import ImageSet


def make_cub_like(root: str | Path, classes: int = 200, per_class: int = 30, size: tuple[int, int] = (500, 375),
                  quality: int = 90, seed: int = 0) -> Path:
    """A data set in CUB-200-2011's layout (``root/CUB_200_2011``) of ``classes`` x ``per_class``
    JPEG photos-like images around ``size`` (each side varied by up to 20%): a smooth random
    colour field per image (a class-specific palette), shapes and sensor-like noise, so that
    JPEG sizes and decoding times are those of natural images, not of flat colour. Existing files
    are kept (the set is deterministic from the arguments)."""
    from PIL import Image, ImageDraw, ImageFilter

    base = Path(root) / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    rels, labels = [], []
    if not 2 <= classes <= 200:
        raise ValueError("classes: 2 to 200 (CUB's class ids; the first half trains, the second half tests)")
    half = -(-classes // 2)  # ids 1..half train, 101.. test, as CUB's split by class id does
    ids = [c + 1 for c in range(half)] + [101 + c for c in range(classes - half)]
    names = [f"{i:03d}.Class_{i}" for i in ids]
    for c, name in zip(ids, names):
        palette = rng.uniform(0, 255, (4, 3))
        for k in range(per_class):
            rel = f"{name}/Class_{c}_{k:04d}.jpg"
            rels.append(rel)
            labels.append(c)
            path = base / "images" / rel
            w, h = (int(s * rng.uniform(0.8, 1.2)) for s in size)
            if path.is_file():
                rng.random(8)  # keep the stream aligned with a fresh build
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            coarse = palette[rng.integers(0, 4, (6, 8))] + rng.normal(0, 20, (6, 8, 3))
            im = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
            draw = ImageDraw.Draw(im)
            for _ in range(6):
                x0, y0 = rng.integers(0, w), rng.integers(0, h)
                draw.ellipse([x0, y0, x0 + rng.integers(2, max(3, w // 3)), y0 + rng.integers(2, max(3, h // 3))],
                             fill=tuple(int(v) for v in palette[rng.integers(0, 4)]))
            im = im.filter(ImageFilter.GaussianBlur(1.5))
            noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)
    lines = {
        "images.txt": [f"{i + 1} {r}" for i, r in enumerate(rels)],
        "image_class_labels.txt": [f"{i + 1} {c}" for i, c in enumerate(labels)],
        "classes.txt": [f"{c} {n}" for c, n in zip(ids, names)],
        "train_test_split.txt": [f"{i + 1} {i % 2}" for i in range(len(rels))],
    }
    for name, rows in lines.items():
        (base / name).write_text("".join(f"{r}\n" for r in rows))
    return base


def protocol_transform(size: int):
    """The reference's train transforms, as research code writes them: PIL crop + resize, flip,
    ``ToTensor`` and ``Normalize`` per image."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class PerImageFiles(Dataset):
    """The reference: one file opened, decoded, transformed and normalized per ``__getitem__``."""

    def __init__(self, images: ImageSet, targets: np.ndarray, size: int) -> None:
        self.paths, self.targets = images.paths, targets
        self.transform = protocol_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), int(self.targets[i])


def _time_loader(loader, device: torch.device) -> tuple[float, int]:
    """Seconds from the first batch to the last one on ``device`` (normalized network input),
    and the images after the first batch."""
    it = iter(loader)
    x, _ = next(it)
    finish_batch(x, device)
    start, images = time.perf_counter(), 0
    for x, _ in it:
        x = finish_batch(x, device)
        images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, images


def bench_data(root: str | Path | None = None, work: str | Path = "runs/bench-data", *, classes: int = 100,
               per_class: int = 30, image_size: int = 224, classes_per_batch: int = 32, samples_per_class: int = 4,
               batches: int = 24, workers: int = 2, rounds: int = 3, short_side: int = 256,
               seed: int = 0) -> dict[str, Any]:
    """Images/s of each side (see the module docstring), ``rounds`` times in alternation."""
    torch.set_num_threads(1)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    fabricated = root is None
    root = Path(root) if root is not None else make_cub_like(work / "cub_like", classes=classes, per_class=per_class,
                                                             seed=seed).parent
    bench = read_cub(root)
    packs = {}
    for label, side, encoding in (("shards", None, "source"), (f"shards, short side {short_side}", short_side, "source"),
                                  (f"shards, short side {short_side}, raw", short_side, "raw")):
        dest = work / ("shards" if side is None else f"shards-{side}-{encoding}")
        t0 = time.perf_counter()
        manifest = pack(bench, dest, short_side=side, encoding=encoding, force=True)
        packs[label] = {"dir": str(dest), "pack_s": time.perf_counter() - t0,
                        "bytes": sum(f["bytes"] for s in manifest["splits"].values() for f in s["files"])}
    train_files = bench.train
    class_ids, targets = np.unique(train_files.labels, return_inverse=True)
    sampler = ClassBalancedSampler(targets, classes_per_batch, samples_per_class, batches, seed=seed)
    index = sampler.batches(0)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pin = device.type == "cuda"

    def loader_for(label: str, n: int) -> DataLoader:
        if label == "files, per image":
            ds = PerImageFiles(train_files, targets, image_size)
            return DataLoader(ds, batch_sampler=[b.tolist() for b in index[:n]], num_workers=workers,
                              prefetch_factor=2 if workers else None, pin_memory=pin)
        images = train_files if label == "files, batched" else open_shards(packs[label]["dir"]).train
        # as the platform loads: uint8 batches normalized on a GPU, float from the workers on a CPU
        ds = EncodedImages(images, image_size, augment=True, normalize=device.type != "cuda")
        return make_loader(ds, index[:n], workers, pin_memory=pin)

    labels = ["files, per image", "files, batched", *packs]
    file_bytes = int(sum(os.path.getsize(p) for p in train_files.paths))
    for label in labels:  # warm-up: page cache, imports
        _time_loader(loader_for(label, min(batches, 3)), device)
    results: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label in labels:
            seconds, images = _time_loader(loader_for(label, batches), device)
            results[label].append(images / seconds)
    ref = float(np.median(results[labels[0]]))
    return {
        "data": "fabricated CUB-like (make_cub_like)" if fabricated else str(root),
        "train_images": len(train_files), "train_file_bytes": file_bytes,
        "image_size": image_size, "batch": classes_per_batch * samples_per_class, "batches": batches,
        "workers": workers, "rounds": rounds, "cpus": os.cpu_count(), "device": str(device),
        "sides": {
            label: {"images_per_s": results[label], "median": float(np.median(results[label])),
                    "ratio": float(np.median(results[label])) / ref, **packs.get(label, {})}
            for label in labels
        },
    }


def format_data_bench(result: dict[str, Any]) -> str:
    lines = [
        f"data: {result['data']}, {result['train_images']} training images "
        f"({result['train_file_bytes'] / 2**20:.0f} MiB of files), {result['image_size']} px, "
        f"batch {result['batch']}, {result['batches']} batches x {result['rounds']} rounds, "
        f"{result['workers']} DataLoader workers, batches to {result['device']}",
        f"{'side':<32} {'images/s per round':<24} {'median':>8} {'ratio':>7}",
    ]
    for label, side in result["sides"].items():
        rounds = " / ".join(f"{v:.0f}" for v in side["images_per_s"])
        lines.append(f"{label:<32} {rounds:<24} {side['median']:>8.0f} {side['ratio']:>6.2f}x")
    return "\n".join(lines)
