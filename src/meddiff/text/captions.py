"""Captions for training a text-conditioned model: from a captions file, or generated from the label map.

Template (``source: template``), one caption per image, built from what the data already knows::

    {prefix}[, {attribute}], {class phrase}, {class phrase}, ...

- ``prefix``: what the images are (``captions.prefix``; default "T1-weighted brain MRI, axial slice" for
  the embedded brain data, "medical image" otherwise).
- ``attribute``: the image-level label when the data has one (e.g. "axial level 3/8").
- one phrase per class except ``background``, in class-id order: ``no {class}`` when the class is absent,
  else ``{size} {class}`` and, with ``positions``, `` at {position}``. Size is the class's share of the
  labelled pixels: tiny < 1% <= small < 5% <= medium < 15% <= large < 35% <= very large. Position is the
  class's centroid in a 3 x 3 grid of the image: top left, top, top right, left, centre, right, bottom
  left, bottom, bottom right.

Example (a Cataract-1K frame): "cataract surgery microscope frame, small instrument at right".
Captions are computed on the augmented (e.g. flipped) label map, so positions stay true under flips.

Captions file (``source: file``): a CSV with a header and the columns ``name`` (the sample name: the
file name relative to the images folder, without extension) and ``caption``. Every sample needs one;
rows for other names are ignored (e.g. other splits).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from meddiff.data.labels import one_hot
from meddiff.errors import UserError

SIZE_WORDS = ((0.01, "tiny"), (0.05, "small"), (0.15, "medium"), (0.35, "large"), (float("inf"), "very large"))
POSITION_WORDS = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)
BRAIN_PREFIX = "T1-weighted brain MRI, axial slice"
DEFAULT_PREFIX = "medical image"


@dataclass
class CaptionConfig:
    """Where the training captions come from (the ``captions:`` section of a textgen config)."""

    source: Literal["template", "file"] = "template"
    file: Path | None = None  # CSV with columns name, caption (source: file)
    prefix: str | None = None  # what the images are; default from the data kind
    background: int | None = 0  # class id left out of the template (None: describe every class)
    positions: bool = True  # say where each class lies

    def __post_init__(self) -> None:
        if (self.source == "file") != (self.file is not None):
            raise ValueError("'file' is required with source 'file' and only used with it")


def size_word(fraction: float) -> str:
    """The template's word for a class covering ``fraction`` of the labelled pixels (> 0)."""
    return next(word for limit, word in SIZE_WORDS if fraction < limit)


def template_captions(
    masks: torch.Tensor | None,
    class_names: Sequence[str] | None,
    prefix: str,
    attributes: Sequence[str] | None = None,
    background: int | None = 0,
    positions: bool = True,
) -> list[str]:
    """Template captions (see the module docstring) for ``masks`` ``[B, H, W]`` (255 = ignore) and/or
    per-image ``attributes``; ``masks`` may be None for unlabelled images."""
    count = len(attributes) if masks is None else masks.shape[0]
    parts: list[list[str]] = [[prefix] + ([attributes[i]] if attributes is not None else []) for i in range(count)]
    if masks is None:
        return [", ".join(p) for p in parts]
    num_classes = len(class_names)
    encoded = one_hot(masks, num_classes)  # [B, K, H, W]
    counts = encoded.sum(dim=(2, 3))
    fractions = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    h, w = masks.shape[-2:]
    rows = (encoded.sum(dim=3) * torch.arange(h)).sum(dim=2) / counts.clamp(min=1)  # centroid row per class
    cols = (encoded.sum(dim=2) * torch.arange(w)).sum(dim=2) / counts.clamp(min=1)
    row_bin = (rows * 3 / h).long().clamp(0, 2)
    col_bin = (cols * 3 / w).long().clamp(0, 2)
    for i in range(count):
        for k, name in enumerate(class_names):
            if k == background:
                continue
            if counts[i, k] == 0:
                parts[i].append(f"no {name}")
                continue
            phrase = f"{size_word(float(fractions[i, k]))} {name}"
            if positions:
                phrase += f" at {POSITION_WORDS[int(row_bin[i, k])][int(col_bin[i, k])]}"
            parts[i].append(phrase)
    return [", ".join(p) for p in parts]


def read_captions_file(path: Path, names: Sequence[str]) -> dict[str, str]:
    """Captions of ``names`` from a CSV file with columns ``name`` and ``caption``."""
    if not path.is_file():
        raise UserError(f"{path}: captions file not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for column in ("name", "caption"):
            if column not in header:
                raise UserError(
                    f"{path}: captions file has no column '{column}' (columns: {', '.join(header) or 'none'})"
                )
        captions = {row["name"]: (row["caption"] or "").strip() for row in reader}
    missing = [n for n in names if not captions.get(n)]
    if missing:
        raise UserError(
            f"{path}: no caption for sample '{missing[0]}' ({len(missing)} of {len(names)} samples have none)"
        )
    return {n: captions[n] for n in names}


class Captioner:
    """Captions of training batches, from the template or a captions file (see the module docstring)."""

    def __init__(
        self,
        config: CaptionConfig,
        names: Sequence[str],
        class_names: Sequence[str] | None,
        attribute_names: Sequence[str] | None,
        data_kind: str,
    ):
        self.config = config
        self.prefix = config.prefix or (BRAIN_PREFIX if data_kind == "brain_mri" else DEFAULT_PREFIX)
        self.class_names, self.attribute_names = class_names, attribute_names
        self.by_name = read_captions_file(config.file, names) if config.source == "file" else None
        if self.by_name is None and not class_names and not attribute_names:
            raise UserError(
                "captions.source is 'template' but the data has neither masks nor attributes, so "
                "every caption would be the same; give a captions file (captions.source: file)"
            )
        if config.background is not None and class_names and not 0 <= config.background < len(class_names):
            raise UserError(f"captions.background {config.background} is not a class id (0..{len(class_names) - 1})")

    def __call__(self, batch: dict) -> list[str]:
        """Captions of a collated batch (uses ``name``, or ``mask`` and ``attribute``)."""
        if self.by_name is not None:
            return [self.by_name[n] for n in batch["name"]]
        attributes = None
        if self.attribute_names and "attribute" in batch:
            attributes = [self.attribute_names[int(a)] for a in batch["attribute"]]
        masks = batch.get("mask") if self.class_names else None
        return template_captions(
            masks, self.class_names, self.prefix, attributes, self.config.background, self.config.positions
        )
