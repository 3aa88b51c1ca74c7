"""Label maps to synthesise images from: mask folders (including CaDIS maps remapped to a task) and
label-map augmentation (flips, rotations, elastic deformation, pasting instruments from another mask).

A ``MaskSet`` holds class-id masks at the synthesis size with one name and one origin per mask. Masks a
joint generator sampled are read the same way from the folder ``meddiff generate run`` writes (its
``manifest.json`` names the classes, which must be the synthesis model's).

Augmentation is a pure function of ``(seed, index)``: the i-th augmented mask is the same whatever else is
drawn, so every synthesised pair can be reproduced from its manifest entry. scipy's ``ndimage`` does the
resampling (nearest neighbour, so class ids stay valid); pixels a rotation brings in from outside the map
are 255 (ignore), as padding is elsewhere in meddiff, because they are not data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from meddiff.data.arrays import rotate_mask
from meddiff.data.cadis import CadisTask, cadis_label_maps
from meddiff.data.classmap import LabelSpec
from meddiff.data.fit import Fit, stack_common
from meddiff.data.imagefiles import read_mask
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.mirror import NO_MIRROR, Mirror, check_flips, flip_mask
from meddiff.data.validate import file_key, list_images, require_dir
from meddiff.errors import UserError

MANIFEST = "manifest.json"


@dataclass
class MaskSet:
    """Class-id masks ``[N, H, W]`` (uint8, 255 = ignore) with a name and an origin (file or note) each."""

    masks: torch.Tensor
    names: list[str]
    origins: list[str]
    class_names: tuple[str, ...]

    def __post_init__(self):
        if not (self.masks.shape[0] == len(self.names) == len(self.origins)):
            raise ValueError("one name and one origin per mask")

    def __len__(self) -> int:
        return len(self.names)


def masks_dir(folder: Path) -> Path:
    """The folder holding the mask files: ``folder/masks`` when it exists (a dataset or generated folder),
    else ``folder`` itself."""
    folder = require_dir(Path(folder), "masks folder")
    return folder / "masks" if (folder / "masks").is_dir() else folder


def generated_class_names(folder: Path) -> tuple[str, ...] | None:
    """Class names in the ``manifest.json`` of a folder meddiff generated (None for other folders)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["model"]["class_names"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not a manifest written by meddiff (no model.class_names)") from None
    return tuple(names) if names else None


def read_mask_folder(folder: Path, spec: LabelSpec, class_names: Sequence[str], fit: Fit) -> MaskSet:
    """Masks of ``folder`` (or ``folder/masks``) read through ``spec`` (the stored-id -> class-id mapping
    of the model's training data) and fitted to ``fit``; any class id outside the model's classes is a
    ``UserError`` naming the file. A folder meddiff generated holds class ids already and must name the
    same classes as the model."""
    folder = Path(folder)
    generated = generated_class_names(folder)
    if generated is not None:
        if tuple(generated) != tuple(class_names):
            raise UserError(
                f"{folder / MANIFEST}: masks of classes {list(generated)}, but the model was trained "
                f"on {list(class_names)}"
            )
        spec = LabelSpec(tuple(class_names), source=f"the {len(class_names)} classes of the model")
    root = masks_dir(folder)
    files = list_images(root, recursive=True)
    masks = [fit.mask(torch.from_numpy(spec.apply(read_mask(path, spec.colours), path))) for path in files]
    for path, mask in zip(files, masks, strict=True):
        check_class_ids(mask, len(class_names), path)
    names = [file_key(path, root) for path in files]
    return MaskSet(stack_common(masks), names, [str(path) for path in files], tuple(class_names))


def read_cadis_maps(folder: Path, task: CadisTask, class_names: Sequence[str], fit: Fit) -> MaskSet:
    """Raw CaDIS label maps (ids 0..35) in ``folder`` remapped to ``task``, whose classes must be the model's."""
    root = masks_dir(folder)
    dataset = cadis_label_maps(root, task, fit=fit)
    if tuple(dataset.class_names) != tuple(class_names):
        raise UserError(
            f"{root}: CaDIS {task} has classes {dataset.class_names}, but the model was trained on {list(class_names)}"
        )
    return MaskSet(
        dataset.masks, dataset.names, [f"{root / name} (CaDIS {task})" for name in dataset.names], tuple(class_names)
    )


def check_class_ids(mask: torch.Tensor, num_classes: int, where: Path | str) -> None:
    """``UserError`` naming ``where`` when ``mask`` holds an id that is neither a class nor 255."""
    bad = mask[(mask.long() >= num_classes) & (mask.long() != IGNORE_INDEX)]
    if bad.numel():
        raise UserError(
            f"{where}: mask contains class id {int(bad.min())}, but the model has {num_classes} "
            f"classes (0..{num_classes - 1}; 255 = ignore)"
        )


@dataclass
class MaskAugment:
    """Random label-map changes, each drawn independently per augmented mask.

    hflip, vflip:   flip with probability 0.5 (swapping the classes of the mirror pairs, ``flip_mask``)
    mirror_pairs:   left-right class pairs (names or ids) besides those of the model's training data
    rotate:         rotate by an angle uniform in [-rotate, rotate] degrees (0: off)
    elastic:        elastic deformation (Simard et al. 2003): a random displacement field smoothed with a
                    Gaussian of ``elastic_sigma`` pixels, scaled so its largest shift is ``elastic`` pixels
    paste_classes:  class ids (e.g. instruments) copied, with their location, from another mask of the set
                    that contains them, on top of the mask (before the geometric changes)
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 6.0
    paste_classes: list[int] = field(default_factory=list)
    mirror_pairs: list[list[str | int]] = field(default_factory=list)

    def __post_init__(self):
        if self.rotate < 0 or self.elastic < 0 or self.elastic_sigma <= 0:
            raise ValueError("rotate and elastic must be >= 0 and elastic_sigma > 0")

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.vflip or self.rotate or self.elastic or self.paste_classes)


def augment_masks(
    masks: MaskSet, indices: Sequence[int], config: MaskAugment, seed: int, mirror: Mirror = NO_MIRROR
) -> tuple[torch.Tensor, list[dict]]:
    """Augmented copies of ``masks.masks[indices]``: copy ``j`` is drawn with ``(seed, j)``; flips swap
    ``mirror``'s class pairs. Returns the masks ``[len(indices), H, W]`` and one record per copy of what was
    done (for the export manifest). Sided classes that no pair swaps refuse ``hflip``."""
    check_flips(
        masks.class_names,
        mirror,
        config.hflip,
        "--hflip",
        "declare them with --mirror-pair (e.g. --mirror-pair 'right lung,left lung') or in the training data's "
        "data.mirror_pairs, or drop --hflip",
    )
    stack = masks.masks.numpy()
    donors = _donors(stack, config.paste_classes, len(masks.class_names)) if config.paste_classes else None
    out, records = [], []
    for j, index in enumerate(indices):
        rng = np.random.default_rng([seed, j])
        mask, record = stack[index], {}
        choices = donors[donors != index] if donors is not None else np.empty(0)
        if choices.size:  # a mask that is the only one holding the classes gets nothing pasted
            donor = int(rng.choice(choices))
            mask = paste(mask, stack[donor], config.paste_classes)
            record["paste_from"] = masks.names[donor]
        mask, geometry = _geometry(mask, config, rng, mirror)
        out.append(torch.from_numpy(np.ascontiguousarray(mask)))
        records.append({**record, **geometry})
    return torch.stack(out), records


def _donors(stack: np.ndarray, classes: Sequence[int], num_classes: int) -> np.ndarray:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"paste class {bad[0]} is not a class of the model (0..{num_classes - 1})")
    has = np.isin(stack, np.asarray(classes)).any(axis=(1, 2))
    if not has.any():
        raise UserError(f"no mask contains class(es) {list(classes)} to paste")
    return np.flatnonzero(has)


def paste(mask: np.ndarray, donor: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``mask`` with the pixels of ``classes`` in ``donor`` (same size) copied on top."""
    region = np.isin(donor, np.asarray(classes))
    return np.where(region, donor, mask).astype(mask.dtype)


def _geometry(
    mask: np.ndarray, config: MaskAugment, rng: np.random.Generator, mirror: Mirror
) -> tuple[np.ndarray, dict]:
    record: dict = {}
    for dim, on, key in ((-1, config.hflip, "hflip"), (-2, config.vflip, "vflip")):
        if on and rng.random() < 0.5:
            mask, record[key] = flip_mask(torch.from_numpy(np.ascontiguousarray(mask)), dim, mirror).numpy(), True
    if config.rotate:
        angle = float(rng.uniform(-config.rotate, config.rotate))
        mask = rotate_mask(mask, angle)
        record["rotate"] = round(angle, 2)
    if config.elastic:
        mask = elastic(mask, config.elastic, config.elastic_sigma, rng)
        record["elastic"] = config.elastic
    return mask, record


def elastic(mask: np.ndarray, max_shift: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Warp a class-id map by a smooth random displacement field whose largest shift is ``max_shift`` px."""
    h, w = mask.shape
    field = np.stack([ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect") for _ in range(2)])
    field *= max_shift / max(np.abs(field).max(), 1e-12)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows + field[0], cols + field[1]])
    return ndimage.map_coordinates(mask, coords, order=0, mode="nearest").astype(mask.dtype)
