"""3D volumes as 2D slice datasets: NIfTI files (nibabel) and DICOM series (pydicom).

Orientation: NIfTI volumes are first reoriented to RAS+, so ``axis`` 0 gives sagittal, 1 coronal and 2 axial
slices. A DICOM series is stacked in slice order (ImagePositionPatient along the slice normal, else
InstanceNumber), so ``axis=2`` gives the acquired slices and 0 / 1 reformats. Slices are shown as a viewer
would (superior / anterior at the top).

Intensity: a display window (``center``/``width`` in the stored units after the DICOM rescale, e.g. HU for
CT), or else percentile normalisation over the whole volume (default 0.5 / 99.5).

Privacy: nothing read from a DICOM header or NIfTI header reaches a dataset. Samples are named
``series{i}_slice{k:03d}`` (DICOM) or ``volume{i}_slice{k:03d}`` (NIfTI; volumes numbered in file-name
order), and no other field is kept. ``identifying_tags`` lists what a file carries, for ``inspect``'s warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from meddiff.data.arrays import ArrayDataset
from meddiff.data.classmap import LabelSpec
from meddiff.data.fit import Fit, stack_common
from meddiff.data.folders import stack_images
from meddiff.data.intensity import percentile_normalise, window
from meddiff.data.validate import pair_files, raise_first, require_dir
from meddiff.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Affines of an image and its label volume may differ by the float rounding of their headers, not by more.
AFFINE_TOLERANCE_MM = 0.01
_NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")
# Header attributes that identify a patient, institution or device beyond the VRs caught wholesale
# (person names, dates, times and instance UIDs): after DICOM PS3.15's basic de-identification profile.
_IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "IssuerOfPatientID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientAge",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "PatientComments",
        "PatientBirthName",
        "PatientMotherBirthName",
        "MedicalRecordLocator",
        "EthnicGroup",
        "Occupation",
        "AdditionalPatientHistory",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        "RequestAttributesSequence",
        "ReferencedPatientSequence",
    }
)


def is_nifti(path: Path) -> bool:
    """True for a visible ``.nii`` / ``.nii.gz`` file."""
    return path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".") and path.is_file()


def load_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI file (header only); missing, truncated or non-NIfTI files raise a UserError naming it."""
    if not path.is_file():
        raise UserError(f"{path}: NIfTI file not found")
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises several types (ImageFileError, EOFError, zlib/gzip errors)
        raise UserError(f"{path}: not a readable NIfTI file ({exc})") from None


def _nifti_data(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """Voxel array of a 3D image reoriented to RAS+ (a trailing time axis of length 1 is dropped)."""
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise UserError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)}")
    try:
        data = np.asanyarray(nib.as_closest_canonical(img).dataobj)
    except Exception as exc:
        raise UserError(f"{path}: voxel data cannot be read, the file may be truncated ({exc})") from None
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise UserError(f"{path}: {bad} voxels are NaN or infinite; replace them (e.g. with 0) before training")
    return data


def read_nifti(path: Path) -> np.ndarray:
    """A 3D NIfTI volume as float32 in RAS+ order ``[X, Y, Z]``."""
    return _nifti_data(load_nifti(path), path).astype(np.float32)


