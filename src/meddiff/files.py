"""Atomic file and folder writes: readers (a browser, a sync job, a data loader) never see half an output."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meddiff.errors import UserError

# Why a write fails when the fault is the place written to, not meddiff: a full disk or quota, a read-only
# filesystem, no permission. These are the user's to fix, so they are reported like bad input (one line).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def write_failure(path: str | Path, exc: Exception) -> UserError:
    """The one-line error for ``path`` that could not be written because of ``exc``: an ``OSError``, or a
    safetensors error, whose message carries the operating system's reason as "... (os error N)"."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    found = re.search(r"I/O error: (.+?) \(os error \d+\)", reason)
    return UserError(f"{path}: could not be written ({found.group(1) if found else reason})")


def is_write_failure(exc: BaseException) -> bool:
    """True for an ``OSError`` caused by where it writes (see ``WRITE_ERRNOS``), not by a bug."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


@contextmanager
def _naming(path: str | Path) -> Iterator[None]:
    """Turn a write failure (``is_write_failure``) inside the block into the ``UserError`` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if is_write_failure(exc):
            raise write_failure(path, exc) from None
        raise


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into place.

    Creates missing parent folders. The rename is atomic on POSIX and Windows, so ``path`` holds either
    the old or the new content, and no temporary file is left behind, even when writing fails. A full disk,
    a read-only filesystem or a missing permission is a :class:`UserError` naming ``path``.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's pid in the name lets a later process tell a killed writer's leftover from a live one's
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are shareable results, not secrets
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, (json.dumps(data, indent=1) + "\n").encode())


def check_new_folder(out_dir: str | Path) -> None:
    """Refuse an output folder that exists and is not empty (a :class:`UserError` naming it); commands call
    this before any work, so a taken ``--out`` fails at once rather than after sampling."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: output folder exists and is not empty; choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# meddiff's temporaries: ".NAME.tmp-PID" (atomic_folder, save_checkpoint), ".NAME.old-PID" (a checkpoint
# being replaced), ".NAME.PID.RANDOM.tmp" (atomic_write)
_TEMPORARY = re.compile(r"^\..+(?:\.tmp-(?P<folder>\d+)|\.old-(?P<old>\d+)|\.(?P<file>\d+)\.[^.]+\.tmp)$")


def stale_temporary(path: Path) -> bool:
    """True when ``path`` is a temporary of a meddiff write whose process, on this machine, no longer runs
    (it was killed mid-write): nobody will finish or remove it."""
    found = _TEMPORARY.match(path.name)
    if not found:
        return False
    return not _alive(int(next(pid for pid in found.groups() if pid is not None)))


def remove_stale_temporaries(folder: Path, pattern: str = ".*", recursive: bool = False) -> None:
    """Delete the stale temporaries (``stale_temporary``) among the entries of ``folder`` matching
    ``pattern`` (with ``recursive``: below it too)."""
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    for path in sorted(found, reverse=True):  # children before their folders
        if stale_temporary(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextmanager
def atomic_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it is renamed to ``out_dir`` when the block ends without
    error and deleted otherwise, so a failure never leaves a half-written output folder. A full disk or a
    read-only filesystem is a :class:`UserError` naming ``out_dir``.

    ``out_dir`` must not exist or be an empty folder (see ``check_new_folder``).
    """
    out_dir = Path(out_dir)
    check_new_folder(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if out_dir.parent.is_dir():
        remove_stale_temporaries(out_dir.parent, f".{out_dir.name}.tmp-*")
    shutil.rmtree(tmp, ignore_errors=True)
    with _naming(out_dir):
        tmp.mkdir(parents=True)
    try:
        with _naming(out_dir):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except OSError as exc:  # another process filled out_dir meanwhile (ENOTEMPTY, EEXIST): keep its output
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            message = f"{out_dir}: another process wrote this output folder meanwhile; choose another --out"
            raise UserError(message) from None
        raise
