import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from meddiff.data.inspect import detect_kind, format_report, inspect_path
from meddiff.errors import UserError

from .makers import grey, image_mask_folder, label, rgb, write_image


def test_collects_every_problem_naming_each_file(tmp_path):
    image_mask_folder(tmp_path, count=6)
    write_image(tmp_path / "images" / "lonely.png", rgb())
    write_image(tmp_path / "masks" / "orphan.png", label())
    cut = tmp_path / "images" / "case0.png"
    cut.write_bytes(cut.read_bytes()[:200])
    write_image(tmp_path / "masks" / "case1.png", label(20, 30))
    bad_ids = label()
    bad_ids[0, 0] = 7
    write_image(tmp_path / "masks" / "case2.png", bad_ids)
    write_image(tmp_path / "images" / "case3.png", np.dstack([rgb(), np.zeros((24, 32), np.uint8)]))
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("- {name: a, id: 0}\n- {name: b, id: 1}\n- {name: c, id: 2}\n")
    report = inspect_path(tmp_path, class_map)
    assert report.kind == "image_mask_folder" and not report.ok
    expected = [
        "lonely.png: image has no mask",
        "orphan.png: mask has no image",
        "case0.png: unreadable image",
        "case1.png: size 30x20",
        "case2.png: mask contains class id(s) 7",
        "case3.png: RGBA image",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in report.problems) == 1, fragment
    assert len(report.problems) == len(expected)
    assert report.counts == {"images": 7, "masks": 7, "pairs": 6}
    assert report.class_names == {0: "a", 1: "b", 2: "c"} and 7 in report.class_histogram
    text = format_report(report)
    assert "problems: 6" in text and "lonely.png" in text


def test_clean_folder_report(tmp_path):
    image_mask_folder(tmp_path, count=2, classes=2)
    report = inspect_path(tmp_path)
    assert report.ok and report.sizes == {"32x24": 4} and report.modes == {"RGB uint8": 2, "L uint8": 2}
    assert set(report.class_histogram) == {0, 1} and sum(report.class_histogram.values()) == 2 * 24 * 32
    assert "problems: none" in format_report(report)


def test_detects_layouts(tmp_path):
    image_mask_folder(tmp_path / "pairs")
    write_image(tmp_path / "plain" / "sub" / "a.jpg", rgb())
    write_image(tmp_path / "fusion" / "MRI" / "1.png", grey())
    write_image(tmp_path / "fusion" / "PET" / "1.png", rgb())
    write_image(tmp_path / "cadis" / "Video01" / "Images" / "Video1_frame000010.png", rgb())
    write_image(tmp_path / "cadis_labels" / "masks" / "Video1_frame000010.png", label(classes=36))
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "brain.nii.gz")
    (tmp_path / "dicom").mkdir()
    pydicom.dcmread(get_testdata_file("MR_small.dcm")).save_as(tmp_path / "dicom" / "IM0001")
    kinds = {
        name: detect_kind(tmp_path / name)
        for name in ("pairs", "plain", "fusion", "cadis", "cadis_labels", "brain.nii.gz", "dicom", "dicom/IM0001")
    }
    assert kinds == {
        "pairs": "image_mask_folder",
        "plain": "image_folder",
        "fusion": "paired_folder",
        "cadis": "cadis",
        "cadis_labels": "cadis",
        "brain.nii.gz": "nifti",
        "dicom": "dicom",
        "dicom/IM0001": "dicom",
    }


