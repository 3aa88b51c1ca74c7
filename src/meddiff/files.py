"""Atomic file and folder writes: readers (a browser, a sync job, a data loader) never see half an output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meddiff.errors import UserError


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into place.

    Creates missing parent folders. The rename is atomic on POSIX and Windows, so ``path`` holds either
    the old or the new content, and no temporary file is left behind, even when writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


@contextmanager
def atomic_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it is renamed to ``out_dir`` when the block ends without
    error and deleted otherwise, so a failure never leaves a half-written output folder.

    ``out_dir`` must not exist or be an empty folder (see ``check_new_folder``).
    """
    out_dir = Path(out_dir)
    check_new_folder(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
