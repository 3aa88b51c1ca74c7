"""Reading what a run folder holds: the training log, metrics, PNGs by step. Problems raise ``UserError``
naming the file."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meddiff.errors import UserError


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One dict per non-blank line of a JSON-lines log.

    An unparsable *last* line is dropped, since the trainer may be halfway through writing it; a bad
    line anywhere else raises ``UserError`` naming the file and line.
    """
    path = Path(path)
    lines = [(number, line) for number, line in enumerate(_read_text(path).splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error raises ``UserError`` naming it."""
    path = Path(path)
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); other
    values, lists included, are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def step_of(path: Path) -> int | None:
    """The step a file or folder name refers to: its last number (``step_000500.png`` -> 500)."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def by_step(paths: list[Path], newest_first: bool = True) -> list[Path]:
    """Order paths by the step in their name, then by modification time (names without a number first)."""

    def key(path: Path) -> tuple[int, float]:
        step = step_of(path)
        return (-1 if step is None else step, path.stat().st_mtime)

    return sorted(paths, key=key, reverse=newest_first)


def pngs(folder: Path) -> list[Path]:
    """PNG files directly in ``folder`` (none if it is missing), sorted by name."""
    return sorted(p for p in folder.glob("*.png") if p.is_file()) if folder.is_dir() else []
