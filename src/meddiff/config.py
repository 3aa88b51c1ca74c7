"""Typed configs: dataclasses read from and written to YAML, with errors that name the bad key.

Each module owns the dataclass of its own settings (``UNetConfig`` in ``nets.unet``, ``TrainConfig`` in
``train.engine``, ...); this module only converts between plain dicts / YAML files and those dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from meddiff.errors import UserError
from meddiff.files import atomic_write

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "", base: T | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, checking every key and value type.

    ``where`` is the dotted prefix used in error messages (e.g. ``"model."``). Keys missing from ``data``
    take their values from ``base`` when given, else the dataclass defaults; a nested section starts from
    its enclosing field's default, so ``sampler: {steps: 10}`` keeps a task's own default sampler.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise UserError(f"'{where.rstrip('.') or 'config'}' must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]  # T is any dataclass
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown key '{where}{unknown[0]}' (known keys here: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp, factory = hints[name], fields[name].default_factory
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and factory is not dataclasses.MISSING:
            kwargs[name] = from_dict(tp, value, f"{where}{name}.", base=factory())
        else:
            kwargs[name] = _coerce(tp, value, f"{where}{name}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)  # type: ignore[type-var]
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid value in '{where.rstrip('.') or 'config'}': {exc}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else f"'{key}' has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"'{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"'{key}' must be a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"'{key}' must be a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(key_type, k, key): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"'{key}' must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise UserError(f"'{key}' must be a path, got {value!r}")
        return Path(value)
    raise TypeError(f"config type {tp!r} of '{key}' is not supported")


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) copy of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning a missing file or a syntax error into a ``UserError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}") from None


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass ``cls``; errors name the file and the key."""
    try:
        return from_dict(cls, read_yaml(path))
    except UserError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise UserError(f"{path}: {exc}") from None


def save_config(obj: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (keys in declaration order)."""
    atomic_write(path, yaml.safe_dump(to_dict(obj), sort_keys=False).encode())
