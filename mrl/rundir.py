"""The run folder as a resource: one training at a time, writable before anything starts, the
training data it was started on, and one-line errors for filesystem faults.

- `RunLock`: an exclusive ``flock`` on ``RUN/.lock`` for the life of a run. The kernel drops it
  when the process dies, however it dies (SIGKILL included), so a lock never outlives its
  holder; the file itself only names the holder (pid, host, start time) for the error of a
  second process. `lock_holder` asks without creating anything (a fresh run has no folder yet).
- `check_writable`: an output path that is a file, lies under a file, or sits on a read-only or
  unwritable location is refused before any work is done, naming the path.
- `data_fingerprint` / `fingerprint_changes`: size, row count and a cheap content hash of the
  training data, recorded in config.json, so that ``--resume`` on changed data refuses.
- `one_line_faults`: a decorator for entry points that turns the filesystem faults that can hit
  any write (disk full, quota, read-only, permission) into one ``error:`` line and exit code 1,
  and releases the run lock on every way out of the call.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from mrl.checkpoint import SaveError

LOCK_FILE = ".lock"

# Faults of the storage, not of the program: they get one line instead of a traceback.
WRITE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}

# flock errors that mean "this filesystem has no locks", not "somebody holds it".
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_held: dict[str, RunLock] = {}  # real path of a run folder -> the lock this process holds on it


class RunBusy(RuntimeError):
    """Another process holds the run folder's lock; the message names the folder and the holder."""


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on host {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


def lock_holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds ``run_dir``'s lock ("pid 123 on host h, since ..."), or None if nobody does.

    Creates nothing: a missing folder or lock file means free. A stale lock file left by a
    killed process is free too (the kernel released its lock with the process).
    """
    path = Path(run_dir) / LOCK_FILE
    key = os.path.realpath(run_dir)
    if key in _held and _held[key].fd is not None:
        return _describe_holder(path) + " (this process)"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(path)
    except OSError:
        return None  # a filesystem without flock: nothing to learn
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return None


class RunLock:
    """An exclusive lock on a run folder, held until `release` or the end of the process.

    The folder must exist. Raises `RunBusy` when another process holds it.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None
        key = os.path.realpath(self.run_dir)
        if key in _held:
            # Only an earlier call in this same process that ended without releasing can hold it
            # (one process runs one training at a time): take it over.
            _held.pop(key).release()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunBusy(
                    f"{self.run_dir} is in use by another training ({_describe_holder(self.path)}); "
                    "wait for it to end, or pick another --output-dir"
                ) from None
            except OSError as error:
                if error.errno not in NO_LOCKS:
                    os.close(fd)
                    raise
                # Some network filesystems have no flock: train anyway, but say what is not guarded.
                print(
                    f"note: {self.run_dir} is on a filesystem without file locks ({error.strerror}); "
                    "a second training started on it would not be stopped",
                    file=sys.stderr,
                )
                break
            # The previous holder may have unlinked the file between our open and our lock:
            # then we locked an orphan inode and must try again on the current file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        info = {
            "pid": os.getpid(),
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        _held[key] = self

    def release(self) -> None:
        """Unlock and remove the lock file (removed while still locked, so no other process can
        lock the old file after we let go). Idempotent."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        key = os.path.realpath(self.run_dir)
        if _held.get(key) is self:
            del _held[key]


def release_all() -> None:
    """Release every run lock this process holds (entry points call it on every way out)."""
    for lock in list(_held.values()):
        lock.release()


def is_effectively_empty(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing but (possibly) a lock file."""
    return all(p.name == LOCK_FILE for p in run_dir.iterdir())


def claim_run_dir(run_dir: str | os.PathLike, fresh: bool) -> str | None:
    """Create (fresh runs) and lock ``run_dir``; None on success, else the one-line reason.

    A fresh run checks again, under the lock, that nobody filled the folder since the early check.
    """
    run_dir = Path(run_dir)
    try:
        if fresh:
            run_dir.mkdir(parents=True, exist_ok=True)
        RunLock(run_dir)
    except RunBusy as error:
        return f"--output-dir {error}"
    except OSError as error:
        return f"--output-dir {run_dir}: cannot create or lock it ({error.strerror})"
    if fresh and not is_effectively_empty(run_dir):
        release_all()
        return f"--output-dir {run_dir} was filled by another process meanwhile; pick another"
    return None


# ------------------------------------------------------------------------------ writable paths


def check_writable(path: str | os.PathLike, what: str, folder: bool = True) -> None:
    """Raise ValueError (one line, starting with ``what``) unless ``path`` can be created or
    written: it must not be a file where a folder is wanted (or a folder where a file is
    wanted), must not lie under a file, and its nearest existing folder must be writable.
    Creates nothing."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{what} {path} is a broken symbolic link (to {os.readlink(path)})")
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{what} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise ValueError(f"{what} {path} is a folder, not a file")
        target = path if folder else path.parent
    else:
        target = path.parent
        while not target.exists():
            if target.is_symlink():
                raise ValueError(f"{what} {path}: {target} is a broken symbolic link")
            target = target.parent
        if not target.is_dir():
            raise ValueError(f"{what} {path}: {target} is a file, not a folder")
    # access() also reports read-only filesystems (EROFS), for root as well.
    if not os.access(target, os.W_OK | os.X_OK):
        reason = "read-only filesystem" if _read_only_mount(target) else "permission denied"
        raise ValueError(f"{what} {path}: cannot write in {target} ({reason})")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ------------------------------------------------------------------------------ data fingerprint

# Files up to this size are hashed whole (streamed; well under a second, and reading them as
# training data costs far more); larger ones by their first and last MiB and 32 blocks of
# 64 KiB spread evenly between (a few MiB read however large the file: a same-size, same-rows
# edit that falls between the blocks of such a file is the one change this cannot see).
WHOLE_FILE_BYTES = 256 << 20
_EDGE = 1 << 20
_BLOCK = 64 << 10
_BLOCKS = 32


def _content_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        else:
            spans = [(0, _EDGE), (size - _EDGE, _EDGE)]
            stride = (size - 2 * _EDGE) // (_BLOCKS + 1)
            spans += [(_EDGE + (i + 1) * stride - _BLOCK // 2, _BLOCK) for i in range(_BLOCKS)]
            for start, length in sorted(spans):
                f.seek(start)
                digest.update(f.read(length))
    return digest.hexdigest()[:32]


def data_fingerprint(spec: str, examples) -> dict[str, Any]:
    """What identifies the training data: for a local file its size in bytes, the rows read and
    a SHA-256 of its bytes (the whole file up to `WHOLE_FILE_BYTES`, else sampled, see above);
    for a hub dataset the rows and a hash of the loaded texts and scores. ``examples`` None: a
    file's bytes only (rows None)."""
    path = Path(spec)
    if path.is_file():
        size = path.stat().st_size
        method = "whole file" if size <= WHOLE_FILE_BYTES else "first/last MiB and 32 blocks"
        rows = None if examples is None else len(examples)
        return {"size": size, "rows": rows, "hash": _content_hash(path, size), "hashed": method}
    digest = hashlib.sha256()
    for column in examples.columns:
        for text in column:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(json.dumps(examples.scores).encode())
    return {"rows": len(examples), "hash": digest.hexdigest()[:32], "hashed": "loaded texts and scores"}


def check_data(run_dir: str | os.PathLike, spec: str, examples, resume: bool) -> dict[str, Any]:
    """The training data's fingerprint; with ``resume``, a ValueError (one line saying what
    changed) when it differs from the one the run recorded in its config.json. A run recorded
    before fingerprints existed is not checked."""
    now = data_fingerprint(spec, examples)
    if resume:
        try:
            saved = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
            recorded = saved.get("derived", {}).get("train_data_fingerprint")
        except (OSError, ValueError, AttributeError):
            recorded = None
        changes = fingerprint_changes(recorded, now) if recorded else []
        if changes:
            raise ValueError(
                f"--resume: the training data {spec} changed since the run started ({', '.join(changes)}); "
                "restore it or start a new run"
            )
    return now


def recorded_derived(run_dir: str | os.PathLike, key: str) -> Any:
    """A value the run recorded in its config.json's "derived" section, or None (no such key, or
    no readable config.json)."""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        return saved.get("derived", {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def fingerprint_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a recorded fingerprint and the current one (empty: the same data)."""
    changes = []
    if saved.get("size") != now.get("size"):
        changes.append(f"size {saved.get('size')} -> {now.get('size')} bytes")
    if saved.get("rows") != now.get("rows"):
        changes.append(f"rows {saved.get('rows')} -> {now.get('rows')}")
    if saved.get("hash") != now.get("hash"):
        changes.append(f"content hash ({now.get('hashed')}) differs")
    return changes


# ------------------------------------------------------------------------------ entry points


def one_line_faults(hint: str = ""):
    """Decorate an entry point: storage faults (`WRITE_FAULTS`, and a `SaveError` from an
    atomic save) become one ``error:`` line on stderr naming the file and the fault, plus
    ``hint``, and exit code 1; run locks taken during the call are released however it ends
    (an in-process caller may call it again)."""

    def decorate(main):
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except OSError as error:
                if not isinstance(error, SaveError) and error.errno not in WRITE_FAULTS:
                    raise
                if isinstance(error, SaveError):
                    message = str(error)
                else:
                    where = f"{error.filename}: " if error.filename else ""
                    message = f"{where}{error.strerror or error}"
                # On a line of its own: a progress bar may be half-drawn on the current one.
                print(f"\nerror: {message}{hint}", file=sys.stderr)
                raise SystemExit(1) from None
            finally:
                release_all()

        return wrapper

    return decorate