def read_nifti_labels(path: Path, image_path: Path, image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """A label volume matching the volume ``image`` read from ``image_path``: the same shape and the same
    voxel-to-world affine (else a UserError naming both files), integer ids >= 0 (float storage is accepted
    when every value is a whole number)."""
    img = load_nifti(path)
    if tuple(img.shape[:3]) != tuple(image.shape[:3]) or (len(img.shape) > 3 and img.shape[3] != 1):
        raise UserError(
            f"{path}: label volume shape {tuple(img.shape)} differs from the shape "
            f"{tuple(image.shape)} of its image {image_path}"
        )
    offset = float(np.abs(img.affine - image.affine).max())
    if offset > AFFINE_TOLERANCE_MM:
        raise UserError(
            f"{path}: label volume lies elsewhere in space than its image {image_path} (their affines differ "
            f"by up to {offset:.3g} mm); resample the labels onto the image's grid"
        )
    labels = _nifti_data(img, path)
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.round(labels)):
            raise UserError(f"{path}: label volume has non-integer values; class ids must be whole numbers")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise UserError(f"{path}: label volume has negative values; class ids must be >= 0")
    return labels


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """``[A, B, C]`` volume in RAS-like order -> ``[N, H, W]`` slices along ``axis``, displayed upright."""
    if axis not in (0, 1, 2):
        raise UserError(f"'data.axis' must be 0, 1 or 2, got {axis}")
    moved = np.moveaxis(volume, axis, 0)
    return np.ascontiguousarray(moved.transpose(0, 2, 1)[:, ::-1])


def normalise(
    volume: np.ndarray, window_cw: Sequence[float] | None = None, percentiles: Sequence[float] = (0.5, 99.5)
) -> np.ndarray:
    """Volume -> float32 in [0, 1] by a ``(center, width)`` window, else by percentiles of the whole volume."""
    if window_cw is not None:
        return window(volume, window_cw[0], window_cw[1])
    return percentile_normalise(volume, percentiles[0], percentiles[1])


def _slice_dataset(
    volumes: list[np.ndarray],
    label_volumes: list[np.ndarray] | None,
    prefix: str,
    fit: Fit,
    axis: int,
    spec: LabelSpec,
    hflip: bool,
    vflip: bool,
) -> ArrayDataset:
    """Slice normalised volumes (and label volumes) into a fitted ArrayDataset named ``{prefix}{i}_slice{k}``."""
    names, images, masks = [], [], []
    for i, volume in enumerate(volumes):
        stack = torch.from_numpy(to_slices(volume, axis))[:, None]
        images += list(fit.image(stack))
        names += [f"{prefix}{i}_slice{k:03d}" for k in range(stack.shape[0])]
        if label_volumes is not None:
            masks += list(fit.mask(torch.from_numpy(to_slices(label_volumes[i], axis))))
    masks_t = stack_common(masks) if label_volumes is not None else None
    return ArrayDataset(
        stack_images(images),
        masks_t,
        names,
        spec.names_for(masks_t) if masks_t is not None else None,
        hflip,
        vflip=vflip,
        crop=fit.crop,
    )


def list_nifti(path: Path) -> list[Path]:
    """``[path]`` for a NIfTI file, the sorted NIfTI files of a folder, or a UserError."""
    if path.is_file():
        return [path]
    files = sorted(p for p in require_dir(path, "NIfTI file or folder").iterdir() if is_nifti(p))
    if not files:
        raise UserError(f"{path}: no NIfTI files (.nii, .nii.gz) found")
    return files


