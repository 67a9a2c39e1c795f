"""Building, caching and reading the glyphs data set.

The result is cached as one Parquet file ``glyphs-<hash>.parquet`` (PNG bytes plus label and
metadata columns; build parameters, faces and classes in the schema metadata), where the hash
covers the build parameters, the font files' contents, the class table, Pillow/FreeType versions
and :data:`FORMAT_VERSION`. Faces are rendered in parallel worker processes, one job per face.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.sets.glyphs.charset import glyph_classes
from reprlab.platform.data.sets.glyphs.config import GlyphsConfig
from reprlab.platform.data.sets.glyphs.fonts import Face, discover_faces
from reprlab.platform.data.sets.glyphs.render import (
    BASELINE_FRACTION,
    EM_FRACTION,
    MIN_INK_AFTER_THINNING,
    STROKE_LEVELS,
    STROKE_PROBS,
    SUPERSAMPLE_SIDE,
    _FaceJob,
    _render_face,
)
from reprlab.platform.data.types import Benchmark, ImageSet, decode_image_bytes

FORMAT_VERSION = 1
METADATA_KEY = b"reprlab.glyphs"
META_COLUMNS = ("char", "script", "font_family", "font_weight", "font_slant", "font_file")
REBUILD_HINT = "rebuild it with `reprlab data build glyphs --force`"

# ----------------------------------------------------------------------------------------------
# Rendering jobs (one per face) and the worker pool
# ----------------------------------------------------------------------------------------------


def _face_jobs(cfg: GlyphsConfig, faces: Sequence[Face]) -> list[_FaceJob]:
    jobs = []
    for face in faces:
        covered = set(face.chars)
        classes = tuple(
            (c.key, tuple(m for m in c.members if m in covered))
            for c in glyph_classes()
            if any(m in covered for m in c.members)
        )
        jobs.append(_FaceJob(face, classes, cfg.seed, cfg.size, cfg.renders_per_face))
    return jobs


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> Executor:
    """Forked processes on Linux (no re-import of ``__main__``, cheap start), threads elsewhere."""
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))
    return ThreadPoolExecutor(max_workers=workers)


def _run_jobs(jobs: list[_FaceJob], workers: int) -> list[list[tuple[int, str, int, bytes]]]:
    """Render every face, in ``workers`` parallel workers when more than one."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_render_face(j) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].classes))  # biggest first
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork() beside native threads
        warnings.simplefilter("ignore", DeprecationWarning)
        with _pool(workers) as pool:
            results = dict(zip(order, pool.map(_render_face, [jobs[i] for i in order])))
    return [results[i] for i in range(len(jobs))]


# ----------------------------------------------------------------------------------------------
# Building and caching
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$REPRLAB_DATA`` if set, else ``~/.cache/reprlab/data``."""
    env = os.environ.get("REPRLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reprlab" / "data"


def _params(cfg: GlyphsConfig) -> dict:
    return {
        "seed": cfg.seed,
        "size": cfg.size,
        "renders_per_face": cfg.renders_per_face,
        "min_faces": cfg.min_faces,
        "extra_font_dirs": list(cfg.extra_font_dirs),
    }


def _build_key(cfg: GlyphsConfig, faces: Sequence[Face]) -> str:
    """Hash over everything that determines the file's bytes."""
    from PIL import __version__ as pillow_version
    from PIL import features

    payload = {
        "format": FORMAT_VERSION,
        "params": {k: v for k, v in _params(cfg).items() if k != "extra_font_dirs"},
        "fonts": [(f.file, f.sha256) for f in faces],
        "classes": [c.members for c in glyph_classes()],
        "geometry": [EM_FRACTION, BASELINE_FRACTION, SUPERSAMPLE_SIDE],
        "stroke": [STROKE_LEVELS, STROKE_PROBS, MIN_INK_AFTER_THINNING],
        "pillow": pillow_version,
        "freetype": features.version("freetype2"),
        "numpy": np.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig()) -> Path:
    """Where the Parquet file for ``cfg`` lives (whether or not it is built yet)."""
    faces, _ = discover_faces(cfg)
    return Path(cache_dir).expanduser() / f"glyphs-{_build_key(cfg, faces)}.parquet"


