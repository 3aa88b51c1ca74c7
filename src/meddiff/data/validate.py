"""Checks on the files of a dataset folder; every problem is one sentence naming the file.

Loaders call these while they read everything at construction and raise the first problem as a
``UserError`` (before any output is written); ``inspect_path`` calls the same checks and collects them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meddiff.data.imagefiles import IMAGE_EXTENSIONS, is_image_file
from meddiff.errors import UserError


def require_dir(folder: Path, what: str = "folder") -> Path:
    """``folder`` if it is a directory, else a UserError naming it."""
    if not folder.is_dir():
        raise UserError(f"{folder}: {what} not found" + (" (it is a file)" if folder.exists() else ""))
    return folder


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (hidden files and other extensions are skipped); none -> UserError."""
    require_dir(folder)
    candidates = sorted(folder.rglob("*") if recursive else folder.iterdir())  # rglob follows no symlinked folder
    dangling = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_symlink() and not p.exists()]
    if dangling:
        raise UserError(f"{dangling[0]}: symbolic link to nothing (its target is missing, or it links to itself)")
    files = [p for p in candidates if is_image_file(p)]
    if not files:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"{folder}: no image files found ({kinds}" + (", searched recursively)" if recursive else ")"))
    return files


def file_key(path: Path, root: Path) -> str:
    """Name used to match files across folders: path relative to ``root`` without its extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def pair_files(
    first: Sequence[Path],
    first_root: Path,
    second: Sequence[Path],
    second_root: Path,
    first_what: str = "image",
    second_what: str = "mask",
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Match two file lists by ``file_key``; returns ``(key, first, second)`` pairs and problem sentences
    (a file without partner, two files with one name)."""
    problems: list[str] = []
    tables = []
    for files, root in ((first, first_root), (second, second_root)):
        table: dict[str, Path] = {}
        for path in files:
            key = file_key(path, root)
            if key in table:
                problems.append(f"{path}: has the same name as {table[key]} (names must be unique without extension)")
            else:
                table[key] = path
        tables.append(table)
    a, b = tables
    problems += [
        f"{a[k]}: {first_what} has no {second_what} named '{k}.*' in {second_root}" for k in sorted(a.keys() - b.keys())
    ]
    problems += [
        f"{b[k]}: {second_what} has no {first_what} named '{k}.*' in {first_root}" for k in sorted(b.keys() - a.keys())
    ]
    return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys())], problems


def check_same_size(first: Path, first_hw: tuple[int, int], second: Path, second_hw: tuple[int, int]) -> None:
    """UserError naming ``second`` when its height x width differs from ``first``'s."""
    if tuple(first_hw) != tuple(second_hw):
        raise UserError(
            f"{second}: size {second_hw[1]}x{second_hw[0]} (WxH) differs from {first} ({first_hw[1]}x{first_hw[0]})"
        )


def raise_first(problems: Sequence[str], root: Path) -> None:
    """Raise the first problem as a UserError, saying how many more there are."""
    if problems:
        more = len(problems) - 1
        suffix = f" ({more} more problem(s); 'meddiff data inspect {root}' lists them all)" if more else ""
        raise UserError(problems[0] + suffix)