def nifti_dataset(
    images: Path,
    labels: Path | None = None,
    fit: Fit = Fit(64),
    *,
    axis: int = 2,
    window_cw: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    spec: LabelSpec = LabelSpec(),
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Slices of one NIfTI volume, or of every volume in a folder, with optional label volumes.

    ``labels`` is a NIfTI file (for one image) or a folder of label volumes named like their images.
    """
    image_files = list_nifti(images)
    if labels is None:
        volumes = [normalise(read_nifti(p), window_cw, percentiles) for p in image_files]
        return _slice_dataset(volumes, None, "volume", fit, axis, spec, hflip, vflip)
    label_files = list_nifti(labels)
    if images.is_file() != labels.is_file():
        raise UserError(f"{labels}: labels must be a file when images is a file, and a folder when it is a folder")
    if images.is_file():
        pairs = [(image_files[0], label_files[0])]
    else:
        found, problems = pair_files(image_files, images, label_files, labels, "volume", "label volume")
        raise_first(problems, images)
        pairs = [(a, b) for _, a, b in found]
    volumes, label_volumes = [], []
    for image_path, label_path in pairs:
        img = load_nifti(image_path)
        stored = read_nifti_labels(label_path, image_path, img)
        label_volumes.append(spec.apply(stored, label_path))
        volumes.append(normalise(_nifti_data(img, image_path).astype(np.float32), window_cw, percentiles))
    return _slice_dataset(volumes, label_volumes, "volume", fit, axis, spec, hflip, vflip)


def read_dicom(path: Path, pixels: bool = True) -> pydicom.Dataset:
    """Read one DICOM file; non-DICOM or damaged files raise a UserError naming it."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise UserError(f"{path}: not a DICOM file (no 'DICM' marker)") from None
    except Exception as exc:  # truncated files surface as EOFError, OSError or ValueError
        raise UserError(f"{path}: unreadable DICOM file ({exc})") from None


def dicom_pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Grey pixel data after the modality rescale (e.g. HU for CT) as float32 ``[rows, cols]`` or
    ``[frames, rows, cols]``."""
    if "PixelData" not in ds:
        raise UserError(f"{path}: DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UserError(f"{path}: colour DICOM images are not supported, only grey-scale series")
    try:
        return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    except Exception as exc:  # e.g. compressed transfer syntax without a decoder plug-in
        raise UserError(f"{path}: DICOM pixel data cannot be decoded ({exc})") from None


def dicom_files(path: Path) -> list[Path]:
    """``[path]`` for a file, or every visible file below a folder (DICOM files often have no extension)."""
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in require_dir(path, "DICOM folder").rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
    )
    if not files:
        raise UserError(f"{path}: no files found")
    return files


def _slice_order(datasets: Sequence[pydicom.Dataset], files: Sequence[Path]) -> np.ndarray:
    """Argsort of slices along the slice normal, else by InstanceNumber, else in file order. Errors: two
    slices at one position (e.g. two acquisitions sharing a series), slices of another orientation, and a
    gap of more than 1.5 slice spacings (a missing slice), each naming the file."""
    if all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in datasets):
        orientations = np.round([np.asarray(d.ImageOrientationPatient, dtype=float) for d in datasets], 3)
        unique, counts = np.unique(orientations, axis=0, return_counts=True)
        orientation = unique[np.argmax(counts)]  # the series' own: most of its slices have it
        odd = np.flatnonzero(np.abs(orientations - orientation).max(axis=1) > 0)
        if odd.size:
            raise UserError(
                f"{files[odd[0]]}: slice orientation {orientations[odd[0]].tolist()} differs from the "
                f"{orientation.tolist()} of the series' other slices; split the series into one folder per orientation"
            )
        normal = np.cross(orientation[:3], orientation[3:])
        keys = np.round([np.dot(np.asarray(d.ImagePositionPatient, dtype=float), normal) for d in datasets], 3)
        _check_spacing(np.sort(keys), [files[k] for k in np.argsort(keys, kind="stable")])
    elif all("InstanceNumber" in d for d in datasets):
        keys = np.array([int(d.InstanceNumber) for d in datasets])
    else:
        return np.arange(len(datasets))
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(np.diff(keys[order]) == 0)
    if same.size:
        first, second = files[order[same[0]]], files[order[same[0] + 1]]
        raise UserError(f"{second}: same slice position as {first}; split the series into one folder per acquisition")
    return order


def _check_spacing(positions: np.ndarray, files: Sequence[Path]) -> None:
    """Refuse a gap of more than 1.5 times the median spacing between sorted slice ``positions`` (mm)."""
    steps = np.diff(positions)
    if steps.size < 2 or not (steps > 0).all():
        return  # one step sets no spacing to compare with; equal positions are reported by the caller
    spacing = float(np.median(steps))
    gap = int(np.argmax(steps))
    if steps[gap] > 1.5 * spacing:
        raise UserError(
            f"{files[gap + 1]}: {steps[gap]:.3g} mm from the previous slice {files[gap]}, where the series' slices "
            f"are {spacing:.3g} mm apart; a slice of the series is missing"
        )


def read_dicom_series(path: Path) -> list[tuple[np.ndarray, bool]]:
    """Every series (by SeriesInstanceUID) in a DICOM file or folder, as float32 volumes in RAS-like slicing
    order ``[cols, rows (bottom-up), slices]`` with a flag for MONOCHROME1 (inverted grey) display.
    Series are ordered by their first file's path."""
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for file in dicom_files(path):
        ds = read_dicom(file)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    volumes = []
    for members in groups.values():
        files, datasets = zip(*members, strict=True)
        if len(files) == 1 and int(datasets[0].get("NumberOfFrames", 1)) > 1:
            stack = dicom_pixels(datasets[0], files[0])  # multi-frame file: frames in stored order
        else:
            order = _slice_order(datasets, files)
            slices = []
            for k in order:
                pixels = dicom_pixels(datasets[k], files[k])
                if pixels.ndim != 2:
                    raise UserError(f"{files[k]}: multi-frame file mixed with other files of its series")
                if slices and pixels.shape != slices[0].shape:
                    raise UserError(
                        f"{files[k]}: slice size {pixels.shape[1]}x{pixels.shape[0]} differs from "
                        f"{files[order[0]]} ({slices[0].shape[1]}x{slices[0].shape[0]})"
                    )
                slices.append(pixels)
            stack = np.stack(slices)
        inverted = datasets[0].get("PhotometricInterpretation") == "MONOCHROME1"
        volumes.append((np.ascontiguousarray(stack.transpose(2, 1, 0)[:, ::-1]), inverted))  # [k,r,c] -> [c,r up,k]
    return volumes


def dicom_dataset(
    path: Path,
    fit: Fit = Fit(64),
    *,
    axis: int = 2,
    window_cw: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    hflip: bool = False,
    vflip: bool = False,
) -> ArrayDataset:
    """Unlabelled slices of the DICOM series in a folder (or a single DICOM file), named ``series{i}_slice{k}``."""
    series = read_dicom_series(path)
    volumes = [normalise(v, window_cw, percentiles) for v, _ in series]
    volumes = [1.0 - v if inverted else v for v, (_, inverted) in zip(volumes, series, strict=True)]
    return _slice_dataset(volumes, None, "series", fit, axis, LabelSpec(), hflip, vflip)


def _identifying_element(elem: pydicom.DataElement) -> bool:
    if elem.tag.is_private:
        return True
    keyword = elem.keyword
    if elem.VR in ("PN", "DA", "DT", "TM"):
        return True
    if elem.VR == "UI":  # instance UIDs identify a study / series / image; class and syntax UIDs are constants
        return not keyword.endswith(("ClassUID", "TransferSyntaxUID", "CodingSchemeUID"))
    return keyword in _IDENTIFYING_KEYWORDS


def identifying_tags(path: Path) -> list[str]:
    """Names of non-empty identifying header fields of a DICOM or NIfTI file, for a privacy warning.

    DICOM: patient / institution attributes, person names, dates, times, instance UIDs and private tags
    (keywords; private tags reported as ``"private tags"``). NIfTI: non-empty ``descrip``, ``aux_file``,
    ``db_name``, ``intent_name`` and any header extension (these can carry a whole DICOM header).
    """
    if path.name.endswith(NIFTI_SUFFIXES):
        header = load_nifti(path).header
        found = [f for f in _NIFTI_TEXT_FIELDS if f in header and np.asarray(header[f]).item().strip(b"\x00 ")]
        extensions = getattr(header, "extensions", [])
        return found + ([f"extensions ({len(extensions)})"] if len(extensions) else [])
    ds = read_dicom(path, pixels=False)
    meta = getattr(ds, "file_meta", None)
    elements = [*(meta.iterall() if meta is not None else ()), *ds.iterall()]
    names = {
        ("private tags" if e.tag.is_private else e.keyword)
        for e in elements
        if not e.is_empty and _identifying_element(e)
    }
    return sorted(names)
