"""Where a run's files live: a local directory (an NFS mount is one too) or an S3-compatible URI.

A :class:`Location` is a pyarrow filesystem and a path on it, plus the URI that names it, so the
same small set of operations (write bytes so that readers never see half a file, read, exists,
list, delete, upload a local directory) works on either. Workers on other nodes get the URI (a
string) and resolve it themselves: nothing assumes a path that only exists on the driver.

URIs: ``s3://bucket/prefix``. The connection comes from the URI's query, as pyarrow's
``FileSystem.from_uri`` reads it (``endpoint_override=host:port``, ``scheme=http``, ``region=...``),
or from the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``~/.aws``, an instance profile). Prefer the query for
a non-AWS server: Ray workers that were started earlier do not see environment variables set
later in the driver, but they always get the URI.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow.fs as pafs

from reprlab.platform.core.errors import StorageError

REMOTE_SCHEMES = ("s3",)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOCAL = pafs.LocalFileSystem()
_CHUNK = 8 << 20


def is_uri(location: object) -> bool:
    """``scheme://...`` (only strings: a ``Path`` has already lost its double slash)."""
    return isinstance(location, str) and _URI.match(location) is not None


def _reason(exc: BaseException) -> str:
    """The useful part of a pyarrow / AWS SDK error, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@functools.lru_cache(maxsize=32)
def _remote_filesystem(scheme: str, userinfo: str, bucket: str, query: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{userinfo}{bucket}" + (f"?{query}" if query else ""))
    return fs


@dataclass(frozen=True)
class Location:
    """A file or directory on a pyarrow filesystem. ``path`` is the filesystem's path (local:
    absolute; S3: ``bucket/key``); ``scheme``, ``userinfo`` and ``query`` rebuild the URI."""

    fs: pafs.FileSystem
    path: str
    scheme: str = ""
    query: str = ""
    userinfo: str = ""

    # ---- names ------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """What another process (a worker on another node) resolves back to this location."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.userinfo}{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self} is not a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return self.at(posixpath.dirname(self.path.rstrip("/")))

    @property
    def endpoint(self) -> str:
        """Where an S3 URI connects (for messages): its endpoint_override, the AWS environment's
        endpoint, or AWS itself."""
        return self._endpoint_override() or "AWS S3"

    def _endpoint_override(self) -> str | None:
        given = parse_qs(self.query).get("endpoint_override")
        return (given[0] if given else None) or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_ENDPOINT_URL")

    def __str__(self) -> str:  # for messages: no credentials, no connection options
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __truediv__(self, name: str) -> Location:
        return self.at(posixpath.join(self.path, str(name)))

    def at(self, path: str) -> Location:
        """Another path on the same filesystem (e.g. a checkpoint path Ray returned)."""
        return Location(self.fs, path, self.scheme, self.query, self.userinfo)

    # ---- queries ----------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise StorageError(f"storage: cannot reach {self}: {_reason(exc)}") from None

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A directory; on object storage: a prefix that holds at least one object."""
        return self.info().type == pafs.FileType.Directory

    def listdir(self) -> list[str]:
        """Names directly under this directory, sorted (none if it does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except NotADirectoryError:
            return []
        except OSError as exc:
            raise StorageError(f"storage: cannot list {self}: {_reason(exc)}") from None
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def walk(self) -> list[str]:
        """Every file below this directory, as sorted paths relative to it."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=True))
        except OSError as exc:
            raise StorageError(f"storage: cannot list {self}: {_reason(exc)}") from None
        root = self.path.rstrip("/") + "/"
        return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(root))

    # ---- reading ----------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError if it does not exist."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists():
                raise FileNotFoundError(str(self)) from None
            raise StorageError(f"storage: cannot read {self}: {_reason(exc)}") from None

    def read_text(self) -> str:
        return self.read_bytes().decode()

    # ---- writing ----------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Replace the file with ``data``; a reader sees the old or the new file, never half.
        Local: a temporary file renamed over it. S3: an object appears only once its upload
        has completed."""
        try:
            if self.is_local:
                path = Path(self.path)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                with self.fs.open_output_stream(self.path) as f:
                    f.write(data)
        except OSError as exc:
            raise StorageError(f"storage: cannot write {self}: {_reason(exc)}") from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def append_text(self, text: str) -> None:
        """Append to a small log file (object storage: read and rewrite it; one writer)."""
        if self.is_local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(text)
            return
        try:
            old = self.read_bytes()
        except FileNotFoundError:
            old = b""
        self.write_bytes(old + text.encode())

    def mkdir(self) -> None:
        """Create the directory (local); object storage has no directories to create."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        """Remove the file or the directory with everything in it (nothing if absent)."""
        kind = self.info().type
        try:
            if kind == pafs.FileType.Directory:
                self.fs.delete_dir(self.path)
            elif kind == pafs.FileType.File:
                self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"storage: cannot delete {self}: {_reason(exc)}") from None

    def upload(self, local: Path) -> None:
        """Copy a local file or directory (recursively) to this location."""
        local = Path(local)
        try:
            if local.is_dir():
                if self.is_local:
                    shutil.copytree(local, self.path, dirs_exist_ok=True)
                else:
                    pafs.copy_files(str(local), self.path, source_filesystem=_LOCAL,
                                    destination_filesystem=self.fs, chunk_size=_CHUNK)
            elif self.is_local:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, self.path)
            else:
                with open(local, "rb") as src, self.fs.open_output_stream(self.path) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except OSError as exc:
            raise StorageError(f"storage: cannot upload {local} to {self}: {_reason(exc)}") from None


def resolve(location: str | os.PathLike | Location, what: str = "output") -> Location:
    """A local path (made absolute), ``file://`` path, or ``s3://bucket/prefix[?options]``.
    ``what`` names the option in error messages."""
    if isinstance(location, Location):
        return location
    if not is_uri(location):
        return Location(_LOCAL, str(Path(location).expanduser().resolve()))
    parts = urlsplit(str(location))
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Location(_LOCAL, str(Path(unquote(parts.path)).expanduser().resolve()))
    shown = f"{scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{what}: {shown}: unsupported storage {scheme}:// (use a local or mounted path, "
                           f"or s3://bucket/prefix)")
    userinfo, at, bucket = parts.netloc.rpartition("@")
    if not bucket:
        raise StorageError(f"{what}: {location}: the URI names no bucket (expected s3://bucket/prefix)")
    key = "/".join(p for p in parts.path.split("/") if p)
    try:
        fs = _remote_filesystem(scheme, userinfo + at, bucket, parts.query)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise StorageError(f"{what}: {shown}: {_reason(exc)}") from None
    return Location(fs, f"{bucket}/{key}" if key else bucket, scheme, parts.query, userinfo + at)


def check_writable(loc: Location, what: str = "output") -> None:
    """Fail in one line, before Ray starts, when object storage cannot be reached, the bucket
    does not exist or it cannot be written. Local paths are created as they are written."""
    if loc.is_local:
        return
    bucket = loc.path.split("/", 1)[0]
    endpoint = loc._endpoint_override()
    if endpoint:  # a server of one's own: a refused connection or an unknown host fails at once
        scheme = (parse_qs(loc.query).get("scheme") or ["https"])[0]
        url = urlsplit(endpoint if "://" in endpoint else f"{scheme}://{endpoint}")
        try:
            port = url.port or (80 if url.scheme == "http" else 443)
            if not url.hostname:
                raise ValueError("no host name")
            with socket.create_connection((url.hostname, port), timeout=10):
                pass
        except (OSError, ValueError) as exc:  # ValueError: a port that is not a number
            raise StorageError(f"{what}: cannot reach {loc.scheme}://{bucket} at {endpoint}: {_reason(exc)}") from None
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"{what}: cannot reach {loc.scheme}://{bucket} at {loc.endpoint}: {_reason(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{what}: {loc}: bucket {bucket!r} does not exist at {loc.endpoint}")
    probe = loc / f".reprlab-write-check-{uuid.uuid4().hex[:12]}"
    try:
        probe.write_bytes(b"")
        probe.delete()
    except StorageError as exc:
        raise StorageError(f"{what}: cannot write to {loc}: {exc}") from None