def _assemble(cfg: GlyphsConfig, faces: list[Face], results: list[list[tuple]]) -> tuple[list, list, list]:
    """Rows sorted by (label, face, render), the kept classes and the dropped ones."""
    by_key = {c.key: c for c in glyph_classes()}
    n_faces = Counter(key for rows in results for key in {r[0] for r in rows})
    kept = [c for c in glyph_classes() if n_faces[c.key] >= cfg.min_faces]
    dropped = [{"char": c.char, "faces": n_faces[c.key]} for c in glyph_classes() if c not in kept]
    label_of = {c.key: i for i, c in enumerate(kept)}
    rows = []
    for face_index, (face, face_rows) in enumerate(zip(faces, results)):
        for key, glyph, render, png in face_rows:
            if key in label_of:
                rows.append((label_of[key], face_index, render, by_key[key], glyph, face, png))
    rows.sort(key=lambda r: r[:3])
    return rows, kept, dropped


def _to_table(cfg: GlyphsConfig, faces: list[Face], skipped: dict, results: list, key: str):
    import pyarrow as pa

    rows, kept, dropped = _assemble(cfg, faces, results)
    faces_used = Counter(f for f, _ in {(r[5].file, r[0]) for r in rows})  # classes per face
    columns = {
        "image": pa.array([r[6] for r in rows], pa.binary()),
        "label": pa.array([r[0] for r in rows], pa.int64()),
        "char": pa.array([r[3].char for r in rows], pa.string()),
        "script": pa.array([r[3].script for r in rows], pa.string()),
        "font_family": pa.array([r[5].family for r in rows], pa.string()),
        "font_weight": pa.array([r[5].weight for r in rows], pa.string()),
        "font_slant": pa.array([r[5].slant for r in rows], pa.string()),
        "font_file": pa.array([r[5].file for r in rows], pa.string()),
        "render": pa.array([r[2] for r in rows], pa.int64()),
        "glyph": pa.array([r[4] for r in rows], pa.string()),  # the member character actually drawn
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "hash": key,
        "params": _params(cfg),
        "ink": "white glyph on black background",
        "faces": [
            {"file": f.file, "family": f.family, "weight": f.weight, "slant": f.slant,
             "sha256": f.sha256, "classes": faces_used[f.file]}
            for f in faces if faces_used[f.file]
        ],
        "skipped_fonts": skipped,
        "classes": [{"label": i, "char": c.char, "script": c.script, "members": "".join(c.members)}
                    for i, c in enumerate(kept)],
        "dropped_classes": dropped,
    }  # fmt: skip
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta, ensure_ascii=False)})


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _BuildLock:
    """An exclusive advisory lock on a file in the cache directory (no-op where unsupported)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = None

    def __enter__(self) -> _BuildLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.fh = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


def build_glyphs(
    cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig(), *, force: bool = False, workers: int | None = None
) -> Path:
    """Render the data set into ``cache_dir`` (unless already cached) and return the Parquet path."""
    cache_dir = Path(cache_dir).expanduser()
    faces, skipped = discover_faces(cfg)
    key = _build_key(cfg, faces)
    path = cache_dir / f"glyphs-{key}.parquet"
    if path.exists() and not force:
        return path
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data: cannot create the glyphs cache directory {cache_dir}: {exc}") from None
    with _BuildLock(cache_dir / ".glyphs.lock"):
        if path.exists() and not force:  # another process built it while we waited
            return path
        results = _run_jobs(_face_jobs(cfg, faces), workers or _default_workers())
        table = _to_table(cfg, faces, skipped, results, key)
        if table.num_rows == 0:
            raise DataError(f"data: glyphs rendered no images (no class has {cfg.min_faces} faces)")
        try:
            _write_atomic(table, path)
        except OSError as exc:
            raise DataError(f"data: cannot write the glyphs cache {path}: {exc}") from None
    return path


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"data: glyphs cache {path} is unreadable ({why}); {REBUILD_HINT}")


def read_metadata(path: Path) -> dict:
    """The build metadata stored in a glyphs Parquet file's schema."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        meta = json.loads((schema.metadata or {})[METADATA_KEY])
    except KeyError:
        raise _corrupt(path, "no glyphs metadata") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/...; json ValueError
        raise _corrupt(path, type(exc).__name__) from None
    return meta


