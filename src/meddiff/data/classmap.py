"""From stored mask values to training class ids: class-map YAML files, remapping and id validation.

A class map describes how masks are *stored*: a YAML list of ``{name, id, colour}`` entries, e.g.::

    - {name: background, id: 0, colour: [0, 0, 0]}
    - {name: instrument, id: 1, colour: [255, 0, 0]}

``colour`` is only needed for RGB colour-coded masks. ``mirror`` names the class a left-right flip turns a
sided class into (``{name: right lung, id: 1, mirror: left lung}``; itself for a class that keeps its id,
see ``meddiff.data.mirror``).

A remap (``new_id: [old ids]``) then merges stored ids
into training classes; stored ids it does not list become 255 (ignore), and ``255: [...]`` ignores ids
explicitly. Binary masks stored as {0, 255} need a remap, because 255 means "ignore" by default: ISBI-EM
membranes (0 = membrane, 255 = cell interior) become ``{0: [255], 1: [0]}`` (1 = membrane).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from meddiff.config import from_dict, read_yaml
from meddiff.data.imagefiles import Colour
from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError


@dataclass(frozen=True)
class ClassEntry:
    """One class of a class map: its name, stored id, (for colour-coded masks) RGB colour and (for a sided
    class) the name of its mirror class."""

    name: str
    id: int
    colour: tuple[int, int, int] | None = None
    mirror: str | None = None


def load_class_map(path: Path) -> list[ClassEntry]:
    """Read and check a class-map YAML file (unique ids in 0..255, unique 3-value colours)."""
    data = read_yaml(path)
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: a class map must be a non-empty list of {{name, id, colour}} entries")
    try:
        entries = [from_dict(ClassEntry, item, f"[{i}].") for i, item in enumerate(data)]
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    ids, colours = [e.id for e in entries], [e.colour for e in entries if e.colour is not None]
    for i, entry in enumerate(entries):
        if not 0 <= entry.id <= IGNORE_INDEX:
            raise UserError(f"{path}: '[{i}].id' must be in 0..255, got {entry.id}")
        if entry.colour is not None and (len(entry.colour) != 3 or not all(0 <= c <= 255 for c in entry.colour)):
            raise UserError(f"{path}: '[{i}].colour' must be three values in 0..255, got {list(entry.colour)}")
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: class id {_first_duplicate(ids)} is listed twice")
    names = {e.name for e in entries}
    for i, entry in enumerate(entries):
        if entry.mirror is not None and entry.mirror not in names:
            raise UserError(f"{path}: '[{i}].mirror' must name a class of the map, got '{entry.mirror}'")
    if len(set(colours)) != len(colours):
        raise UserError(f"{path}: colour {list(_first_duplicate(colours))} is listed twice")
    return entries


def _first_duplicate(values: Sequence) -> object:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


@dataclass(frozen=True)
class LabelSpec:
    """How stored mask values become training class ids (uint8, 255 = ignore).

    ``lut``: stored id -> class id for every possible stored id (None = keep ids); ``allowed``: stored ids a
    mask may contain (None = any), named by ``source`` in errors; ``class_names``: None means "infer from the
    data" (max id + 1 classes); ``colours``: colour -> stored id for RGB colour-coded masks.
    """

    class_names: tuple[str, ...] | None = None
    lut: np.ndarray | None = None
    allowed: frozenset[int] | None = None
    source: str = ""
    colours: Mapping[Colour, int] | None = None

    def apply(self, stored: np.ndarray, path: Path) -> np.ndarray:
        """Check the ids of one stored mask and map them to class ids; errors name ``path``."""
        if int(stored.max()) > 65535:
            raise UserError(f"{path}: mask contains class id {int(stored.max())}; ids must be below 65536")
        present = np.flatnonzero(np.bincount(stored.ravel()))
        if self.allowed is not None:
            bad = [int(i) for i in present if int(i) not in self.allowed and i != IGNORE_INDEX]
            if bad:
                raise UserError(f"{path}: mask contains class id(s) {_short(bad)} that are not in {self.source}")
        if self.lut is not None:
            if present[-1] >= len(self.lut):  # stored ids beyond any remapped id are unmapped -> ignore
                stored = np.where(stored < len(self.lut), stored, IGNORE_INDEX)
            return self.lut[stored]
        if present[-1] > IGNORE_INDEX:
            raise UserError(
                f"{path}: mask contains class id {int(present[-1])} > 255; map it to a smaller id with data.remap"
            )
        if self.class_names is not None:
            bad = [int(i) for i in present if len(self.class_names) <= i < IGNORE_INDEX]
            if bad:
                raise UserError(
                    f"{path}: mask contains class id(s) {_short(bad)} but only "
                    f"{len(self.class_names)} classes are named in {self.source}"
                )
        return stored.astype(np.uint8)

    def names_for(self, masks: torch.Tensor) -> tuple[str, ...]:
        """The class names, or ``class 0`` .. ``class K-1`` up to the largest id in ``masks`` if none were given."""
        if self.class_names is not None:
            return self.class_names
        found = masks[masks != IGNORE_INDEX]
        return tuple(f"class {k}" for k in range(int(found.max()) + 1 if found.numel() else 1))


def _short(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")


def remap_lut(remap: Mapping[int, Sequence[int]], where: str = "data.remap") -> np.ndarray:
    """``{new_id: [old ids]}`` -> uint8 lookup table over every old id (unlisted ids -> 255).

    New ids other than 255 must be exactly 0..K-1 and no old id may be listed twice.
    """
    size = max([IGNORE_INDEX, *(old for olds in remap.values() for old in olds)]) + 1
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    seen: set[int] = set()
    for new, olds in remap.items():
        if not 0 <= new <= IGNORE_INDEX:
            raise UserError(f"'{where}': new class id {new} must be in 0..254, or 255 for ignore")
        for old in olds:
            if old < 0 or old in seen:
                raise UserError(f"'{where}': stored id {old} is " + ("negative" if old < 0 else "listed twice"))
            seen.add(old)
            lut[old] = new
    targets = sorted(set(remap) - {IGNORE_INDEX})
    if targets != list(range(len(targets))):
        missing = sorted(set(range(max(targets, default=-1) + 1)) - set(targets))
        raise UserError(
            f"'{where}': new class ids must be 0..{len(targets) - 1} without gaps, but {missing[0]} is missing"
        )
    return lut


def class_map_spec(path: Path, entries: Sequence[ClassEntry] | None = None) -> LabelSpec:
    """A LabelSpec that decodes a class map's colours and rejects ids it does not list, keeping ids as stored."""
    entries = load_class_map(path) if entries is None else entries
    colours = {e.colour: e.id for e in entries if e.colour is not None} or None
    return LabelSpec(None, None, frozenset(e.id for e in entries), f"the class map {path}", colours)


