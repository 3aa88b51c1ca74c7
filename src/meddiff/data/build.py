"""``DataConfig`` (the ``data:`` section of a task config) and ``build_dataset``, which picks the loader.

Relative paths in a config (``root``, ``class_map``, ``split_file``, ``labels``) are resolved against the
current working directory, not the config file: the examples in ``configs/data/`` point to
``../shared/data/...`` and are meant to be used from the repository root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from meddiff.data.arrays import ArrayDataset
from meddiff.data.cadis import CadisTask, cadis_dataset
from meddiff.data.classmap import label_spec, load_class_map
from meddiff.data.fit import Fit, FitMode
from meddiff.data.folders import Unpaired, image_folder, image_mask_folder, paired_folder
from meddiff.data.imagefiles import Intensity
from meddiff.data.mirror import NO_MIRROR, Mirror, check_flips, resolve_pairs
from meddiff.data.samples import brain_mri
from meddiff.data.volumes import dicom_dataset, nifti_dataset
from meddiff.errors import UserError

DataKind = Literal["brain_mri", "image_mask_folder", "image_folder", "paired_folder", "cadis", "nifti", "dicom"]

_FOLDERS = {"image_mask_folder", "image_folder", "paired_folder", "cadis"}
_VOLUMES = {"nifti", "dicom"}
_LABELLED = {"image_mask_folder", "nifti"}
# The kinds each option applies to (options not listed apply to every kind); setting an option for
# another kind is an error rather than silently ignored.
_ONLY_FOR: dict[str, set[str]] = {
    "root": _FOLDERS | _VOLUMES,
    "fit": _FOLDERS | _VOLUMES | {"brain_mri"},
    "short_side": _FOLDERS | _VOLUMES | {"brain_mri"},
    "channels": _FOLDERS,
    "intensity": _FOLDERS - {"cadis"},
    "images_dir": {"image_mask_folder"},
    "masks_dir": {"image_mask_folder"},
    "unpaired": {"image_mask_folder", "paired_folder", "cadis"},
    "class_map": _LABELLED,
    "class_names": _LABELLED,
    "remap": _LABELLED,
    "split_file": {"image_mask_folder"},
    "split_column": {"image_mask_folder"},
    "split": {"image_mask_folder", "cadis"},
    "modalities": {"paired_folder"},
    "cadis_task": {"cadis"},
    "labels": {"nifti"},
    "axis": _VOLUMES,
    "window": _VOLUMES,
    "percentiles": _VOLUMES,
    "levels": {"brain_mri"},
}


@dataclass
class DataConfig:
    """Which dataset to load and how to shape its samples (see each loader for details).

    kind:         brain_mri (embedded demo) | image_mask_folder | image_folder | paired_folder | cadis |
                  nifti | dicom
    root:         dataset folder (NIfTI: a file or folder of volumes; DICOM: a series folder or file)
    size:         training size in pixels (square)
    fit:          resize | pad | center_crop | random_crop; short_side: shorter side before cropping
                  (default: size; the native size crops without resizing)
    channels:     1 or 3 to force grey / RGB (default: 1 if every image is grey, else 3)
    intensity:    range | percentile, for 16-bit and float images (8-bit is always divided by 255)
    hflip, vflip: random flips at training time
    rotate:       random rotations at training time, uniform within ± this many degrees (0: none)
    images_dir, masks_dir: sub-folders of an image_mask_folder (matched by file name without extension)
    unpaired:     error | skip, for images without mask / masks without image (or unpaired modalities)
    class_map:    YAML list of {name, id, colour} describing the stored mask ids (and colours)
    class_names:  names of the training classes 0..K-1
    remap:        {new_id: [stored ids]}; unlisted ids become 255 (ignore)
    split_file, split, split_column: keep rows of a CSV (column 'name' = file name without extension)
                  whose split_column equals split; for cadis, split is train | val | test (by video)
    modalities:   the two sub-folders of a paired_folder (default: the two found, alphabetical)
    cadis_task:   raw (36 classes) | task1 (8) | task2 (17) | task3 (25) | merged5 (5)
    labels:       NIfTI label volume (file) or folder of label volumes named like the images
    axis:         slicing axis (NIfTI RAS+: 0 sagittal, 1 coronal, 2 axial; DICOM: 2 = acquired slices)
    window:       [center, width] intensity window (e.g. CT [40, 400]); else percentiles [low, high]
    levels:       brain_mri only: label each slice with its axial level in this many bins (attributes)
    mirror_pairs: classes swapped by a left-right flip, as pairs of names or ids, e.g.
                  [[right lung, left lung], [right clavicle, left clavicle]]; a class map's ``mirror:`` key
                  declares them too. hflip refuses sided class names (left/right, L/R) left unpaired; a
                  sided class that keeps its id (ACDC's right ventricle) pairs with itself.
    mirror_pairs_vertical: classes swapped by a top-bottom flip (none by default)
    """

    kind: DataKind = "brain_mri"
    root: Path | None = None
    size: int = 64
    fit: FitMode = "resize"
    short_side: int | None = None
    channels: int | None = None
    intensity: Intensity = "range"
    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    images_dir: str = "images"
    masks_dir: str = "masks"
    unpaired: Unpaired = "error"
    class_map: Path | None = None
    class_names: list[str] | None = None
    remap: dict[int, list[int]] | None = None
    split_file: Path | None = None
    split: str | None = None
    split_column: str = "split"
    modalities: list[str] | None = None
    cadis_task: CadisTask = "task1"
    labels: Path | None = None
    axis: int = 2
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    levels: int = 0
    mirror_pairs: list[list[str | int]] | None = None
    mirror_pairs_vertical: list[list[str | int]] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"rotate must be in [0, 180] degrees, got {self.rotate}")
        for field in dataclasses.fields(self):
            kinds = _ONLY_FOR.get(field.name)
            if kinds and self.kind not in kinds and getattr(self, field.name) != field.default:
                raise ValueError(
                    f"'{field.name}' does not apply to kind '{self.kind}' (only to {', '.join(sorted(kinds))})"
                )
        if self.kind == "brain_mri" and self.fit not in ("resize", "random_crop"):
            raise ValueError(f"brain_mri slices are square: 'fit' must be resize or random_crop, got '{self.fit}'")
        if self.kind != "brain_mri" and self.root is None:
            raise ValueError(f"'root' is required for kind '{self.kind}'")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"'channels' must be 1 or 3, got {self.channels}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"'axis' must be 0, 1 or 2, got {self.axis}")
        if self.window is not None and (len(self.window) != 2 or self.window[1] <= 0):
            raise ValueError(f"'window' must be [center, width] with width > 0, got {list(self.window)}")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(
                f"'percentiles' must be [low, high] with 0 <= low < high <= 100, got {list(self.percentiles)}"
            )
        if self.split_file is not None and self.split is None:
            raise ValueError("'split' must name the split to select from 'split_file'")
        if self.kind == "image_mask_folder" and self.split is not None and self.split_file is None:
            raise ValueError("'split' needs a 'split_file' (CSV) for kind 'image_mask_folder'")
        Fit(self.size, self.fit, self.short_side)  # checks size and short_side


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch single-threaded inside the block and restore the thread count after.

    Reading a dataset runs thousands of tiny per-image tensor ops, where intra-op threads only add
    synchronisation: on a busy 2-core machine that made loading 7x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_dataset(config: DataConfig) -> ArrayDataset:
    """The dataset a ``DataConfig`` describes, fully read and validated (bad input raises a UserError).

    Every dataset yields ``Sample`` dicts and exposes ``in_channels``, ``num_classes`` (0 if unlabelled)
    and ``class_names`` (None if unlabelled).
    """
    with single_threaded():
        dataset = _build(config)
    dataset.mirror = data_mirror(config, dataset.class_names)
    dataset.rotate = config.rotate
    check_flips(
        dataset.class_names,
        dataset.mirror,
        config.hflip,
        "'data.hflip'",
        "declare the pairs in data.mirror_pairs (e.g. [[right lung, left lung]]; a class that keeps its id when "
        "mirrored, like a heart's right ventricle, pairs with itself) or with a class map's 'mirror:' key, or set "
        "data.hflip: false",
    )
    return dataset


def data_mirror(config: DataConfig, class_names: Sequence[str] | None) -> Mirror:
    """The mirror pairs of ``config`` (``mirror_pairs``, ``mirror_pairs_vertical`` and the class map's
    ``mirror:`` entries) as class ids of ``class_names``."""
    from_map = []
    if config.class_map is not None:
        for entry in load_class_map(config.class_map):
            pair = {entry.name, entry.mirror} if entry.mirror else None
            if pair and pair not in [set(p) for p in from_map]:
                from_map.append([entry.name, entry.mirror])
    left_right = [*from_map, *(config.mirror_pairs or [])]
    top_bottom = config.mirror_pairs_vertical or []
    if not (left_right or top_bottom):
        return NO_MIRROR
    if not class_names:
        raise UserError("'data.mirror_pairs' names classes, but this dataset has no label maps")
    return Mirror(
        resolve_pairs(left_right, class_names, "'data.mirror_pairs'"),
        resolve_pairs(top_bottom, class_names, "'data.mirror_pairs_vertical'"),
    )


def _build(config: DataConfig) -> ArrayDataset:
    c = config
    fit = Fit(c.size, c.fit, c.short_side)
    flips = {"hflip": c.hflip, "vflip": c.vflip}
    if c.kind == "brain_mri":  # random_crop: size-px windows of slices at short_side px
        dataset = brain_mri(c.short_side or c.size, hflip=c.hflip, levels=c.levels)
        dataset.vflip, dataset.crop = c.vflip, fit.crop
        return dataset
    assert c.root is not None  # checked by DataConfig
    if c.kind == "image_mask_folder":
        return image_mask_folder(
            c.root,
            label_spec(c.class_map, c.remap, c.class_names),
            fit,
            images_dir=c.images_dir,
            masks_dir=c.masks_dir,
            unpaired=c.unpaired,
            split_file=c.split_file,
            split=c.split,
            split_column=c.split_column,
            channels=c.channels,
            intensity=c.intensity,
            **flips,
        )
    if c.kind == "image_folder":
        return image_folder(c.root, fit, channels=c.channels, intensity=c.intensity, **flips)
    if c.kind == "paired_folder":
        return paired_folder(
            c.root,
            fit,
            modalities=c.modalities,
            unpaired=c.unpaired,
            channels=c.channels,
            intensity=c.intensity,
            **flips,
        )
    if c.kind == "cadis":
        return cadis_dataset(c.root, c.cadis_task, c.split, fit, unpaired=c.unpaired, channels=c.channels, **flips)
    if c.kind == "nifti":
        return nifti_dataset(
            c.root,
            c.labels,
            fit,
            axis=c.axis,
            window_cw=c.window,
            percentiles=c.percentiles,
            spec=label_spec(c.class_map, c.remap, c.class_names),
            **flips,
        )
    return dicom_dataset(c.root, fit, axis=c.axis, window_cw=c.window, percentiles=c.percentiles, **flips)