def _read_table(path: Path, columns: Iterable[str]):
    import pyarrow.parquet as pq

    columns = list(columns)
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # any pyarrow/OS failure means the cache cannot be used
        raise _corrupt(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    return table


def _decode_pixels(images: list[bytes], path: Path, size: int) -> np.ndarray:
    """Decode PNG bytes into one uint8 (N, size, size, 1) array."""
    out = np.empty((len(images), size, size, 1), dtype=np.uint8)
    for i, data in enumerate(images):
        arr = decode_image_bytes(data, f"{path} row {i}")
        if arr.shape != (size, size, 1):
            raise _corrupt(path, f"row {i} has shape {arr.shape}, expected {(size, size, 1)}")
        out[i] = arr
    return out


def _split(labels: np.ndarray, pixels: np.ndarray, meta: dict[str, np.ndarray]) -> tuple[ImageSet, ImageSet]:
    """Class-disjoint split: the first half of the class ids trains, the rest tests."""
    classes = np.unique(labels)
    train_mask = labels < classes[len(classes) // 2]
    sets = []
    for mask in (train_mask, ~train_mask):
        idx = np.flatnonzero(mask)
        sets.append(ImageSet(labels=labels[idx], pixels=pixels[idx], meta={k: v[idx] for k, v in meta.items()}))
    return sets[0], sets[1]


def load_glyphs(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig()) -> Benchmark:
    """Build (or reuse) the data set and return it as a class-disjoint train/test Benchmark."""
    path = build_glyphs(cache_dir, cfg)
    read_metadata(path)
    table = _read_table(path, ("image", "label") + META_COLUMNS)
    pixels = _decode_pixels(table.column("image").to_pylist(), path, cfg.size)
    labels = table.column("label").to_numpy().astype(np.int64)
    meta = {k: table.column(k).to_numpy(zero_copy_only=False) for k in META_COLUMNS}
    train, test = _split(labels, pixels, meta)
    return Benchmark(name="glyphs", train=train, test=test)


def glyphs_info(cache_dir: Path, cfg: GlyphsConfig = GlyphsConfig(), *, build: bool = True) -> dict:
    """Summary of the (built if needed) data set: counts, split, dropped classes, per-face table."""
    path = build_glyphs(cache_dir, cfg) if build else cache_path(cache_dir, cfg)
    if not path.exists():
        return {"name": "glyphs", "path": str(path), "built": False}
    meta = read_metadata(path)
    table = _read_table(path, ("label", "font_file"))
    labels = table.column("label").to_numpy()
    classes = np.unique(labels)
    n_train = len(classes) // 2
    train_mask = labels < classes[n_train] if len(classes) > 1 else np.ones(len(labels), bool)
    per_face = Counter(table.column("font_file").to_pylist())
    return {
        "name": "glyphs",
        "built": True,
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "params": meta["params"],
        "ink": meta["ink"],
        "classes": len(classes),
        "faces": len(meta["faces"]),
        "images": int(len(labels)),
        "splits": {
            "train": {"classes": n_train, "images": int(train_mask.sum())},
            "test": {"classes": len(classes) - n_train, "images": int((~train_mask).sum())},
        },
        "classes_by_script": dict(Counter(c["script"] for c in meta["classes"])),
        "merged_classes": {c["char"]: c["members"] for c in meta["classes"] if len(c["members"]) > 1},
        "dropped_classes": meta["dropped_classes"],
        "face_table": [
            {k: f[k] for k in ("file", "family", "weight", "slant")}
            | {"chars": f["classes"], "images": per_face[f["file"]]}
            for f in meta["faces"]
        ],
        "skipped_fonts": meta["skipped_fonts"],
    }

