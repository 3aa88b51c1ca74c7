"""``meddiff data inspect PATH``: what a dataset folder or volume holds, and everything that is wrong with it.

The loaders stop at the first bad file; ``inspect_path`` runs the same checks on every file and collects all
problems, plus privacy warnings (identifying DICOM / NIfTI header fields, embedded image metadata, dates in
file names). It reads every file fully, so it also finds truncated files.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import ExifTags, Image

from meddiff.data.cadis import CADIS_CLASSES, SPLITS, cadis_spec, video_of
from meddiff.data.classmap import LabelSpec, class_map_spec, load_class_map
from meddiff.data.imagefiles import describe, image_array, is_image_file, mask_array, open_image, read_mask
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.mirror import sided_classes
from meddiff.data.validate import check_same_size, list_images, pair_files
from meddiff.data.volumes import (
    dicom_files,
    dicom_pixels,
    identifying_tags,
    is_nifti,
    load_nifti,
    read_dicom,
    read_dicom_series,
    read_nifti,
    read_nifti_labels,
)
from meddiff.errors import UserError

MASK_DIRS = ("masks", "labels", "Labels", "Masks")
_CADIS_NAME = re.compile(r"Video\d+_frame\d+")
_DATE = re.compile(r"(19|20)\d\d[-_.](0[1-9]|1[0-2])[-_.](0[1-9]|[12]\d|3[01])")
# EXIF tags that can date, locate or identify a person or device (software and geometry tags are harmless).
_EXIF_PRIVATE = {
    "DateTime",
    "DateTimeOriginal",
    "DateTimeDigitized",
    "Artist",
    "ImageDescription",
    "UserComment",
    "GPSInfo",
    "BodySerialNumber",
    "CameraOwnerName",
    "HostComputer",
    "XPAuthor",
    "XPComment",
    "Copyright",
    "ImageUniqueID",
}


@dataclass
class InspectReport:
    """What ``inspect_path`` found. ``sizes``: ``"WxH"`` (volumes: voxels ``"XxYxZ"``) -> files; ``modes``: e.g.
    ``"RGB uint8"``, ``"CT int16"`` or ``"float32 LAS"`` -> files; ``class_histogram``: stored mask id -> pixel
    count over all masks (255 = ignore)."""

    path: Path
    kind: str
    counts: dict[str, int] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    class_histogram: dict[int, int] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    privacy: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (privacy warnings do not count)."""
        return not self.problems


class _Scan:
    """Accumulates per-file findings into a report."""

    def __init__(self, report: InspectReport):
        self.report = report
        self.metadata: Counter = Counter()
        self.metadata_files = 0
        self.dated: list[Path] = []

    def problem(self, exc: UserError) -> None:
        self.report.problems.append(str(exc))

    def open(self, path: Path) -> Image.Image | None:
        """Open a 2D image file, recording size, mode, metadata and dates in its name."""
        if _DATE.search(path.name):
            self.dated.append(path)
        try:
            im = open_image(path)
        except UserError as exc:
            self.problem(exc)
            return None
        self.report.sizes[f"{im.width}x{im.height}"] += 1
        self.report.modes[describe(im)] += 1
        keys = {ExifTags.TAGS.get(k, str(k)) for k in im.getexif()} & _EXIF_PRIVATE
        keys |= {k for k in getattr(im, "text", {}) if k != "Raw profile type exif"}
        if keys:
            self.metadata.update(keys)
            self.metadata_files += 1
        return im

    def image(self, path: Path) -> np.ndarray | None:
        """Open an image and convert it as the loaders do (``[C, H, W]`` in [0, 1]); None after a problem."""
        im = self.open(path)
        if im is None:
            return None
        try:
            return image_array(im, path)
        except UserError as exc:
            self.problem(exc)
            return None

    def mask(self, path: Path, spec: LabelSpec) -> np.ndarray | None:
        """Read a mask's stored ids, add them to the histogram and check them against ``spec``."""
        im = self.open(path)
        if im is None:
            return None
        try:
            stored = mask_array(im, path, spec.colours)
            counts = np.bincount(stored.ravel())
            for k in np.flatnonzero(counts):
                self.report.class_histogram[int(k)] = self.report.class_histogram.get(int(k), 0) + int(counts[k])
            spec.apply(stored, path)
            return stored
        except UserError as exc:
            self.problem(exc)
            return None

    def finish(self) -> InspectReport:
        report = self.report
        report.class_histogram = dict(sorted(report.class_histogram.items()))
        if self.metadata_files:
            report.privacy.append(
                f"{self.metadata_files} file(s) carry embedded metadata "
                f"({', '.join(sorted(self.metadata))}); strip it before sharing the files"
            )
        if self.dated:
            report.privacy.append(
                f"{len(self.dated)} file name(s) contain a date, e.g. {self.dated[0].name}; "
                "dates can identify a patient or procedure, and sample names keep them"
            )
        return report


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _cadis_labels_dir(folder: Path, masks_dir: str | None) -> Path | None:
    """The folder of bare CaDIS label maps that ``folder`` is or holds, else None: every file is named like
    ``Video1_frame000090`` and the first one holds grey ids 0..35 (CaDIS frames themselves are colour)."""
    for candidate in (folder, *(folder / d for d in ((masks_dir,) if masks_dir else MASK_DIRS))):
        files = sorted(p for p in candidate.iterdir() if is_image_file(p)) if candidate.is_dir() else []
        if files and all(_CADIS_NAME.fullmatch(p.stem) for p in files):
            try:
                if read_mask(files[0]).max() <= 35:
                    return candidate
            except UserError:
                continue
    return None


