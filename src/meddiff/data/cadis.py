"""CaDIS (Cataract Dataset for Image Segmentation; Grammatikopoulou et al., MedIA 2021).

Class ids, the three official task remappings and the video-wise split follow
``RViMLab/MICCAI2021_Cataract_semantic_segmentation`` ``utils/defaults.py`` (``classes_exp0``,
``class_remapping_exp1..3``, ``DATA_SPLITS`` train-val-test entry), which is the official CaDIS split:
train = 19 videos, val = videos 5, 7, 16, test = videos 2, 12, 22 (4670 frames of 25 videos in all).
``merged5`` is the 5-class merge used in the cataract literature: 0 pupil, 1 iris, 2 cornea, 3 skin,
4 every instrument (ids 7..35); tape, hand and eye retractors (1..3) are ignored (255).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

from meddiff.data.arrays import ArrayDataset
from meddiff.data.classmap import LabelSpec, remap_lut
from meddiff.data.fit import Fit, stack_common
from meddiff.data.folders import Unpaired, load_labelled
from meddiff.data.imagefiles import read_mask
from meddiff.data.validate import list_images, pair_files, raise_first, require_dir
from meddiff.errors import UserError

CADIS_CLASSES = (
    "Pupil",
    "Surgical Tape",
    "Hand",
    "Eye Retractors",
    "Iris",
    "Skin",
    "Cornea",
    "Hydrodissection Cannula",
    "Viscoelastic Cannula",
    "Capsulorhexis Cystotome",
    "Rycroft Cannula",
    "Bonn Forceps",
    "Primary Knife",
    "Phacoemulsifier Handpiece",
    "Lens Injector",
    "I/A Handpiece",
    "Secondary Knife",
    "Micromanipulator",
    "I/A Handpiece Handle",
    "Capsulorhexis Forceps",
    "Rycroft Cannula Handle",
    "Phacoemulsifier Handpiece Handle",
    "Capsulorhexis Cystotome Handle",
    "Secondary Knife Handle",
    "Lens Injector Handle",
    "Suture Needle",
    "Needle Holder",
    "Charleux Cannula",
    "Primary Knife Handle",
    "Vitrectomy Handpiece",
    "Mendez Ring",
    "Marker",
    "Hydrodissection Cannula Handle",
    "Troutman Forceps",
    "Cotton",
    "Iris Hooks",
)
INSTRUMENT_IDS = tuple(range(7, 36))

CadisTask = Literal["raw", "task1", "task2", "task3", "merged5"]
CadisSplit = Literal["train", "val", "test"]

_ANATOMY = {k: [k] for k in range(7)}  # pupil, tape, hand, eye retractors, iris, skin, cornea
_TASKS: dict[str, tuple[dict[int, list[int]], tuple[str, ...]]] = {
    "raw": ({k: [k] for k in range(36)}, CADIS_CLASSES),
    "task1": ({**_ANATOMY, 7: list(INSTRUMENT_IDS)}, (*CADIS_CLASSES[:7], "Instrument")),
    "task2": (
        {
            **_ANATOMY,
            7: [7, 8, 10, 27, 20, 32],
            8: [9, 22],
            9: [11, 33],
            10: [12, 28],
            11: [13, 21],
            12: [14, 24],
            13: [15, 18],
            14: [16, 23],
            15: [17],
            16: [19],
            255: [25, 26, 29, 30, 31, 34, 35],
        },
        (
            *CADIS_CLASSES[:7],
            "Cannula",
            "Cap. Cystotome",
            "Tissue Forceps",
            "Primary Knife",
            "Ph. Handpiece",
            "Lens Injector",
            "I/A Handpiece",
            "Secondary Knife",
            "Micromanipulator",
            "Cap. Forceps",
        ),
    ),
    "task3": ({**{k: [k] for k in range(25)}, 255: list(range(25, 36))}, CADIS_CLASSES[:25]),
    "merged5": (
        {0: [0], 1: [4], 2: [6], 3: [5], 4: list(INSTRUMENT_IDS)},
        ("Pupil", "Iris", "Cornea", "Skin", "Instrument"),
    ),
}

SPLITS: dict[str, tuple[int, ...]] = {
    "train": (1, 3, 4, 6, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 23, 24, 25),
    "val": (5, 7, 16),
    "test": (2, 12, 22),
}
_VIDEO = re.compile(r"Video0*(\d+)")


def cadis_remap(task: CadisTask) -> dict[int, list[int]]:
    """``{new_id: [CaDIS ids]}`` of a task (ids it does not list are ignored, 255)."""
    if task not in _TASKS:
        raise UserError(f"'data.cadis_task' must be one of {', '.join(_TASKS)}, got {task!r}")
    return {new: list(old) for new, old in _TASKS[task][0].items()}


def cadis_spec(task: CadisTask) -> LabelSpec:
    """LabelSpec mapping stored CaDIS ids (0..35; anything else is an error) to the ``task``'s classes."""
    remap = cadis_remap(task)
    return LabelSpec(_TASKS[task][1], remap_lut(remap), frozenset(range(36)), "the 36 CaDIS classes (ids 0..35)")


