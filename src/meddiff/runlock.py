"""One writer per run folder: a process that trains into ``<run>/`` holds ``<run>/.lock`` until it is done.

A second ``meddiff train --out <run>`` (or a ``--resume`` of it) started meanwhile is refused in one line that
names the holder, instead of interleaving its checkpoints and logs with the first. The lock is an advisory
``flock`` on the file, which the kernel drops when its holder exits in any way (finished, crashed, killed), so a
lock file left behind by a dead process is stale by construction and the next writer simply takes it over; the
file's content (pid, host, start time) only serves the refusal message. ``RunDir.prepare`` takes the lock and
each task's ``fit`` is wrapped in :func:`releases_run_lock`.

Under ``accelerate launch`` only global rank 0 takes the lock: the other ranks of the same run are not rivals.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from meddiff.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent writers go undetected there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"

# resolved run folder -> file descriptor of its lock file, for the locks this process holds
_held: dict[Path, int] = {}

Fit = TypeVar("Fit", bound=Callable[..., Any])


def _key(root: str | Path) -> Path:
    return Path(root).resolve()


def _holder(lock_file: Path) -> str:
    """The refusal's description of the process holding ``lock_file``."""
    try:
        record = json.loads(lock_file.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"]))
        return f"pid {record['pid']} on {record['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


def acquire(root: str | Path) -> None:
    """Take the writer lock of the run folder ``root`` (created if missing) for this process, or raise a
    :class:`UserError` naming the process that holds it. Taking a lock this process holds already is a no-op."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    key = _key(root)
    if key in _held:
        return
    key.mkdir(parents=True, exist_ok=True)
    lock_file = key / LOCK_FILE
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{key}: another meddiff process is training into this run folder ({_holder(lock_file)}); "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError as exc:  # e.g. ENOLCK on a network filesystem without lock support
            warnings.warn(
                f"{key}: the filesystem refuses file locks ({exc.strerror}); a second process training into "
                "this folder would not be detected",
                stacklevel=2,
            )
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[key] = fd


def release(root: str | Path) -> None:
    """Give up the writer lock of ``root`` if this process holds it; the lock file stays, emptied (deleting
    it would let a waiting process lock an unlinked file while a third creates a new one)."""
    fd = _held.pop(_key(root), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def releases_run_lock(fit: Fit) -> Fit:
    """Decorate a task's ``fit(config, run_dir, ...)``: the lock its ``RunDir.prepare`` takes on ``run_dir`` is
    released when ``fit`` returns or raises (a lock held before the call, by an enclosing fit, is kept)."""

    @functools.wraps(fit)
    def locked_fit(config: Any, run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        held_before = _key(run_dir) in _held
        try:
            return fit(config, run_dir, *args, **kwargs)
        finally:
            if not held_before:
                release(run_dir)

    return locked_fit  # type: ignore[return-value]