def detect_kind(path: Path, images_dir: str = "images", masks_dir: str | None = None) -> str:
    """Which loader ``path`` suits: image_mask_folder, image_folder, paired_folder, cadis, nifti or dicom."""
    if path.is_file():
        return "nifti" if is_nifti(path) else "dicom" if _is_dicom_file(path) else "image_folder"
    subdirs = _subdirs(path)
    if any(re.fullmatch(r"Video\d+", name) for name in subdirs):
        return "cadis"
    mask_dir = masks_dir or next((d for d in MASK_DIRS if d in subdirs), None)
    if images_dir in subdirs:
        if any(is_nifti(p) for p in subdirs[images_dir].iterdir()):
            return "nifti"
        return "image_mask_folder" if mask_dir in subdirs else "image_folder"
    files = _visible_files(path)
    if any(is_nifti(p) for p in files):
        return "nifti"
    if any(_is_dicom_file(p) for p in files if not is_image_file(p)):
        return "dicom"
    if _cadis_labels_dir(path, masks_dir) is not None:
        return "cadis"
    if len(subdirs) == 2 and not any(is_image_file(p) for p in files):
        a, b = subdirs.values()
        if {p.stem for p in a.iterdir() if is_image_file(p)} & {p.stem for p in b.iterdir() if is_image_file(p)}:
            return "paired_folder"
    return "image_folder"


