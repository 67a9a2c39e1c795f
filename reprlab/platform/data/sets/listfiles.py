"""List-file parsing and checking shared by the readers of the real benchmarks.

Each reader (one module per data set in this package) returns a :class:`Benchmark` whose image
sets hold absolute file paths, the data set's own integer class ids, and per-image metadata.
Nothing is decoded: a reader only parses the list files, checks that every listed image exists,
and applies the benchmark's standard split (class-disjoint halves, or the data set's own
train/query/gallery lists). Anything wrong with the files on disk is one :class:`DataError` line
naming the file (and the line, for a malformed list).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprlab.platform.core.errors import DataError
from reprlab.platform.data.types import Benchmark, ImageSet, require_dir


# --------------------------------------------------------------------------------------------
# list-file parsing


@dataclass(frozen=True)
class Table:
    """The whitespace-separated rows of a list file, with their 1-based line numbers."""

    path: Path
    rows: np.ndarray  # (n, ncols) str
    lines: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.rows)

    def col(self, i: int) -> np.ndarray:
        return self.rows[:, i]

    def ints(self, i: int, what: str) -> np.ndarray:
        """Column ``i`` as int64; a non-integer names the file and line."""
        col = self.col(i)
        bad = np.flatnonzero(~np.char.isdigit(col))
        if bad.size:
            self.fail(bad[0], f"{what} {str(col[bad[0]])!r} is not a non-negative integer")
        return col.astype(np.int64)

    def fail(self, row: int, why: str) -> None:
        raise DataError(f"data: malformed line {self.lines[row]} in {self.path}: {why}")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"data: {what} list file not found: {path}")
    return path


def read_lines(path: Path, what: str) -> list[str]:
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data: cannot read {path}: {exc}") from None


def parse_rows(path: Path, lines: Sequence[str], ncols: int, first_line: int = 1) -> Table:
    """The ``ncols`` fields of each non-blank line; ``lines`` are numbered from ``first_line``."""
    fields = [line.split() for line in lines]
    counts = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
    numbers = np.arange(first_line, first_line + len(fields), dtype=np.int64)
    keep = counts > 0
    bad = np.flatnonzero(keep & (counts != ncols))
    if bad.size:
        i = bad[0]
        raise DataError(
            f"data: malformed line {numbers[i]} in {path}: expected {ncols} fields, "
            f"got {counts[i]}: {lines[i].strip()!r}"
        )
    rows = np.array(list(itertools.compress(fields, keep)), dtype=str).reshape(-1, ncols)
    return Table(path, rows, numbers[keep])


def read_table(
    path: Path, ncols: int, what: str, *, header: Sequence[str] | None = None
) -> Table:
    """The rows of a list file, after checking its header line if it has one."""
    lines = read_lines(path, what)
    if header is None:
        return parse_rows(path, lines, ncols)
    check_header(path, lines, 0, header)
    return parse_rows(path, lines[1:], ncols, first_line=2)


def check_header(path: Path, lines: Sequence[str], index: int, header: Sequence[str]) -> None:
    found = lines[index].split() if index < len(lines) else []
    if tuple(found) != tuple(header):
        raise DataError(
            f"data: malformed line {index + 1} in {path}: expected header {' '.join(header)!r}, "
            f"got {' '.join(found)!r}"
        )


# --------------------------------------------------------------------------------------------
# paths, existence and splits


def dataset_dir(root: str | Path, folder: str, marker: str, what: str) -> Path:
    """``root/folder`` when present, else ``root`` itself when it is that folder."""
    root = require_dir(Path(root).expanduser().absolute(), what)
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (root / marker).exists():
        return root
    return require_dir(root / folder, what)


def join(base: Path, rel: np.ndarray) -> np.ndarray:
    """Absolute paths ``base/rel`` as an object array of str."""
    rel = np.asarray(rel, dtype=str)
    return np.char.add(str(base) + os.sep, rel).astype(object)


def check_images(paths: np.ndarray, listed_in: Path) -> None:
    """Raise one DataError if any listed image file is absent (one directory scan per folder)."""
    present: set[str] = set()
    for folder in set(map(os.path.dirname, paths)):
        try:
            with os.scandir(folder) as entries:
                present.update(e.path for e in entries)
        except OSError:
            continue
    absent = np.fromiter((p not in present for p in paths), dtype=bool, count=len(paths))
    missing = np.flatnonzero(absent)
    if missing.size:
        raise DataError(
            f"data: {missing.size} of {len(paths)} images listed in {listed_in} are missing, "
            f"first: {paths[missing[0]]}"
        )


def image_set(
    paths: np.ndarray, labels: np.ndarray, meta: dict[str, np.ndarray], index: np.ndarray
) -> ImageSet:
    return ImageSet(
        labels=np.asarray(labels, dtype=np.int64)[index],
        paths=paths[index],
        meta={k: v[index] for k, v in meta.items()},
    )


def class_split(
    name: str, paths: np.ndarray, labels: np.ndarray, meta: dict[str, np.ndarray], last_train: int
) -> Benchmark:
    """Class-disjoint benchmark: classes ``<= last_train`` train, the others test."""
    is_train = labels <= last_train
    for split, mask in (("train", is_train), ("test", ~is_train)):
        if not mask.any():
            raise DataError(
                f"data: {name} has no {split} images (train = classes 1-{last_train}, "
                f"test = the classes above); is the data set complete?"
            )
    return Benchmark(
        name=name,
        train=image_set(paths, labels, meta, np.flatnonzero(is_train)),
        test=image_set(paths, labels, meta, np.flatnonzero(~is_train)),
    )


def require_disjoint(name: str, train: np.ndarray, test: np.ndarray) -> None:
    shared = np.intersect1d(train, test)
    if shared.size:
        raise DataError(
            f"data: {name} train and test share {shared.size} classes (e.g. {shared[0]}); "
            f"the protocol needs class-disjoint splits"
        )


def positions(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query, an index into ``keys`` holding it, and whether it was found at all."""
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    order = np.argsort(keys, kind="stable")
    pos = order[np.clip(np.searchsorted(keys, query, sorter=order), 0, len(keys) - 1)]
    return pos, keys[pos] == query


def lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray | None:
    """``values`` at the positions of ``query`` in ``keys``; None if some query is not a key."""
    pos, found = positions(keys, query)
    return values[pos] if found.all() else None


def first_duplicate(table: Table, values: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(values, return_counts=True)
    dup = np.flatnonzero(counts > 1)
    if dup.size:
        rows = np.flatnonzero(values == uniq[dup[0]])
        table.fail(rows[1], f"duplicate {what} {uniq[dup[0]]}")


def first_dir(*candidates: Path) -> Path:
    """The first of ``candidates`` that is a directory (else the first)."""
    return next((p for p in candidates if p.is_dir()), candidates[0])
