"""Datasets from folders of 2D image files: image+mask pairs, unlabelled images, registered modality pairs.

Every file is read, checked and fitted to the training size at construction (so bad input fails before
training starts) and held in memory at that size. Samples are named by their path relative to the folder,
without extension. Grey images give 1 channel and colour images 3; a folder mixing both gives 3
(set ``channels`` to force 1 or 3).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch

from meddiff.data.arrays import ArrayDataset
from meddiff.data.classmap import LabelSpec
from meddiff.data.fit import Fit, stack_common
from meddiff.data.imagefiles import Intensity, read_image, read_mask
from meddiff.data.validate import check_same_size, list_images, pair_files, raise_first, require_dir
from meddiff.errors import UserError

Unpaired = Literal["error", "skip"]
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 weights, as Pillow's RGB -> L


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C, H, W]`` with C in {1, 3} -> ``channels`` channels (grey replicated, colour -> luminance)."""
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1)
    return (image * _LUMA[:, None, None]).sum(0, keepdim=True)


def stack_images(images: Sequence[torch.Tensor], channels: int | None = None) -> torch.Tensor:
    """Fitted ``[C, h, w]`` images in [0, 1] -> ``[N, C, H, W]`` in [-1, 1] with one channel count."""
    channels = channels or max(image.shape[0] for image in images)
    return stack_common([to_channels(image, channels) for image in images]) * 2 - 1


