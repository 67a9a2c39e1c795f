"""The in-memory description of a data set: images, labels, metadata, and its protocol's splits."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError


@dataclass(frozen=True)
class ShardIndex:
    """Where each image of a set lies in Parquet shards: ``files[file[i]]``, row ``row[i]``
    (see :mod:`reprlab.platform.data.shards`). Indexing with an array gives the subset."""

    files: tuple[str, ...]
    file: np.ndarray  # (N,) int32 index into files
    row: np.ndarray  # (N,) int64 row in that file

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index) -> ShardIndex:
        return ShardIndex(self.files, self.file[index], self.row[index])

    def read(self, index) -> list[bytes]:
        """The encoded bytes of images ``index``, in order (grouped reads per row group)."""
        from reprlab.platform.data.shards import read_encoded

        return read_encoded(self, np.atleast_1d(np.asarray(index, dtype=np.int64)))


DENSE_KINDS = ("mask", "flow", "keypoints")


@dataclass(frozen=True)
class Dense:
    """A dense target of every sample, in the pixel frame of its input image: ``mask`` (N x H x W,
    integer or bool), ``flow`` (N x 2 x H x W displacements in pixels, from the input image to its
    target image) or ``keypoints`` (N x K x 2 pixel coordinates x, y). A geometric augmentation
    moves them with the image (:mod:`reprlab.platform.data.augment`)."""

    kind: str
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in DENSE_KINDS:
            raise ValueError(f"dense target kind {self.kind!r} (known: {', '.join(DENSE_KINDS)})")

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index) -> Dense:
        return Dense(self.kind, self.values[index])


@dataclass(frozen=True)
class ImageSet:
    """N samples: images with optional integer class labels, per-image metadata columns, and for
    image-to-image and dense sets a target image (``target``: input/target pairs, or the second
    image of a pair) and dense targets (``dense``).

    Images are files on disk (``paths``), decoded pixels held in memory (``pixels``, uint8
    N x H x W x C) or encoded images in Parquet shards (``shards``): exactly one of the three.
    ``labels`` are the data set's own class ids (not remapped), or None for unlabeled data.
    """

    labels: np.ndarray | None = None
    paths: np.ndarray | None = None
    pixels: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    shards: ShardIndex | None = None
    target: ImageSet | None = None
    dense: dict[str, Dense] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.paths, self.pixels, self.shards)) != 1:
            raise ValueError("ImageSet needs exactly one of paths, pixels or shards")
        n = len(self.source)
        columns = [*self.meta.values(), *self.dense.values(), *([] if self.labels is None else [self.labels]),
                   *([] if self.target is None else [self.target])]
        if any(len(v) != n for v in columns):
            raise ValueError("ImageSet columns differ in length")

    @property
    def source(self) -> np.ndarray:
        return next(x for x in (self.paths, self.pixels, self.shards) if x is not None)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.source)

    def classes(self) -> np.ndarray:
        if self.labels is None:
            raise DataError("data: this image set has no labels")
        return np.unique(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        index = np.asarray(index)
        return ImageSet(
            labels=None if self.labels is None else self.labels[index],
            paths=None if self.paths is None else self.paths[index],
            pixels=None if self.pixels is None else self.pixels[index],
            meta={k: v[index] for k, v in self.meta.items()},
            shards=None if self.shards is None else self.shards[index],
            target=None if self.target is None else self.target.subset(index),
            dense={k: v[index] for k, v in self.dense.items()},
        )

    def encoded(self, index) -> list[bytes]:
        """The encoded (PNG/JPEG) bytes of images ``index`` as stored: a file's bytes, a shard's
        cell. An unreadable file is one DataError line naming it."""
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        if self.shards is not None:
            return self.shards.read(index)
        if self.paths is None:
            raise ValueError("an in-memory ImageSet holds decoded pixels, not encoded images")
        out = []
        for i in index:
            try:
                with open(self.paths[i], "rb") as f:
                    out.append(f.read())
            except OSError as exc:
                raise DataError(f"data: cannot read image {self.paths[i]}: {exc.strerror or exc}") from None
        return out

    def where(self, i: int) -> str:
        """Where image ``i`` comes from, for messages: its file, or its shard and row."""
        if self.shards is not None:
            return f"{self.shards.files[self.shards.file[i]]} row {self.shards.row[i]}"
        return str(self.paths[i]) if self.paths is not None else f"image {i}"

    def load(self, i: int):
        """Image ``i`` as an RGB PIL image; an unreadable image raises one clear DataError."""
        from PIL import Image

        if self.pixels is not None:
            px = self.pixels[i]
            return Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).convert("RGB")
        return decode_pil(self.encoded(i)[0], self.where(i))


@dataclass(frozen=True)
class Benchmark:
    """A data set in its protocol: a training split and either a test split (query = gallery,
    self excluded) or a query/gallery pair (In-shop, VehicleID); ``val``: the set's own validation
    split, used instead of a hold-out (e.g. scene-disjoint validation of image pairs)."""

    name: str
    train: ImageSet
    test: ImageSet | None = None
    query: ImageSet | None = None
    gallery: ImageSet | None = None
    val: ImageSet | None = None

    def __post_init__(self) -> None:
        if (self.test is None) == (self.query is None or self.gallery is None):
            raise ValueError("Benchmark needs a test split or a query/gallery pair")

    @property
    def has_query_gallery(self) -> bool:
        return self.query is not None


RAW_MAGIC = b"RPXL"  # raw pixels: magic, then height, width, channels (uint32 little-endian), then H*W*C bytes


def encode_raw(pixels: np.ndarray) -> bytes:
    """uint8 H x W x C pixels as a raw cell (no compression: nothing to decode when read)."""
    h, w, c = pixels.shape
    return RAW_MAGIC + np.array([h, w, c], "<u4").tobytes() + np.ascontiguousarray(pixels, np.uint8).tobytes()


def _raw_pixels(data: bytes, where: str) -> np.ndarray:
    h, w, c = (int(v) for v in np.frombuffer(data, "<u4", 3, len(RAW_MAGIC)))
    body = np.frombuffer(data, np.uint8, offset=len(RAW_MAGIC) + 12)
    if body.size != h * w * c:
        raise DataError(f"data: cannot read image {where}: raw pixels of {h}x{w}x{c} hold {body.size} bytes")
    return body.reshape(h, w, c)


def decode_pil(data: bytes, where: str):
    """Encoded image bytes (PNG, JPEG, or raw pixels) -> an RGB PIL image; a DataError naming
    ``where`` if unreadable."""
    from PIL import Image

    if data[:4] == RAW_MAGIC:
        px = _raw_pixels(data, where)
        return Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).convert("RGB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"data: cannot read image {where}: {exc}") from None


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes (PNG/JPEG/raw) to uint8 H x W x C; DataError naming ``where``."""
    from PIL import Image

    if data[:4] == RAW_MAGIC:
        return _raw_pixels(data, where)

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
