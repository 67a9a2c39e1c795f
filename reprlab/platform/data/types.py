"""The in-memory description of a data set: images, labels, metadata, and its protocol's splits."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprlab.platform.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """N images with integer class labels and per-image metadata columns.

    Images are either files on disk (``paths``) or decoded pixels held in memory (``pixels``,
    uint8 N x H x W x C), never both. ``labels`` are the data set's own class ids (not remapped).
    """

    labels: np.ndarray
    paths: np.ndarray | None = None
    pixels: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.paths is None) == (self.pixels is None):
            raise ValueError("ImageSet needs exactly one of paths or pixels")
        n = len(self.labels)
        if len(self.source) != n or any(len(v) != n for v in self.meta.values()):
            raise ValueError("ImageSet columns differ in length")

    @property
    def source(self) -> np.ndarray:
        return self.paths if self.paths is not None else self.pixels

    def __len__(self) -> int:
        return len(self.labels)

    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        index = np.asarray(index)
        return ImageSet(
            labels=self.labels[index],
            paths=None if self.paths is None else self.paths[index],
            pixels=None if self.pixels is None else self.pixels[index],
            meta={k: v[index] for k, v in self.meta.items()},
        )

    def load(self, i: int):
        """Image ``i`` as an RGB PIL image; an unreadable file raises one clear DataError."""
        from PIL import Image

        if self.pixels is not None:
            px = self.pixels[i]
            return Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).convert("RGB")
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:  # PIL raises OSError subclasses for bad files
            raise DataError(f"data: cannot read image {path}: {exc}") from None


@dataclass(frozen=True)
class Benchmark:
    """A data set in its protocol: a training split and either a test split (query = gallery,
    self excluded) or a query/gallery pair (In-shop, VehicleID)."""

    name: str
    train: ImageSet
    test: ImageSet | None = None
    query: ImageSet | None = None
    gallery: ImageSet | None = None

    def __post_init__(self) -> None:
        if (self.test is None) == (self.query is None or self.gallery is None):
            raise ValueError("Benchmark needs a test split or a query/gallery pair")

    @property
    def has_query_gallery(self) -> bool:
        return self.query is not None


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes (PNG/JPEG) to uint8 H x W x C; DataError naming ``where``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"data: cannot read image {where}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def require_dir(root: Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data: {what} directory not found: {root}")
    return root