def load_labelled(
    items: Iterable[tuple[str, Path, Path]],
    spec: LabelSpec,
    fit: Fit,
    *,
    channels: int | None = None,
    intensity: Intensity = "range",
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Read ``(name, image file, mask file)`` triples, checking sizes and class ids, into an ArrayDataset."""
    names, images, masks = [], [], []
    for name, image_path, mask_path in items:
        image = read_image(image_path, intensity)
        stored = read_mask(mask_path, spec.colours)
        check_same_size(image_path, image.shape[-2:], mask_path, stored.shape)
        names.append(name)
        images.append(fit.image(torch.from_numpy(image)))
        masks.append(fit.mask(torch.from_numpy(spec.apply(stored, mask_path))))
    masks_t = stack_common(masks)
    return ArrayDataset(
        stack_images(images, channels), masks_t, names, spec.names_for(masks_t), hflip, vflip=vflip, crop=fit.crop
    )


def read_split_file(path: Path, split: str, column: str = "split", name_column: str = "name") -> set[str]:
    """Names (file names without extension) whose ``column`` equals ``split`` in a CSV file with a header."""
    if not path.is_file():
        raise UserError(f"{path}: split file not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = rows[0].keys() if rows else []
    for needed in (name_column, column):
        if needed not in header:
            raise UserError(f"{path}: split file has no column '{needed}' (columns: {', '.join(header) or 'none'})")
    names = {row[name_column] for row in rows if row[column] == split}
    if not names:
        values = sorted({row[column] for row in rows})
        raise UserError(f"{path}: no row has {column} = '{split}' (values found: {', '.join(values)})")
    return names


def image_mask_folder(
    root: Path,
    spec: LabelSpec = LabelSpec(),
    fit: Fit = Fit(64),
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    unpaired: Unpaired = "error",
    split_file: Path | None = None,
    split: str | None = None,
    split_column: str = "split",
    channels: int | None = None,
    intensity: Intensity = "range",
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Images in ``root/images_dir`` with masks of the same name (any extension) in ``root/masks_dir``.

    ``unpaired="skip"`` drops images without mask and masks without image instead of failing.
    ``split_file`` + ``split``: keep only names whose ``split_column`` equals ``split`` in that CSV
    (column ``name`` = file name without extension), e.g. a patient-wise train/val/test split.
    """
    require_dir(root, "dataset folder")
    image_root = require_dir(root / images_dir, "images folder")
    mask_root = require_dir(root / masks_dir, "masks folder")
    pairs, problems = pair_files(list_images(image_root), image_root, list_images(mask_root), mask_root)
    if unpaired == "error":
        raise_first(problems, root)
    if split_file is not None:
        if split is None:
            raise UserError(f"'data.split' must name the split to select from {split_file}")
        wanted = read_split_file(split_file, split, split_column)
        missing = sorted(wanted - {key for key, _, _ in pairs})
        if missing:
            raise UserError(
                f"{split_file}: '{missing[0]}' ({len(missing)} name(s) of split '{split}') has no "
                f"image+mask pair in {root}"
            )
        pairs = [pair for pair in pairs if pair[0] in wanted]
    if not pairs:
        raise UserError(f"{root}: no image in {images_dir}/ has a mask of the same name in {masks_dir}/")
    return load_labelled(pairs, spec, fit, channels=channels, intensity=intensity, hflip=hflip, vflip=vflip)


def image_folder(
    root: Path,
    fit: Fit = Fit(64),
    *,
    recursive: bool = True,
    channels: int | None = None,
    intensity: Intensity = "range",
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Unlabelled images (png, jpg, jpeg, tif, tiff, bmp) in ``root``, searched recursively by default."""
    files = list_images(require_dir(root, "image folder"), recursive)
    images = [fit.image(torch.from_numpy(read_image(path, intensity, draft=fit.decode_side))) for path in files]
    names = [path.relative_to(root).with_suffix("").as_posix() for path in files]
    return ArrayDataset(stack_images(images, channels), None, names, None, hflip, vflip=vflip, crop=fit.crop)


def modality_dirs(root: Path, modalities: Sequence[str] | None = None) -> tuple[Path, Path]:
    """The two modality sub-folders: the named ones, or else the only two sub-folders (alphabetical)."""
    require_dir(root, "paired folder")
    if modalities is not None:
        if len(modalities) != 2:
            raise UserError(f"'data.modalities' must name two sub-folders of {root}, got {list(modalities)}")
        first, second = (require_dir(root / name, "modality folder") for name in modalities)
        return first, second
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(found) != 2:
        raise UserError(
            f"{root}: expected exactly two modality sub-folders, found {len(found)} "
            f"({', '.join(p.name for p in found) or 'none'}); name them in data.modalities"
        )
    return found[0], found[1]


def paired_folder(
    root: Path,
    fit: Fit = Fit(64),
    *,
    modalities: Sequence[str] | None = None,
    unpaired: Unpaired = "error",
    channels: int | None = None,
    intensity: Intensity = "range",
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Registered image pairs for fusion: ``root/A/x.png`` (``image``) with ``root/B/x.png`` (``image_b``).

    Each modality keeps its own channel count: grey ones (including RGB files with equal channels) get 1,
    colour ones (e.g. pseudo-colour PET/SPECT) keep RGB. Both images of a pair must have the same size.
    """
    dir_a, dir_b = modality_dirs(root, modalities)
    pairs, problems = pair_files(
        list_images(dir_a), dir_a, list_images(dir_b), dir_b, f"{dir_a.name} image", f"{dir_b.name} image"
    )
    if unpaired == "error":
        raise_first(problems, root)
    if not pairs:
        raise UserError(f"{root}: no file name occurs in both {dir_a.name}/ and {dir_b.name}/")
    names, images_a, images_b = [], [], []
    for name, path_a, path_b in pairs:
        a, b = read_image(path_a, intensity), read_image(path_b, intensity)
        check_same_size(path_a, a.shape[-2:], path_b, b.shape[-2:])
        names.append(name)
        images_a.append(fit.image(torch.from_numpy(a)))
        images_b.append(fit.image(torch.from_numpy(b)))
    return ArrayDataset(
        stack_images(images_a, channels),
        None,
        names,
        None,
        hflip,
        vflip=vflip,
        images_b=stack_images(images_b, channels),
        crop=fit.crop,
    )
