"""Download, verify and unpack the public archives of the real benchmarks.

Only data sets whose authors publish a direct archive are downloadable; each archive carries the
digest that well-known loaders verify it against (the source is named next to it). A download is
streamed to ``<file>.part``, checked, and only then renamed, so a file with the final name has
always passed its checksum. Archives are unpacked into the data root in the layout that
each set's reader (:mod:`reprlab.platform.data.sets.cub` and its siblings) reads.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reprlab.platform.core.errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60
ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".zip")

_Hashers = dict[str, tuple[str, Any]]  # algorithm -> (expected hex digest, running hash)


@dataclass(frozen=True)
class Archive:
    """One file of a data set's official distribution and its published digest(s)."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not (self.md5 or self.sha256):
            raise ValueError(f"Archive {self.filename} needs an md5 or sha256 digest")

    @property
    def is_archive(self) -> bool:
        return self.filename.lower().endswith(ARCHIVE_SUFFIXES)


ARCHIVES: dict[str, list[Archive]] = {
    # CUB-200-2011 on CaltechDATA. The md5 is the one torchvision-style loaders check
    # (TDeVries/cub2011_dataset `Cub2011.tgz_md5`; KevinMusgrave/powerful-benchmarker
    # `datasets/cub200.py`); the record URL is the one pytorch-metric-learning 2.9
    # (`pytorch_metric_learning/datasets/cub.py`) downloads from.
    "cub": [
        Archive(
            url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            filename="CUB_200_2011.tgz",
            md5="97eceeb196236b17998738112f37df78",
        )
    ],
    # CARS196, the all-in-one distribution (car_ims.tgz + cars_annos.mat) used by DML papers.
    # md5s from KevinMusgrave/powerful-benchmarker `src/powerful_benchmarker/datasets/cars196.py`
    # (same values in several other DML repositories, there with the older
    # imagenet.stanford.edu/internal/car196/ host).
    "cars": [
        Archive(
            url="http://ai.stanford.edu/~jkrause/car196/car_ims.tgz",
            filename="car_ims.tgz",
            md5="d5c8f0aa497503f355e17dc7886c3f14",
        ),
        Archive(
            url="http://ai.stanford.edu/~jkrause/car196/cars_annos.mat",
            filename="cars_annos.mat",
            md5="b407c6086d669747186bd1d764ff9dbc",
        ),
    ],
    # Stanford Online Products. md5 from KevinMusgrave/powerful-benchmarker
    # `src/powerful_benchmarker/datasets/stanford_online_products.py` (and
    # vadimkantorov/metriclearningbench); sha256 from tensorflow/datasets
    # `tensorflow_datasets/url_checksums/stanford_online_products.txt`.
    "sop": [
        Archive(
            url="ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            filename="Stanford_Online_Products.zip",
            md5="7f73d41a2f44250d4779881525aea32e",
            sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
        )
    ],
}

NO_PUBLIC_ARCHIVE: dict[str, str] = {
    "inshop": (
        "In-shop Clothes has no direct public download: get Img/img.zip and "
        "Eval/list_eval_partition.txt of the DeepFashion In-shop Clothes Retrieval Benchmark "
        "(Google Drive, linked from https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/"
        "InShopRetrieval.html) and unpack them so that {root}/list_eval_partition.txt and "
        "{root}/img/ exist"
    ),
    "vehicleid": (
        "PKU VehicleID is distributed on request only (https://www.pkuml.org/resources/"
        "pku-vehicleid.html): unpack it so that {root}/image/ and "
        "{root}/train_test_split/train_list.txt exist"
    ),
}


# --------------------------------------------------------------------------------------------
# download and verify


def _hashers(md5: str | None, sha256: str | None) -> _Hashers:
    wanted = {"md5": md5, "sha256": sha256}
    return {
        algo: (digest.lower(), hashlib.new(algo, usedforsecurity=False))
        for algo, digest in wanted.items()
        if digest
    }


def _verify(path: Path, name: str, hashers: _Hashers) -> None:
    """Raise (after deleting ``path``) if a computed digest differs from the expected one."""
    for algo, (expected, hasher) in hashers.items():
        actual = hasher.hexdigest()
        if actual != expected:
            path.unlink(missing_ok=True)
            raise DataError(
                f"data: {algo} checksum mismatch for {name}: expected {expected}, got {actual} "
                f"(the download was deleted)"
            )


