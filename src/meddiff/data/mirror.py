"""Flips that keep lateralised labels true.

A left-right flip mirrors the pixels; on a label map whose classes are sided ("right lung", "left lung",
"Hippocampus_L") it must also swap the ids of each pair, or the lung on the image's left is called "right" in
half of the views. A sided class recognised by its shape rather than its side (the right ventricle of a
short-axis cardiac slice) pairs with itself: flipped, it is still the right ventricle.

``Mirror`` holds the pairs (from ``data.mirror_pairs`` or a class map's ``mirror:`` key) and ``flip_mask`` is
the one place where meddiff flips a label map: dataset augmentation, the flipped views of ``segment fit`` and
the mask augmentation of ``synth run`` all call it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError

Pair = tuple[int, int]
# a side word at the start of a name token ("left lung", "LeftLung", "lung_left") or a lone side letter
# ("Hippocampus_L", "R kidney"); "bright" or "upright" do not match
_SIDED = re.compile(r"(?<![a-z])(left|right)|(?<![a-z])(l|r|lt|rt)(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class Mirror:
    """Class-id pairs swapped by a left-right flip (``left_right``) and by a top-bottom flip (``top_bottom``)."""

    left_right: tuple[Pair, ...] = ()
    top_bottom: tuple[Pair, ...] = ()

    def pairs(self, dim: int) -> tuple[Pair, ...]:
        """The pairs a flip of tensor dim ``dim`` swaps (-1: left-right, -2: top-bottom)."""
        return self.left_right if dim == -1 else self.top_bottom

    def swapped(self, dim: int) -> set[int]:
        """The class ids a flip of ``dim`` pairs (classes paired with themselves included)."""
        return {i for pair in self.pairs(dim) for i in pair}


NO_MIRROR = Mirror()


def flip_mask(mask: torch.Tensor, dim: int, mirror: Mirror = NO_MIRROR) -> torch.Tensor:
    """``mask`` (integer class ids, any leading dims) flipped along ``dim`` (-1 left-right, -2 top-bottom), with
    the ids of ``mirror``'s pairs for that flip swapped; 255 (ignore) and unpaired ids stay as they are."""
    if dim not in (-1, -2):
        raise ValueError(f"a label map flips along dim -1 (left-right) or -2 (top-bottom), got {dim}")
    flipped = mask.flip(dim)
    pairs = mirror.pairs(dim)
    if not pairs:
        return flipped
    lut = torch.arange(IGNORE_INDEX + 1, device=mask.device)
    for a, b in pairs:
        lut[a], lut[b] = b, a
    return lut[flipped.long()].to(mask.dtype)


def sided_classes(class_names: Sequence[str] | None) -> list[str]:
    """The class names that read as one side of the body (left/right, L/R)."""
    return [name for name in class_names or () if _SIDED.search(name)]


def resolve_pairs(pairs: Sequence[Sequence[str | int]], class_names: Sequence[str], where: str) -> tuple[Pair, ...]:
    """Pairs of class names (or ids) -> pairs of class ids, checked: classes of ``class_names``, none in two
    pairs. A class paired with itself keeps its id when flipped: a sided name for a structure known by its
    shape, not its side (ACDC's right ventricle). Errors name ``where`` (e.g. ``'data.mirror_pairs'``)."""
    index = {name: i for i, name in enumerate(class_names)}
    resolved, seen = [], set()
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise UserError(f"{where}[{k}] must name two classes, got {list(pair)}")
        ids = []
        for item in pair:
            found = item if isinstance(item, int) and 0 <= item < len(class_names) else index.get(str(item))
            if found is None:
                raise UserError(f"{where}[{k}]: '{item}' is not a class (classes: {', '.join(class_names)})")
            ids.append(found)
        a, b = ids
        if a in seen or b in seen:
            raise UserError(f"{where}[{k}]: each class may appear in one pair only")
        seen.update(ids)
        resolved.append((a, b))
    return tuple(resolved)


def check_flips(class_names: Sequence[str] | None, mirror: Mirror, hflip: bool, what: str, ways_out: str) -> None:
    """Refuse a left-right flip of label maps with sided classes that no mirror pair swaps.

    ``what`` names the flip in the message (e.g. ``'data.hflip'``), ``ways_out`` says how to declare the pairs
    or turn the flip off in the caller's own terms."""
    if not hflip:
        return
    paired = mirror.swapped(-1)
    unpaired = [name for name in sided_classes(class_names) if list(class_names or ()).index(name) not in paired]
    if unpaired:
        names = ", ".join(f"'{n}'" for n in unpaired)
        raise UserError(
            f"{what} mirrors the images left-right, but the classes {names} are sided and no mirror pair swaps "
            f"them, so flipped views would carry the wrong side's label: {ways_out}"
        )
