"""Checkpoints that are safe to load and never half-written.

A checkpoint is a folder (in a run, ``checkpoints/step_NNNNNNN/``: see ``meddiff.rundir``) holding
``*.safetensors`` tensor groups (model, EMA, optimizer moments, RNG states) and ``state.json`` (everything
else: step, config, scalars). Every network meddiff trains is stored this way, auxiliary ones too. Nothing
is pickled, so loading a checkpoint cannot execute code. The folder is written under a hidden temporary
name and renamed into place, so a kill at any moment leaves either the complete new checkpoint or none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from meddiff.errors import UserError
from meddiff.files import is_write_failure, write_failure
from meddiff.migrations import migrate

STATE_FILE = "state.json"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Split a nested state (dicts, lists, tensors, scalars) into JSON data with tensor references and a
    flat ``tensors`` dict for safetensors. Inverse: ``unflatten_state``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"state keys under '{prefix}' must be str or int")
        return {
            "__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))] for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at '{prefix}' in a checkpoint")


def unflatten_state(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild what ``flatten_state`` split (dict keys keep their int/str type)."""
    if isinstance(data, dict) and "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if isinstance(data, dict) and "__dict__" in data:
        return {k: unflatten_state(v, tensors) for k, v in data["__dict__"]}
    if isinstance(data, list):
        return [unflatten_state(v, tensors) for v in data]
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: Path, tensor_groups: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Atomically write ``path/`` with one ``<group>.safetensors`` per group and ``state.json``.

    When writing fails because of the place written to (a full disk, a read-only filesystem: see
    ``meddiff.files.WRITE_ERRNOS``), the temporary folder is removed, nothing that existed is touched, and
    the error is a :class:`UserError` naming ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        _write_folder(tmp, tensor_groups, state)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(exc) or (isinstance(exc, SafetensorError) and "I/O error" in str(exc)):
            raise UserError(f"{write_failure(path, exc)}; earlier checkpoints are intact") from None
        raise
    if path.exists():  # re-saving the same step: move the old one aside first, then drop it
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write_folder(folder: Path, tensor_groups: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
    """Write the checkpoint's files into the new folder ``folder`` and flush them to the disk."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for group, tensors in tensor_groups.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / f"{group}.safetensors")
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    for f in folder.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint folder: ``({group: tensors}, state)`` in the current layout (older versions are
    migrated, ``meddiff.migrations``). Refuses anything that is not safetensors."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path}: not a meddiff checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{state_file}: checkpoint state is not valid JSON") from None
    groups = {}
    for file in sorted(path.glob("*.safetensors")):
        groups[file.stem] = load_tensors(file)
    migrate(groups, state)
    return groups, state


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Load one safetensors file; a pickle (``.pt``/``.ckpt``) or corrupt file is refused, never unpickled."""
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{file}: not a valid safetensors file ({exc}); meddiff does not load pickled "
            "checkpoints because unpickling can execute code"
        ) from None