def _file_matches(path: Path, md5: str | None, sha256: str | None) -> bool:
    hashers = _hashers(md5, sha256)
    if not hashers or not path.is_file():
        return False
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            for _, hasher in hashers.values():
                hasher.update(chunk)
    return all(h.hexdigest() == expected for expected, h in hashers.values())


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _stream(url: str, part: Path, hashers: _Hashers, progress: bool) -> None:
    """Copy ``url`` into ``part``, feeding every chunk to ``hashers``."""
    request = urllib.request.Request(url, headers={"User-Agent": "reprlab"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, part.open("wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with _progress_bar(total, part.name.removesuffix(".part"), progress) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                for _, hasher in hashers.values():
                    hasher.update(chunk)
                bar.update(len(chunk))


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (a file path, or a directory to put the URL's file name in),
    verifying the given digests; returns the final path.

    A ``dest`` that already exists and matches the digests is kept without downloading. A failure
    (network or checksum) raises DataError, leaves no partial file and never creates ``dest``.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / (Path(urlsplit(url).path).name or "download")
    if _file_matches(dest, md5, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hashers = _hashers(md5, sha256)
    try:
        _stream(url, part, hashers, progress)
    except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise DataError(f"data: cannot download {url}: {exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _verify(part, dest.name, hashers)
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# extract


def _inside(root: Path, target: Path) -> bool:
    return target.resolve().is_relative_to(root)


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"data: refusing to extract {archive}: member {member!r} {why}")


def _check_name(archive: Path, root: Path, name: str) -> None:
    if os.path.isabs(name) or name.startswith(("/", "\\")) or not _inside(root, root / name):
        raise _refuse(archive, name, f"would be written outside {root}")


def _check_tar_member(archive: Path, root: Path, member: tarfile.TarInfo) -> None:
    _check_name(archive, root, member.name)
    if member.issym():
        target = (root / member.name).parent / member.linkname
    elif member.islnk():
        target = root / member.linkname
    else:
        target = None
    if target is not None and (os.path.isabs(member.linkname) or not _inside(root, target)):
        raise _refuse(archive, member.name, f"links outside {root}")
    if member.isdev():
        raise _refuse(archive, member.name, "is a device file")


def _with_progress(items: list, desc: str, enabled: bool) -> Iterator:
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="file", disable=not enabled, leave=False)


def _extract_tar(path: Path, root: Path, progress: bool) -> None:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for member in members:
            _check_tar_member(path, root, member)
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root, members=_with_progress(members, path.name, progress), **options)


def _extract_zip(path: Path, root: Path, progress: bool) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            _check_name(path, root, name)
        archive.extractall(root, members=_with_progress(names, path.name, progress))


def extract_archive(path: str | Path, root: str | Path, *, progress: bool = True) -> None:
    """Unpack a tar (any compression) or zip archive into ``root``.

    Refuses, before writing anything, an archive with a member that would land outside ``root``
    (absolute paths, ``..``, links pointing out) or a device file.
    """
    path = Path(path).expanduser()
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    try:
        if zipfile.is_zipfile(path):
            _extract_zip(path, root, progress)
        elif tarfile.is_tarfile(path):
            _extract_tar(path, root, progress)
        else:
            raise DataError(f"data: {path} is not a tar or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"data: cannot extract {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# data sets


def _rehost(url: str, base_url: str | None) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (which may carry a path prefix)."""
    if base_url is None:
        return url
    parts = urlsplit(url)
    return base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _archives(name: str, root: Path) -> list[Archive]:
    key = name.lower()
    if key in NO_PUBLIC_ARCHIVE:
        raise DataError("data: " + NO_PUBLIC_ARCHIVE[key].format(root=root))
    if key not in ARCHIVES:
        known = ", ".join(sorted({*ARCHIVES, *NO_PUBLIC_ARCHIVE}))
        raise DataError(f"data: unknown data set {name!r} (known: {known})")
    return ARCHIVES[key]


def download_dataset(
    name: str, root: str | Path, *, base_url: str | None = None, progress: bool = True
) -> Path:
    """Download, verify and unpack data set ``name`` into ``root``; returns the root to hand to
    its reader (``get_dataset(name).load(section, root)``, see :mod:`reprlab.platform.data.catalog`).

    ``base_url`` replaces the scheme and host of every archive URL (a mirror, or a local server
    in tests). Data sets without a public archive raise DataError saying where to get them.
    """
    root = Path(root).expanduser().absolute()
    for archive in _archives(name, root):
        url = _rehost(archive.url, base_url)
        path = download_file(
            url, root / archive.filename, md5=archive.md5, sha256=archive.sha256, progress=progress
        )
        if archive.is_archive:
            extract_archive(path, root, progress=progress)
    return root
