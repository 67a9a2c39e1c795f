"""Images stored once as Parquet shards: encoded bytes, labels and metadata, local or in object storage.

Layout of a shard set (``reprlab data pack``)::

    DEST/manifest.json              format, data set, splits, files with row counts and SHA-256
    DEST/train-00000.parquet ...    columns: image (binary: the encoded PNG/JPEG, or raw pixels), label, index
                                    (the image's position in its split), and the metadata columns

Rows are sorted by class inside a split (stable), and row groups are small (``rows_per_group``):
a class-balanced batch takes M images of each of its P classes, and those M images lie in one or
a few neighbouring row groups, so a batch is a handful of row-group reads rather than M x P
random reads. The image column is stored uncompressed (JPEG and PNG are compressed already).

Reading (``open_shards``) loads labels and metadata only and returns image sets whose order is the
split's original order (the ``index`` column), so the validation split and the batches are the
same as when reading the data set's own files. Images are read and decoded later, in DataLoader
worker processes, through :class:`reprlab.platform.data.types.ShardIndex`. Shards in object
storage are fetched once into a local cache (checked against the manifest's SHA-256) and read
from there through memory maps; a local or mounted directory is read in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reprlab.platform.data.types import Benchmark, ImageSet, ShardIndex, decode_image_bytes, decode_pil, encode_raw
from reprlab.platform.core.errors import DataError, StorageError
from reprlab.platform.core.storage import Location, resolve

FORMAT = "reprlab-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "test", "query", "gallery")
RESERVED = ("image", "label", "index")


# --------------------------------------------------------------------------------------------
# writing


ENCODINGS = ("source", "raw")


def _encode(images: ImageSet, rows: np.ndarray, short_side: int | None, quality: int, encoding: str) -> list[bytes]:
    """Stored bytes of ``rows``. ``source``: a file's own bytes (re-encoded as JPEG of
    ``quality`` only when ``short_side`` shrinks it), in-memory pixels as PNG (lossless).
    ``raw``: decoded uint8 pixels (after the optional shrink), nothing left to decode."""
    from PIL import Image

    if images.pixels is not None:
        out = []
        for px in images.pixels[rows]:
            if encoding == "raw":
                out.append(encode_raw(px))
                continue
            buf = io.BytesIO()
            Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    data = images.encoded(rows)
    if short_side is None and encoding == "source":
        return data
    out = []
    for i, b in zip(rows, data):
        im = decode_pil(b, images.where(i))
        w, h = im.size
        shrink = short_side is not None and min(w, h) > short_side
        if shrink:
            scale = short_side / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        if encoding == "raw":
            out.append(encode_raw(np.asarray(im)))
        elif shrink:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            out.append(buf.getvalue())
        else:
            out.append(b)
    return out


def _meta_arrays(images: ImageSet, rows: np.ndarray) -> dict[str, pa.Array]:
    cols = {}
    for key, values in images.meta.items():
        if key in RESERVED:
            raise DataError(f"data: metadata column {key!r} clashes with a shard column ({', '.join(RESERVED)})")
        v = values[rows]
        if v.dtype == object:
            cols[key] = pa.array([str(x) for x in v], pa.string())
        elif v.ndim == 2:  # e.g. CARS196 bounding boxes
            cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        else:
            cols[key] = pa.array(v)
    return cols


def _parquet_bytes(table: pa.Table, rows_per_group: int) -> bytes:
    sink = pa.BufferOutputStream()
    others = [c for c in table.column_names if c != "image"]
    pq.write_table(
        table, sink, row_group_size=rows_per_group,
        compression={"image": "NONE", **{c: "ZSTD" for c in others}},
        use_dictionary=others, write_statistics=others,
    )
    return sink.getvalue().to_pybytes()


def pack(
    bench: Benchmark,
    dest: str | os.PathLike | Location,
    *,
    images_per_shard: int = 2000,
    rows_per_group: int = 32,
    short_side: int | None = None,
    quality: int = 90,
    encoding: str = "source",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``bench`` as a shard set at ``dest`` (a directory or ``s3://`` URI) and return its
    manifest. ``short_side``: images whose shorter side is longer are downscaled to it and stored
    as JPEG of ``quality`` (the protocol resizes to 256 before cropping 224 at test time); by
    default the files' bytes are stored as they are. ``encoding="raw"`` stores decoded pixels
    instead (several times the bytes of JPEG, no decoding when training: worth it with
    ``short_side``). The manifest is written last: a set without one is incomplete."""
    if encoding not in ENCODINGS:
        raise DataError(f"data: encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    if images_per_shard < 1 or rows_per_group < 1:
        raise DataError("data: images per shard and rows per group must be at least 1")
    if short_side is not None and short_side < 8:
        raise DataError(f"data: short side {short_side} is too small (at least 8)")
    loc = resolve(dest, "data pack --out")
    if (loc / MANIFEST).exists() and not force:
        raise DataError(f"data: {loc} already holds a shard set ({MANIFEST}); pass --force to replace it")
    start = time.perf_counter()
    splits = {s: getattr(bench, s) for s in SPLITS if getattr(bench, s) is not None}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "dataset": bench.name,
        "kind": "pixels" if bench.train.pixels is not None else "files",
        "encoding": encoding,
        "short_side": short_side,
        "quality": quality if short_side is not None and encoding == "source" else None,
        "rows_per_group": rows_per_group,
        "splits": {},
    }
    for split, images in splits.items():
        order = np.argsort(images.labels, kind="stable")  # class-contiguous rows
        files = []
        for k, first in enumerate(range(0, len(order), images_per_shard)):
            rows = order[first : first + images_per_shard]
            table = pa.table({
                "image": pa.array(_encode(images, rows, short_side, quality, encoding), pa.binary()),
                "label": pa.array(images.labels[rows].astype(np.int64)),
                "index": pa.array(rows.astype(np.int64)),
                **_meta_arrays(images, rows),
            })
            data = _parquet_bytes(table, rows_per_group)
            name = f"{split}-{k:05d}.parquet"
            (loc / name).write_bytes(data)
            files.append({"name": name, "rows": len(rows), "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})
            if progress:
                progress(f"[reprlab] {split}: wrote {name} ({len(rows)} images, {len(data) / 2**20:.1f} MiB)")
        manifest["splits"][split] = {
            "images": len(images), "classes": int(len(np.unique(images.labels))), "files": files,
        }
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    (loc / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(loc: Location) -> dict[str, Any]:
    try:
        manifest = json.loads((loc / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(f"data: data.shards: no shard set at {loc} ({MANIFEST} is missing; "
                        f"write one with `reprlab data pack`)") from None
    except (StorageError, ValueError) as exc:
        raise DataError(f"data: data.shards: cannot read {loc / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"data: data.shards: {loc / MANIFEST} is not a {FORMAT} manifest (format: {found!r})")
    return manifest


def default_cache() -> Path:
    return Path(os.environ.get("REPRLAB_SHARD_CACHE", Path.home() / ".cache" / "reprlab" / "shards"))


def fetch(loc: Location, manifest: dict[str, Any], cache: str | os.PathLike | None = None) -> Path:
    """The shard set's files in a local directory: ``loc`` itself when local, else a cache
    directory (one per URI) where every file is downloaded once and checked against the
    manifest's SHA-256. Several processes may fetch at once: each writes its own temporary file
    and renames it into place."""
    if loc.is_local:
        return loc.local_path
    base = Path(cache).expanduser() if cache else default_cache()
    where = base / hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    where.mkdir(parents=True, exist_ok=True)
    for entry in (f for split in manifest["splits"].values() for f in split["files"]):
        target, stamp = where / entry["name"], where / (entry["name"] + ".sha256")
        if target.is_file() and stamp.is_file() and stamp.read_text() == entry["sha256"] \
                and target.stat().st_size == entry["bytes"]:
            continue
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{entry['name']}.")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, loc.fs.open_input_stream((loc / entry["name"]).path) as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != entry["sha256"]:
                raise DataError(f"data: shard {loc / entry['name']} has SHA-256 {h.hexdigest()[:12]}..., "
                                f"the manifest says {entry['sha256'][:12]}... (changed or corrupt)")
            os.replace(tmp, target)
            stamp.write_text(entry["sha256"])
        except OSError as exc:
            raise DataError(f"data: cannot fetch shard {loc / entry['name']}: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return where


def _read_columns(path: Path, columns: list[str], rows: int) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns, memory_map=True)
    except FileNotFoundError:
        raise DataError(f"data: shard file not found: {path}") from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"data: cannot read shard {path}: {str(exc).splitlines()[0][:200]}") from None
    if table.num_rows != rows:
        raise DataError(f"data: shard {path} holds {table.num_rows} rows, the manifest says {rows}")
    return table


def _meta_numpy(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_fixed_size_list(col.type):
        flat = col.combine_chunks()
        return flat.values.to_numpy(zero_copy_only=False).reshape(len(flat), col.type.list_size)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy()


def _open_split(where: Path, name: str, split: str, info: dict[str, Any]) -> ImageSet:
    files = [where / f["name"] for f in info["files"]]
    schema = pq.read_schema(files[0]) if files else None
    meta_cols = [c for c in (schema.names if schema else []) if c not in RESERVED]
    tables = [_read_columns(p, ["label", "index", *meta_cols], f["rows"]) for p, f in zip(files, info["files"])]
    table = pa.concat_tables(tables) if tables else None
    n = info["images"]
    if table is None or table.num_rows != n:
        raise DataError(f"data: {name} shards of {split} hold {0 if table is None else table.num_rows} images, "
                        f"the manifest says {n}")
    index = table.column("index").to_numpy()
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(n)):
        raise DataError(f"data: {name} shards of {split}: the index column is not a permutation of 0..{n - 1}")
    file_of = np.repeat(np.arange(len(files), dtype=np.int32), [t.num_rows for t in tables])
    row_of = np.concatenate([np.arange(t.num_rows, dtype=np.int64) for t in tables])
    return ImageSet(
        labels=table.column("label").to_numpy()[order].astype(np.int64),
        shards=ShardIndex(tuple(str(p) for p in files), file_of[order], row_of[order]),
        meta={c: _meta_numpy(table.column(c))[order] for c in meta_cols},
    )


def _decoded(images: ImageSet) -> ImageSet:
    """A pixel-born set (glyphs, colored digits) back in memory, as it was packed."""
    data = images.encoded(np.arange(len(images)))
    pixels = np.stack([decode_image_bytes(b, f"row {i}") for i, b in enumerate(data)])
    return ImageSet(labels=images.labels, pixels=pixels, meta=images.meta)


def open_shards(uri: str | os.PathLike | Location, cache: str | os.PathLike | None = None) -> Benchmark:
    """The shard set at ``uri`` as a Benchmark whose image sets read from the shards (pixel-born
    sets are decoded back into memory: they are small and train from memory)."""
    loc = resolve(uri, "data.shards")
    manifest = read_manifest(loc)
    where = fetch(loc, manifest, cache)
    name = manifest["dataset"]
    sets = {s: _open_split(where, name, s, info) for s, info in manifest["splits"].items() if s in SPLITS}
    if manifest.get("kind") == "pixels":
        sets = {s: _decoded(v) for s, v in sets.items()}
    try:
        return Benchmark(name=name, **sets)
    except (TypeError, ValueError):
        raise DataError(f"data: {loc / MANIFEST} lists the splits {', '.join(sets)}: expected train and test, "
                        f"or train, query and gallery") from None


# --------------------------------------------------------------------------------------------
# random access to encoded images (in DataLoader workers)


@dataclass
class _OpenShard:
    file: pq.ParquetFile
    starts: np.ndarray  # first row of each row group, plus the row count


_OPEN: dict[tuple, _OpenShard] = {}


def _shard(path: str) -> _OpenShard:
    """The open shard file at ``path``: per process (a forked DataLoader worker opens its own
    handles) and per file version (a set packed again, or a shard fetched again, at the same
    path is a new file: its old map and row-group offsets are dropped)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"data: cannot read shard {path}: {exc.strerror or exc}") from None
    key = (os.getpid(), path, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _OPEN:
        for old in [k for k in _OPEN if k[1] == path]:
            del _OPEN[old]
        try:
            pf = pq.ParquetFile(path, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"data: cannot read shard {path}: {str(exc).splitlines()[0][:200]}") from None
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        _OPEN[key] = _OpenShard(pf, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    return _OPEN[key]


def read_encoded(index: ShardIndex, which: np.ndarray) -> list[bytes]:
    """Encoded bytes of images ``which`` of ``index``: one read per (shard, row group) touched."""
    files, rows = index.file[which], index.row[which]
    out: list[bytes | None] = [None] * len(which)
    for f in np.unique(files):
        path = index.files[f]
        shard = _shard(path)
        sel = np.flatnonzero(files == f)
        group = np.searchsorted(shard.starts, rows[sel], side="right") - 1
        for g in np.unique(group):
            take = sel[group == g]
            try:
                col = shard.file.read_row_group(int(g), columns=["image"]).column(0)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"data: cannot read row group {g} of shard {path}: "
                                f"{str(exc).splitlines()[0][:200]}") from None
            local = pa.array(rows[take] - shard.starts[g])
            for j, value in zip(take, col.take(local).to_pylist()):
                out[j] = value
    return out  # type: ignore[return-value]