def inspect_path(
    path: str | Path,
    class_map: str | Path | None = None,
    *,
    kind: str | None = None,
    images_dir: str = "images",
    masks_dir: str | None = None,
) -> InspectReport:
    """Inspect a dataset folder or a volume file and collect every problem instead of stopping at the first.

    ``kind`` overrides the detected layout; ``class_map`` (YAML) decodes colour masks and names the ids that
    masks may contain; ``masks_dir`` picks the mask sub-folder (default: the first of masks, labels found).
    A path that does not exist raises a UserError.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    report = InspectReport(path, kind or detect_kind(path, images_dir, masks_dir))
    scan = _Scan(report)
    spec, entries = LabelSpec(), []
    if class_map is not None:
        try:
            entries = load_class_map(Path(class_map))
            spec = class_map_spec(Path(class_map), entries)
            report.class_names = {e.id: e.name for e in entries}
        except UserError as exc:
            scan.problem(exc)
    try:
        if report.kind == "image_mask_folder":
            mask_dir = masks_dir or next((d for d in MASK_DIRS if (path / d).is_dir()), "masks")
            _inspect_pairs(scan, path / images_dir, path / mask_dir, spec)
        elif report.kind == "image_folder":
            files = [path] if path.is_file() else list_images(path, recursive=True)
            for file in files:
                scan.image(file)
            report.counts["images"] = len(files)
        elif report.kind == "paired_folder":
            _inspect_paired(scan, path)
        elif report.kind == "cadis":
            _inspect_cadis(scan, path, masks_dir)
        elif report.kind == "nifti":
            _inspect_nifti(scan, path, images_dir, masks_dir)
        elif report.kind == "dicom":
            _inspect_dicom(scan, path)
        else:
            raise UserError(
                f"unknown kind '{report.kind}' (known: image_mask_folder, image_folder, "
                "paired_folder, cadis, nifti, dicom)"
            )
    except UserError as exc:  # a problem that stops the scan, e.g. an empty or missing folder
        scan.problem(exc)
    _note_ignore_masks(report)
    _note_sided_classes(report, {frozenset((e.name, e.mirror)) for e in entries if e.mirror})
    return scan.finish()


def _inspect_pairs(
    scan: _Scan, image_dir: Path, mask_dir: Path, spec: LabelSpec, what: tuple[str, str] = ("image", "mask")
) -> None:
    images, masks = list_images(image_dir), list_images(mask_dir)
    pairs, problems = pair_files(images, image_dir, masks, mask_dir, *what)
    scan.report.problems += problems
    scan.report.counts.update({f"{what[0]}s": len(images), f"{what[1]}s": len(masks), "pairs": len(pairs)})
    for _, image_path, mask_path in pairs:
        image = scan.image(image_path)
        stored = scan.mask(mask_path, spec)
        if image is not None and stored is not None:
            try:
                check_same_size(image_path, image.shape[-2:], mask_path, stored.shape)
            except UserError as exc:
                scan.problem(exc)


def _inspect_paired(scan: _Scan, root: Path) -> None:
    dirs = list(_subdirs(root).values())
    if len(dirs) != 2:
        raise UserError(f"{root}: expected exactly two modality sub-folders, found {len(dirs)}")
    a, b = dirs
    pairs, problems = pair_files(list_images(a), a, list_images(b), b, f"{a.name} image", f"{b.name} image")
    scan.report.problems += problems
    scan.report.counts["pairs"] = len(pairs)
    colour = Counter()
    for _, path_a, path_b in pairs:
        image_a, image_b = scan.image(path_a), scan.image(path_b)
        for image, folder in ((image_a, a), (image_b, b)):
            if image is not None:
                colour[folder.name, image.shape[0]] += 1
        if image_a is not None and image_b is not None:
            try:
                check_same_size(path_a, image_a.shape[-2:], path_b, image_b.shape[-2:])
            except UserError as exc:
                scan.problem(exc)
    for folder in (a, b):
        grey, rgb = colour[folder.name, 1], colour[folder.name, 3]
        scan.report.notes.append(f"{folder.name}: {grey} grey (1 channel), {rgb} colour (3 channels) images")


def _inspect_cadis(scan: _Scan, root: Path, masks_dir: str | None) -> None:
    spec = cadis_spec("raw")
    scan.report.class_names = dict(enumerate(CADIS_CLASSES))
    videos = [d for name, d in _subdirs(root).items() if re.fullmatch(r"Video\d+", name)]
    if videos:
        for video in videos:
            _inspect_pairs(scan, video / "Images", video / "Labels", spec, ("frame", "label map"))
            counts = scan.report.counts
            for key in ("frames", "label maps", "pairs"):
                counts[f"total {key}"] = counts.get(f"total {key}", 0) + counts.pop(key)
        scan.report.counts["videos"] = len(videos)
        numbers = sorted(video_of(v.name) for v in videos)
        per_split = {s: [n for n in numbers if n in ids] for s, ids in SPLITS.items()}
        scan.report.notes.append(
            "videos "
            + ", ".join(map(str, numbers))
            + "; official split: "
            + "; ".join(f"{s} {len(v)} video(s)" for s, v in per_split.items())
        )
        return
    labels = _cadis_labels_dir(root, masks_dir) or root
    files = list_images(labels)
    for file in files:
        scan.mask(file, spec)
    scan.report.counts["label maps"] = len(files)
    scan.report.notes.append(f"label maps only (no images) in {labels}: use kind 'cadis' to remap them to a task")


def _inspect_nifti(scan: _Scan, path: Path, images_dir: str, masks_dir: str | None) -> None:
    label_dir = None
    if path.is_dir() and (path / images_dir).is_dir():
        label_dir = next((path / d for d in ((masks_dir,) if masks_dir else MASK_DIRS) if (path / d).is_dir()), None)
        path = path / images_dir
    volumes = [path] if path.is_file() else [p for p in _visible_files(path) if is_nifti(p)]
    labels = {p.name: p for p in _visible_files(label_dir) if is_nifti(p)} if label_dir else {}
    scan.report.counts.update({"volumes": len(volumes), "label volumes": len(labels)})
    for volume in volumes:
        label = labels.pop(volume.name, None)
        try:
            img = load_nifti(volume)
            read_nifti(volume)  # decodes the voxels: a truncated or NaN volume is a problem here, not in training
            scan.report.sizes["x".join(map(str, img.shape))] += 1
            scan.report.modes[f"{img.get_data_dtype()} {''.join(nib.aff2axcodes(img.affine))}"] += 1
            tags = identifying_tags(volume)
            if tags:
                scan.report.privacy.append(f"{volume}: non-empty header fields {', '.join(tags)}")
            if label is not None:
                stored = read_nifti_labels(label, volume, img)
                counts = np.bincount(stored.ravel())
                for k in np.flatnonzero(counts):
                    scan.report.class_histogram[int(k)] = scan.report.class_histogram.get(int(k), 0) + int(counts[k])
            elif label_dir:
                scan.report.problems.append(f"{volume}: volume has no label volume of the same name in {label_dir}")
        except UserError as exc:
            scan.problem(exc)
    scan.report.problems += [f"{p}: label volume has no image volume in {path}" for p in labels.values()]


def _inspect_dicom(scan: _Scan, path: Path) -> None:
    files = dicom_files(path)
    tags: Counter = Counter()
    tagged = 0
    for file in files:
        try:
            ds = read_dicom(file)
            pixels = dicom_pixels(ds, file)
            scan.report.sizes[f"{pixels.shape[-1]}x{pixels.shape[-2]}"] += 1
            scan.report.modes[f"{ds.get('Modality', '?')} {ds.pixel_array.dtype}"] += 1
            found = identifying_tags(file)
            tags.update(found)
            tagged += bool(found)
        except UserError as exc:
            scan.problem(exc)
    scan.report.counts["files"] = len(files)
    if not scan.report.problems:
        try:
            series = read_dicom_series(path)
            scan.report.counts["series"] = len(series)
            scan.report.notes.append("slices per series: " + ", ".join(str(v.shape[2]) for v, _ in series))
        except UserError as exc:
            scan.problem(exc)
    if tagged:
        scan.report.privacy.append(
            f"{tagged} DICOM file(s) carry identifying header fields ({', '.join(sorted(tags))}); meddiff never "
            "copies them into datasets or outputs (samples are named series<i>_slice<k>), but the files "
            "themselves are not de-identified"
        )


def _note_ignore_masks(report: InspectReport) -> None:
    ids = set(report.class_histogram)
    if (
        report.kind == "image_mask_folder"
        and IGNORE_INDEX in ids
        and ids - {IGNORE_INDEX}
        and len(ids) <= 3
        and not report.class_names
    ):
        report.notes.append(
            f"masks hold ids {sorted(ids)}; 255 means 'ignore' unless remapped. If it marks a "
            "class (binary {0, 255} masks), set data.remap, e.g. {0: [0], 1: [255]}"
        )


def _note_sided_classes(report: InspectReport, pairs: set[frozenset]) -> None:
    paired = {name for pair in pairs for name in pair}
    sided = [name for name in sided_classes(list(report.class_names.values())) if name not in paired]
    if sided:
        report.notes.append(
            f"classes {', '.join(repr(n) for n in sided)} are sided (left/right): a left-right flip (hflip, "
            "synth run --hflip) needs them in mirror pairs (data.mirror_pairs, or 'mirror:' in the class map), "
            "else training refuses the flip"
        )
    if pairs:
        report.notes.append(
            "mirror pairs (swapped by left-right flips): "
            + ", ".join(" <-> ".join(sorted(p)) if len(p) == 2 else f"{next(iter(p))} (keeps its id)" for p in pairs)
        )


def format_report(report: InspectReport, max_problems: int = 20) -> str:
    """Plain-text rendering of a report for the terminal."""
    lines = [f"{report.path}: {report.kind}"]
    if report.counts:
        lines.append("  files: " + ", ".join(f"{v} {k}" for k, v in report.counts.items()))
    for title, counter in (("sizes", report.sizes), ("modes", report.modes)):
        if counter:
            common = ", ".join(f"{k} ({v})" for k, v in counter.most_common(5))
            more = f", ... {len(counter)} distinct" if len(counter) > 5 else ""
            lines.append(f"  {title}: {common}{more}")
    if report.class_histogram:
        total = sum(report.class_histogram.values())
        lines.append(f"  class ids ({len(report.class_histogram)} found, pixels):")
        for k, count in report.class_histogram.items():
            name = "ignore" if k == IGNORE_INDEX else report.class_names.get(k, "")
            lines.append(f"    {k:>3} {name:<34} {count:>14,d}  {100 * count / total:6.2f}%")
    lines.append(f"  problems: {len(report.problems) or 'none'}")
    lines += [f"    - {p}" for p in report.problems[:max_problems]]
    if len(report.problems) > max_problems:
        lines.append(f"    ... and {len(report.problems) - max_problems} more")
    for title, items in (("privacy", report.privacy), ("notes", report.notes)):
        lines += [f"  {title}:"] + [f"    - {item}" for item in items] if items else []
    return "\n".join(lines)
