"""The run directory as a transaction (``reprlab train`` and ``reprlab tune``).

- **Checked before written.** :func:`check_output_path` refuses an output that cannot hold a run
  (empty, a file, under a file, on a read-only file system, without write permission) before
  anything is created; :func:`check_resume` compares the resolved new config with the run's
  stored ``config.yaml`` and names the first difference that a resume may not make.
- **Claimed atomically.** :func:`claim` creates ``OUTPUT/.reprlab.lock`` with ``O_CREAT|O_EXCL``
  (local and mounted paths), so two commands can never write into one directory at once; a lock
  left by a process that is gone (same host, dead pid) is taken over. It is removed when the
  command ends, however it ends (SIGTERM included: the CLI turns it into an exception).
- **Rolled back when nothing was trained.** A new run that fails on a mistake in its settings or
  data (``ConfigError`` / ``DataError``) before its first trained epoch was committed leaves the
  directory as it found it: :class:`Claim` removes the entries it created.

Object storage has no exclusive create that pyarrow exposes: there the claim is a marker object
written after an existence check (a narrow race remains; ``docs/FAULTS.md``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from reprlab.platform.core.errors import CheckpointError, ConfigError, StorageError
from reprlab.platform.core.storage import Location

LOCK_FILE = ".reprlab.lock"

# Keys whose value may differ between a run and its --resume: they change how the rest of the run
# is trained, evaluated, logged or stored, never what the checkpoint holds or how it is read back.
# Everything else (method, data set and its shapes, model, optimizer, seed, batch composition,
# validation protocol) must match the stored config.yaml.
RESUMABLE_KEYS = (
    "experiment.name",
    "train.epochs", "train.log_every", "train.amp", "train.channels_last", "train.compile",
    "train.grad_accumulation",
    "eval.",                      # every eval key: evaluation schedule, batch size, k-means iterations
    "scaling.",                   # workers, GPUs, CPUs, max_failures, wait_timeout_s
    "checkpoint.keep",
    "data.root", "data.shards", "data.shard_cache", "data.loader_workers", "data.prefetch_factor",
    "data.pin_memory",
)


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


# ---- the output path -----------------------------------------------------------------------------


def check_output_path(raw: str | os.PathLike | None, loc: Location, what: str = "output") -> None:
    """One line, before anything is created, when ``loc`` (a local path) cannot hold a run."""
    if raw is not None and str(raw).strip() == "":
        raise ConfigError(f"{what}: --output is empty; name a directory (e.g. --output runs/my-run)")
    if not loc.is_local:
        return
    path = loc.local_path
    if path.exists() and not path.is_dir():
        raise StorageError(f"{what}: {path} is a file, not a directory; choose another --output")
    parent = path
    while not parent.exists():  # the nearest existing ancestor is where the run directory is created
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"{what}: {path}: {parent} is a file, not a directory")
    if _read_only_fs(parent):
        raise StorageError(f"{what}: {path}: {parent} is on a read-only file system")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"{what}: {path}: no permission to write in {parent}")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ---- the claim -----------------------------------------------------------------------------------


class Claim:
    """An exclusive claim on a run directory (``with claim(loc): ...``); see the module docstring."""

    def __init__(self, loc: Location, what: str) -> None:
        self.loc, self.what = loc, what
        self.created_dir = False
        self.before: set[str] = set()
        self.committed = False  # set once the run holds something worth keeping (a trained epoch)

    def acquire(self) -> None:
        lock = self.loc / LOCK_FILE
        if self.loc.is_local:
            path = self.loc.local_path
            self.created_dir = not path.exists()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{self.what}: cannot create {path}: {exc.strerror or exc}") from None
            self.before = set(os.listdir(path))
            for attempt in range(2):
                try:
                    fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = _holder(lock)
                    if attempt == 0 and _stale(holder):
                        Path(lock.path).unlink(missing_ok=True)
                        continue
                    self.undo_mkdir()
                    raise ConfigError(f"{self.what}: {path} is in use by another reprlab command "
                                      f"({_describe(holder)}); wait for it to end or choose another --output") from None
                except OSError as exc:
                    self.undo_mkdir()
                    raise StorageError(f"{self.what}: cannot write {lock.path}: {exc.strerror or exc}") from None
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(_me()))
                self.before.add(LOCK_FILE)
                return
        else:
            if lock.exists():
                raise ConfigError(f"{self.what}: {self.loc} is in use by another reprlab command "
                                  f"({_describe(_holder(lock))}); wait for it to end or choose another --output")
            self.before = set(self.loc.listdir())
            lock.write_text(json.dumps(_me()))

    def release(self) -> None:
        try:
            (self.loc / LOCK_FILE).delete()
        except StorageError:
            pass

    def rollback(self) -> None:
        """Remove what this command created in the directory (never what was there before)."""
        if self.committed:
            return
        try:
            for name in set(self.loc.listdir()) - self.before:
                (self.loc / name).delete()
        except StorageError:
            return
        self.release()
        self.undo_mkdir()

    def undo_mkdir(self) -> None:
        if self.created_dir and self.loc.is_local:
            try:
                os.rmdir(self.loc.path)
            except OSError:
                pass


def claim(loc: Location, what: str = "output") -> Claim:
    c = Claim(loc, what)
    c.acquire()
    return c


def _me() -> dict[str, Any]:
    import sys

    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "argv": sys.argv[1:]}


def _holder(lock: Location) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text())
    except (FileNotFoundError, ValueError, StorageError, UnicodeDecodeError):
        return {}


def _stale(holder: dict[str, Any]) -> bool:
    """A lock whose process is gone (same host only: another host's pid says nothing here)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return not holder  # unreadable (a crash while it was written): stale
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return f"its lock file {LOCK_FILE} is unreadable; delete it if no command is running"
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"


# ---- resume --------------------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, key + ".")
        else:
            yield key, v


def stored_config(loc: Location, what: str = "resume") -> dict[str, Any]:
    """The run's ``config.yaml``, parsed and checked (one line if it cannot be read)."""
    import yaml

    from reprlab.platform.core.config import parse_config

    path = loc / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what}: {loc} holds no run to resume (no config.yaml)") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{what}: cannot read {path}: {type(exc).__name__}; the run's config is damaged") from None
    try:
        return parse_config(raw).to_dict()
    except ConfigError as exc:
        raise CheckpointError(f"{what}: {path} is not a valid config ({exc})") from None