def label_spec(
    class_map: Path | None = None,
    remap: Mapping[int, Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelSpec:
    """The ``LabelSpec`` for a folder of masks from the optional class map, remap and class names."""
    entries = load_class_map(class_map) if class_map is not None else []
    base = class_map_spec(class_map, entries) if class_map is not None else LabelSpec()
    by_id = {e.id: e.name for e in entries}
    if remap:
        count = int(max((n for n in remap if n != IGNORE_INDEX), default=-1)) + 1
        if class_names is not None and len(class_names) != count:
            raise UserError(f"'data.class_names' has {len(class_names)} names but 'data.remap' makes {count} classes")
        names = class_names or [
            "+".join(by_id.get(old, str(old)) for old in remap[k]) if by_id else f"class {k}" for k in range(count)
        ]
        return replace(base, class_names=tuple(names), lut=remap_lut(remap))
    if entries:
        classes = sorted(set(by_id) - {IGNORE_INDEX})
        if classes != list(range(len(classes))):
            raise UserError(
                f"{class_map}: class ids must be 0..K-1 without gaps (use data.remap to merge or "
                f"renumber), got {classes}"
            )
        if class_names is not None and len(class_names) != len(classes):
            raise UserError(
                f"'data.class_names' has {len(class_names)} names but {class_map} has {len(classes)} classes"
            )
        return replace(base, class_names=tuple(class_names or [by_id[k] for k in classes]))
    if class_names is not None:
        return LabelSpec(tuple(class_names), source="data.class_names")
    return base