def test_privacy_warnings(tmp_path):
    write_image(tmp_path / "photos" / "clip_2021-03-04_frame1.png", rgb())
    exif = Image.Exif()
    exif[306] = "2021:03:04 10:00:00"  # DateTime
    Image.fromarray(rgb()).save(tmp_path / "photos" / "b.jpg", exif=exif)
    report = inspect_path(tmp_path / "photos")
    assert any("contain a date, e.g. clip_2021-03-04_frame1.png" in w for w in report.privacy)
    assert any("embedded metadata (DateTime)" in w for w in report.privacy)

    (tmp_path / "dicom").mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(tmp_path / "dicom" / "IM0001")
    report = inspect_path(tmp_path / "dicom")
    assert report.kind == "dicom" and report.ok and report.counts == {"files": 1, "series": 1}
    warning = " ".join(report.privacy)
    assert "PatientName" in warning and "PatientID" in warning and "StudyDate" in warning
    assert str(ds.PatientName) not in warning  # names of tags, never their values

    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4))
    img.header["descrip"] = b"scan of J. Doe"
    nib.save(img, tmp_path / "vol.nii")
    report = inspect_path(tmp_path / "vol.nii")
    assert report.kind == "nifti" and report.sizes == {"3x3x3": 1} and "descrip" in report.privacy[0]


def test_nifti_folder_with_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, shape in (("a", (4, 4, 4)), ("b", (4, 4, 4))):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "labels" / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), np.eye(4)), tmp_path / "labels" / "b.nii.gz")
    report = inspect_path(tmp_path)
    assert report.kind == "nifti" and report.class_histogram == {1: 64}
    assert len(report.problems) == 1 and "b.nii.gz: label volume shape (4, 4, 3) differs" in report.problems[0]


def test_dicom_folder_problems(tmp_path):
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(tmp_path / "IM0001")
    (tmp_path / "notes.txt").write_text("hello")
    report = inspect_path(tmp_path, kind="dicom")
    assert len(report.problems) == 1 and "notes.txt: not a DICOM file" in report.problems[0]


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="nowhere: not found"):
        inspect_path(tmp_path / "nowhere")
    report = inspect_path(tmp_path)
    assert report.problems == [
        f"{tmp_path}: no image files found (.bmp, .jpeg, .jpg, .png, .tif, .tiff, searched recursively)"
    ]


# --- the real data beside the repository ---


def test_cadis_samples_mt(shared_data):
    report = inspect_path(shared_data / "cadis_samples_mt")
    assert report.counts == {"images": 5, "masks": 5, "pairs": 4} and set(report.class_histogram) == {0, 1}
    assert len(report.problems) == 2 and "002820.png: image has no mask" in report.problems[0]


def test_isbi_binary_masks_get_a_remap_hint(shared_data):
    report = inspect_path(shared_data / "isbi2012_em_membrane")
    assert report.ok and report.counts["pairs"] == 30 and set(report.class_histogram) == {0, 255}
    assert any("data.remap" in note for note in report.notes)


def test_cadis_relabelled_masks(shared_data):
    report = inspect_path(shared_data / "cadis_relabelled_masks")
    assert report.kind == "cadis" and report.counts == {"label maps": 40} and report.ok
    assert sorted(report.class_histogram) == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        10,
        11,
        12,
        13,
        14,
        15,
        17,
        18,
        19,
        20,
        25,
        33,
        35,
    ]  # as SOURCE.md lists
    assert report.class_names[35] == "Iris Hooks"


def test_catinstseg_names_carry_dates(shared_data):
    report = inspect_path(shared_data / "catinstseg_samples")
    assert report.ok and report.counts["pairs"] == 5 and any("contain a date" in w for w in report.privacy)


def test_harvard_pairs(shared_data):
    report = inspect_path(shared_data / "harvard_fusion" / "MRI_SPECT")
    assert report.kind == "paired_folder" and report.counts == {"pairs": 73} and report.ok
    assert report.notes == [
        "MRI: 73 grey (1 channel), 0 colour (3 channels) images",
        "SPECT: 0 grey (1 channel), 73 colour (3 channels) images",
    ]


def test_class_map_with_gaps_checks_stored_ids(tmp_path):
    image_mask_folder(tmp_path, count=2, classes=2)
    write_image(tmp_path / "masks" / "case1.png", label(classes=2) * 5)  # ids {0, 5}
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("- {name: bg, id: 0}\n- {name: tool, id: 5}\n")
    report = inspect_path(tmp_path, class_map)
    assert len(report.problems) == 1 and "case0.png: mask contains class id(s) 1" in report.problems[0]
    assert set(report.class_histogram) == {0, 1, 5}