def check_resume(stored: dict[str, Any], new: dict[str, Any], where: Location | str, what: str = "resume") -> None:
    """The first key a resume may not change, as one line naming both values."""
    old, now = dict(flatten(stored)), dict(flatten(new))
    diff = [k for k in dict.fromkeys([*old, *now]) if old.get(k, _MISSING) != now.get(k, _MISSING) and not resumable(k)]
    if not diff:
        return
    k = diff[0]
    more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])}{', ...' if len(diff) > 4 else ''})" if len(diff) > 1 else ""
    raise ConfigError(
        f"{what}: {k} is {_show(now.get(k, _MISSING))} here but {_show(old.get(k, _MISSING))} in the run in {where}{more}; "
        f"a resume continues the same run and may change only {_allowed()}; "
        f"drop the --set or start a new run with another --output"
    )


class _Missing:
    def __repr__(self) -> str:
        return "absent"


_MISSING = _Missing()


def _show(v: Any) -> str:
    return "absent" if v is _MISSING else repr(v)


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the path: ``no space left on device: /x/y``."""
    reason = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory",
              errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or type(exc).__name__)
    paths = [p for p in (exc.filename, exc.filename2) if p]
    return f"{reason}: {' -> '.join(str(p) for p in paths)}" if paths else f"{reason} ({type(exc).__name__})"


def checkpoint_epochs(loc: Location) -> list[int]:
    """Epochs with a checkpoint file on disk (in-process ``checkpoints/`` or Ray's ``ray/train/``)."""
    found = set()
    for sub in (loc / "checkpoints", loc / "ray" / "train"):
        try:
            for name in sub.listdir():
                if name.startswith("epoch_") and name[6:].isdigit() and (sub / name / "state.pt").is_file():
                    found.add(int(name[6:]))
        except StorageError:
            pass
    return sorted(found)


def kept_summary(loc: Location) -> tuple[str, bool]:
    """What an interrupted command left in ``loc`` (for its one line) and whether it can resume."""
    try:
        if (loc / "tune").is_dir():
            trials = [t for t in (loc / "trials").listdir()] if (loc / "trials").is_dir() else []
            epochs = sum(len(checkpoint_epochs(loc / "trials" / t)) for t in trials)
            return (f"the sweep in {loc} keeps {len(trials)} trial run(s) with {epochs} checkpoint(s); "
                    "trials.parquet and best.yaml are written when it finishes"), True
        epochs = checkpoint_epochs(loc)
        if epochs:
            return f"{loc} keeps checkpoints of epochs {', '.join(map(str, epochs))} (newest: {epochs[-1]})", True
        if (loc / "config.yaml").is_file():
            return f"{loc} holds the run's config and no checkpoint yet", True
    except StorageError:
        pass
    return f"nothing was kept in {loc}", False


def _allowed() -> str:
    return ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS if not k.startswith(("data.", "train.c", "train.a", "train.g")) ) + ", data loading and speed options"