def video_of(name: str) -> int | None:
    """CaDIS video number in a folder or frame name (``Video01``, ``Video1_frame000090``), else None."""
    match = _VIDEO.search(name)
    return int(match.group(1)) if match else None


def _in_split(name: str, split: CadisSplit | None, root: Path) -> bool:
    if split is None:
        return True
    if split not in SPLITS:
        raise UserError(f"'data.split' must be one of {', '.join(SPLITS)} for CaDIS, got {split!r}")
    video = video_of(name)
    if video is None:
        raise UserError(f"{root / name}: no CaDIS video number in the name, so split '{split}' cannot be applied")
    return video in SPLITS[split]


def cadis_dataset(
    root: Path,
    task: CadisTask = "task1",
    split: CadisSplit | None = None,
    fit: Fit = Fit(64),
    *,
    unpaired: Unpaired = "error",
    channels: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """CaDIS frames with their label maps remapped to ``task``, optionally one video-wise ``split``.

    Layouts, tried in this order: the official ``root/VideoNN/Images/*.png`` + ``root/VideoNN/Labels/*.png``;
    a flat ``root/images/`` + ``root/masks/`` folder of CaDIS frames; otherwise ``root`` holds label maps
    only (see ``cadis_label_maps``).
    """
    require_dir(root, "CaDIS folder")
    videos = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Video\d+", p.name))
    if not videos and not (root / "images").is_dir():
        return cadis_label_maps(root, task, split, fit, hflip=hflip, vflip=vflip)
    if videos:
        folders = [(v / "Images", v / "Labels") for v in videos if _in_split(v.name, split, root)]
        if not folders:
            raise UserError(f"{root}: no Video folder of split '{split}' (videos {SPLITS.get(split or '')})")
    else:
        folders = [(root / "images", root / "masks")]
    pairs, problems = [], []
    for images, labels in folders:
        found, wrong = pair_files(
            list_images(require_dir(images, "images folder")),
            images,
            list_images(require_dir(labels, "labels folder")),
            labels,
            "frame",
            "label map",
        )
        pairs += [pair for pair in found if _in_split(pair[0], split, images)]
        problems += wrong
    if unpaired == "error":
        raise_first(problems, root)
    if not pairs:
        raise UserError(f"{root}: no CaDIS frame of split '{split}' found")
    return load_labelled(pairs, cadis_spec(task), fit, channels=channels, hflip=hflip, vflip=vflip)


def cadis_label_maps(
    folder: Path,
    task: CadisTask = "task1",
    split: CadisSplit | None = None,
    fit: Fit = Fit(64),
    *,
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """A bare folder of CaDIS label maps (no images, e.g. corrected relabelled masks) remapped to ``task``.

    Gives a masks-only dataset (``in_channels`` 0, samples without ``image``), e.g. to synthesise frames
    from label maps. RGB/RGBA label maps with equal channels (as CaDIS ships some) are read as ids.
    """
    spec = cadis_spec(task)
    files = [p for p in list_images(require_dir(folder, "label-map folder")) if _in_split(p.stem, split, folder)]
    if not files:
        raise UserError(f"{folder}: no label map of split '{split}' found")
    masks = [fit.mask(torch.from_numpy(spec.apply(read_mask(path), path))) for path in files]
    return ArrayDataset(
        None, stack_common(masks), [p.stem for p in files], spec.class_names, hflip, vflip=vflip, crop=fit.crop
    )
