"""The broken-input corpus: variants of real files, each in a dataset folder of its own beside good files.

Every case is built from real content (the embedded MNI152 brain slices, pydicom's CT series, a NIfTI volume
of the brain) and then damaged in one way. A case knows the file a clear refusal must name and the commands
that read it; ``tests/robustness/test_corpus.py`` runs them and ``benchmarks/faults.py`` tabulates them.
Valid but unusual inputs (16-bit, palette, opaque RGBA, 1x1) are cases too: they must be read, not refused.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import struct
import typing
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import yaml
from PIL import Image
from pydicom.data import get_testdata_file

CLASSES = ["background", "other brain tissue", "grey matter", "white matter"]
GOOD = 3  # good image+mask pairs beside the broken file


@dataclass
class Case:
    """One damaged input: ``build(root)`` writes it and returns the path a refusal must name (``None`` for
    a valid input that must be read); ``commands`` are the command lines that read it (``{root}`` and
    ``{out}`` are filled in), ``run_commands`` those that also need a trained run."""

    name: str
    kind: str  # image, mask, volume, config, folder
    build: Callable[[Path], Path | None]
    commands: list[list[str]] = field(default_factory=list)
    # commands that read the case with a trained run: {segment_run} (segment fit), {synth_run} (synthesize)
    run_commands: list[list[str]] = field(default_factory=list)


# -- real content --------------------------------------------------------------------------------------------
@functools.cache
def _brain_pairs(count: int = GOOD + 1) -> list[tuple[np.ndarray, np.ndarray]]:
    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig, build_dataset

    brain = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    picks = np.linspace(40, 100, count).round().astype(int)
    return [
        (((brain.images[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8), brain.masks[i].numpy().astype(np.uint8))
        for i in picks
    ]


def _pair_folder(root: Path) -> tuple[Path, Path]:
    """``root/images`` and ``root/masks`` with GOOD real pairs; returns the paths of the pair to damage."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(_brain_pairs()[:GOOD]):
        Image.fromarray(image).save(root / "images" / f"slice{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"slice{i}.png")
    image, mask = _brain_pairs()[GOOD]
    Image.fromarray(mask).save(root / "masks" / "bad.png")
    Image.fromarray(image).save(root / "images" / "bad.png")
    return root / "images" / "bad.png", root / "masks" / "bad.png"


def _fuse_copy(root: Path) -> None:
    """``root/a`` = the images, ``root/b`` = good copies of them, for ``fuse run``."""
    (root / "a").symlink_to("images", target_is_directory=True)
    (root / "b").mkdir()
    for i, (image, _) in enumerate(_brain_pairs()[:GOOD]):
        Image.fromarray(255 - image).save(root / "b" / f"slice{i}.png")
    Image.fromarray(255 - _brain_pairs()[GOOD][0]).save(root / "b" / "bad.png")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# -- image cases ---------------------------------------------------------------------------------------------
def _image_case(damage: Callable[[Path], Path | None], rename: str | None = None) -> Callable[[Path], Path | None]:
    def build(root: Path) -> Path | None:
        image, _ = _pair_folder(root)
        _fuse_copy(root)
        refused = damage(image)
        if rename:  # the damaged file keeps its name stem, so it still pairs with its mask
            target = image.with_suffix(rename)
            image.rename(target)
            return target
        return refused

    return build


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _nifti_bytes(path: Path) -> Path:
    path.write_bytes(gzip.compress(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes()))
    return path


def _garbage_body(path: Path) -> Path:
    header = path.read_bytes()[:33]  # signature + IHDR: a valid start
    path.write_bytes(header + np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return path


def _nan_float(path: Path) -> Path:
    values = _brain_pairs()[GOOD][0].astype(np.float32)
    values[4:8, 4:8] = np.nan
    values[10, 10] = np.inf
    path.unlink()
    Image.fromarray(values, mode="F").save(path.with_suffix(".tif"))
    return path.with_suffix(".tif")


def _declared_huge(path: Path) -> Path:
    """A PNG whose header declares 20000 x 20000 pixels over a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def _rgba_transparent(path: Path) -> Path:
    rgba = np.stack([_brain_pairs()[GOOD][0]] * 3 + [np.full_like(_brain_pairs()[GOOD][0], 255)], axis=-1)
    rgba[:8, :8, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def _valid(convert: Callable[[np.ndarray], Image.Image]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        convert(_brain_pairs()[GOOD][0]).save(path)

    return write


def _one_pixel(root: Path) -> None:
    image, mask = _pair_folder(root)
    _fuse_copy(root)
    for path in (image, mask, root / "b" / "bad.png"):
        Image.open(path).crop((0, 0, 1, 1)).save(path)


IMAGE_COMMANDS = [
    ["data", "inspect", "{root}"],
    ["train", "{root}/config.yaml", "--out", "{out}"],
    ["fuse", "run", "max", "--a", "{root}/a", "--b", "{root}/b", "--out", "{out}"],
]
MASK_COMMANDS = IMAGE_COMMANDS[:2]
PREDICT = [["segment", "predict", "{segment_run}", "--images", "{root}/images", "--out", "{out}"]]
SYNTH = [["synth", "run", "{synth_run}", "--masks", "{root}/masks", "--out", "{out}"]]


# -- mask cases ----------------------------------------------------------------------------------------------
def _mask_case(damage: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        _, mask = _pair_folder(root)
        _fuse_copy(root)
        return damage(mask)

    return build


def _id_beyond_classes(path: Path) -> Path:
    mask = _brain_pairs()[GOOD][1].copy()
    mask[:4, :4] = 9
    Image.fromarray(mask).save(path)
    return path


def _mask_other_size(path: Path) -> Path:
    Image.fromarray(_brain_pairs()[GOOD][1][:, :30]).save(path)
    return path


# -- volume cases --------------------------------------------------------------------------------------------
def _brain_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    image = np.asarray(template.get_fdata(), dtype=np.float32)[::3, ::3, ::3]
    labels = (image > np.percentile(image, 60)).astype(np.uint8) + (image > np.percentile(image, 85))
    affine = template.affine.copy()
    affine[:3, :3] *= 3
    return image, labels, affine


def _nifti_case(damage: Callable[[Path, Path], Path]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        image, labels, affine = _brain_volume()
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for name in ("brain1", "brain2"):
            nib.save(nib.Nifti1Image(image, affine), root / "images" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(labels, affine), root / "labels" / f"{name}.nii.gz")
        return damage(root / "images" / "brain2.nii.gz", root / "labels" / "brain2.nii.gz")

    return build


def _label_other_shape(image: Path, label: Path) -> Path:
    data = np.asarray(nib.load(label).dataobj)[:-2]
    nib.save(nib.Nifti1Image(data, nib.load(label).affine), label)
    return label


def _label_other_affine(image: Path, label: Path) -> Path:
    loaded = nib.load(label)
    affine = loaded.affine.copy()
    affine[:3, 3] += 25.0  # the label volume sits 25 mm away from its image
    nib.save(nib.Nifti1Image(np.asarray(loaded.dataobj), affine), label)
    return label


def _truncated_nifti(image: Path, label: Path) -> Path:
    return _truncate(image)


def _nan_voxels(image: Path, label: Path) -> Path:
    loaded = nib.load(image)
    data = np.asarray(loaded.dataobj, dtype=np.float32)
    data[:, :, :3] = np.nan  # what a registration tool writes outside its field of view
    nib.save(nib.Nifti1Image(data, loaded.affine), image)
    return image


def _png_named_nifti(image: Path, label: Path) -> Path:
    Image.fromarray(_brain_pairs()[0][0]).save(image.with_suffix(""), format="PNG")  # brain2.nii
    image.unlink()
    image.with_suffix("").rename(image)
    return image


def _dicom_case(damage: Callable[[list[Path]], Path]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        (root / "series").mkdir(parents=True)
        paths = []
        for k in range(5):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
            ds.InstanceNumber = k + 1
            paths.append(root / "series" / f"IM{k + 1:04d}")
            ds.save_as(paths[-1])
        return damage(paths)

    return build


def _missing_slice(paths: list[Path]) -> Path:
    paths[2].unlink()
    return paths[3]


def _mixed_orientation(paths: list[Path]) -> Path:
    ds = pydicom.dcmread(paths[4])
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # a sagittal slice in an axial series
    ds.save_as(paths[4])
    return paths[4]


def _not_dicom(paths: list[Path]) -> Path:
    _truncate(paths[1])
    return paths[1]


VOLUME_COMMANDS = [["data", "inspect", "{root}"], ["train", "{root}/config.yaml", "--out", "{out}"]]
DICOM_COMMANDS = [["data", "inspect", "{root}/series"], ["train", "{root}/config.yaml", "--out", "{out}"]]


# -- config and folder cases ---------------------------------------------------------------------------------
def _config_case(text: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        root.mkdir(parents=True)
        (root / "config.yaml").write_text(text)
        return root / "config.yaml"

    return build


def _symlink_loop(root: Path) -> Path:
    _pair_folder(root)
    (root / "images" / "loop").symlink_to(root / "images", target_is_directory=True)
    (root / "masks" / "self.png").symlink_to(root / "masks" / "self.png")
    return root / "masks" / "self.png"


def _empty_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root / "images"


def cases() -> list[Case]:
    """Every case of the corpus (each case's config is written by :func:`write_config` after ``build``)."""
    image = IMAGE_COMMANDS
    return [
        Case("truncated PNG", "image", _image_case(_truncate), image, PREDICT),
        Case("zero-byte image", "image", _image_case(_zero_bytes), image, PREDICT),
        Case("NIfTI bytes named .png", "image", _image_case(_nifti_bytes), image, PREDICT),
        Case("PNG header, garbage body", "image", _image_case(_garbage_body), image, PREDICT),
        Case("float TIFF with NaN and Inf", "image", _image_case(_nan_float), image, PREDICT),
        Case("20000x20000 declared (bomb)", "image", _image_case(_declared_huge), image, PREDICT),
        Case("RGBA with transparency", "image", _image_case(_rgba_transparent), image, PREDICT),
        Case(
            "16-bit grey (valid)",
            "image",
            _image_case(_valid(lambda a: Image.fromarray(a.astype(np.uint16) * 257))),
            image,
            PREDICT,
        ),
        Case(
            "palette image (valid)",
            "image",
            _image_case(_valid(lambda a: Image.fromarray(a).convert("P"))),
            image,
            PREDICT,
        ),
        Case(
            "opaque RGBA (valid)",
            "image",
            _image_case(_valid(lambda a: Image.fromarray(a).convert("RGBA"))),
            image,
            PREDICT,
        ),
        Case("1x1 image and mask (valid)", "image", _one_pixel, image, PREDICT),
        Case("mask id beyond the class map", "mask", _mask_case(_id_beyond_classes), MASK_COMMANDS[1:], SYNTH),
        Case("mask of another size", "mask", _mask_case(_mask_other_size), MASK_COMMANDS),
        Case("NIfTI label of another shape", "volume", _nifti_case(_label_other_shape), VOLUME_COMMANDS),
        Case("NIfTI label of another affine", "volume", _nifti_case(_label_other_affine), VOLUME_COMMANDS),
        Case("truncated NIfTI", "volume", _nifti_case(_truncated_nifti), VOLUME_COMMANDS),
        Case("NIfTI with NaN voxels", "volume", _nifti_case(_nan_voxels), VOLUME_COMMANDS),
        Case("PNG bytes named .nii.gz", "volume", _nifti_case(_png_named_nifti), VOLUME_COMMANDS),
        Case("DICOM series missing a slice", "volume", _dicom_case(_missing_slice), DICOM_COMMANDS),
        Case("DICOM series, mixed orientations", "volume", _dicom_case(_mixed_orientation), DICOM_COMMANDS),
        Case("truncated DICOM file", "volume", _dicom_case(_not_dicom), DICOM_COMMANDS),
        Case(
            "YAML syntax error",
            "config",
            _config_case("data: {kind: brain_mri\ntrain: [\n"),
            [["train", "{root}/config.yaml", "--out", "{out}"]],
        ),
        Case(
            "YAML not a mapping",
            "config",
            _config_case("- 1\n- 2\n"),
            [["train", "{root}/config.yaml", "--out", "{out}"]],
        ),
        Case("symlink loops", "folder", _symlink_loop, MASK_COMMANDS, SYNTH),
        Case("empty dataset folder", "folder", _empty_folder, MASK_COMMANDS),
    ]


def data_config(case: Case, root: Path) -> dict:
    """The ``data:`` section that reads the case's folder."""
    if case.kind == "volume" and (root / "images").is_dir():
        return {
            "kind": "nifti",
            "root": str(root / "images"),
            "labels": str(root / "labels"),
            "size": 32,
            "class_names": ["background", "tissue", "bright tissue"],
        }
    if case.kind == "volume":
        return {"kind": "dicom", "root": str(root / "series"), "size": 32}
    return {"kind": "image_mask_folder", "root": str(root), "size": 32, "class_names": CLASSES}


def write_config(case: Case, root: Path, base: dict) -> None:
    """Write ``root/config.yaml``: ``base`` (a tiny generate config) reading the case's data."""
    if case.kind != "config":
        data = data_config(case, root)
        images_only = {"joint_mask": False} if data["kind"] == "dicom" else {}
        (root / "config.yaml").write_text(yaml.safe_dump({**base, **images_only, "data": data}))


# -- every config field given a wrong type -------------------------------------------------------------------
def config_fields(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted key, type)`` of every leaf field of the task config dataclass ``cls`` (nested sections
    recursed into); fields typed ``Any`` take any value and are left out."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, object]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            found += config_fields(tp, f"{prefix}{f.name}.")
        elif tp is not typing.Any:
            found.append((f"{prefix}{f.name}", tp))
    return found


def wrong_value(tp: object) -> object:
    """A YAML value of the wrong type for ``tp``: a mapping, or a string where a mapping is expected."""
    accepts_mapping = typing.get_origin(tp) is dict or any(typing.get_origin(a) is dict for a in typing.get_args(tp))
    return "not a mapping" if accepts_mapping else {"wrong": "type"}


def nested(key: str, value: object) -> dict:
    """``"train.lr", 1`` -> ``{"train": {"lr": 1}}``."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}
