from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nilearn import datasets as nilearn_datasets
from pydicom.data import get_testdata_file

from meddiff.data.classmap import label_spec
from meddiff.data.fit import Fit
from meddiff.data.volumes import dicom_dataset, identifying_tags, nifti_dataset, normalise, to_slices
from meddiff.errors import UserError

STAT_MAP = Path(nilearn_datasets.__file__).parent / "data" / "image_10426.nii.gz"  # bundled, 53x63x46, LAS
SECRETS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-12345",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-999",
    "InstitutionName": "St Example Hospital",
}


def _save(volume: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), path)
    return path


def test_bundled_nifti_with_labels(tmp_path):
    img = nib.load(STAT_MAP)
    data = img.get_fdata()
    labels = _save((data > 1).astype(np.uint8) + (data > 3), tmp_path / "labels.nii.gz", img.affine)
    dataset = nifti_dataset(STAT_MAP, labels, Fit(32, "pad"), spec=label_spec(class_names=["bg", "low", "high"]))
    assert len(dataset) == 46 and dataset.names[12] == "volume0_slice012"
    assert dataset.in_channels == 1 and dataset.num_classes == 3
    assert set(dataset.masks.unique().tolist()) <= {0, 1, 2, 255} and dataset.masks.eq(2).any()
    assert len(nifti_dataset(STAT_MAP, fit=Fit(16), axis=0)) == 53


def test_mni_template_axial_slices():
    t1 = Path(nilearn_datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    dataset = nifti_dataset(t1, fit=Fit(32))
    assert len(dataset) == 189 and dataset.masks is None and dataset.class_names is None
    assert dataset.images.min() == -1 and 0.9 < dataset.images.max() <= 1


def test_slices_are_upright_whatever_the_stored_orientation(tmp_path):
    volume = np.zeros((4, 5, 3), np.float32)
    volume[0, 4, 0] = 1  # left, anterior, inferior voxel in RAS
    ras = _save(volume, tmp_path / "ras.nii")
    las = _save(volume[::-1].copy(), tmp_path / "las.nii", np.diag([-1.0, 1, 1, 1]))
    for path in (ras, las):
        axial = nifti_dataset(path, fit=Fit(5, "pad")).images  # 5x5 canvas: rows = y (anterior first)
        top_left = axial[0, 0, 0, 0]  # slice z=0, row 0 = anterior, column 0 = x=0 (pad column on the right)
        assert top_left == 1 and axial[0].gt(-1).sum() == 1


def test_label_volume_of_another_shape_names_both_files(tmp_path):
    image = _save(np.random.rand(6, 7, 5).astype(np.float32), tmp_path / "ct.nii.gz")
    labels = _save(np.zeros((6, 7, 4), np.uint8), tmp_path / "seg.nii.gz")
    with pytest.raises(
        UserError,
        match=r"seg\.nii\.gz: label volume shape \(6, 7, 4\) differs from the shape "
        r"\(6, 7, 5\) of its image .*ct\.nii\.gz",
    ):
        nifti_dataset(image, labels)


def test_label_folder_pairs_and_bad_labels(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "seg").mkdir()
    for name in ("a", "b"):
        _save(np.random.rand(6, 7, 5).astype(np.float32), tmp_path / "img" / f"{name}.nii.gz")
    _save(np.ones((6, 7, 5), np.float32), tmp_path / "seg" / "a.nii.gz")
    _save(np.full((6, 7, 5), 0.5, np.float32), tmp_path / "seg" / "b.nii.gz")
    with pytest.raises(UserError, match=r"b\.nii\.gz: label volume has non-integer values"):
        nifti_dataset(tmp_path / "img", tmp_path / "seg")
    (tmp_path / "seg" / "b.nii.gz").unlink()
    with pytest.raises(UserError, match=r"img/b\.nii\.gz: volume has no label volume"):
        nifti_dataset(tmp_path / "img", tmp_path / "seg")


def test_damaged_and_4d_nifti(tmp_path):
    good = _save(np.random.rand(8, 8, 8).astype(np.float32), tmp_path / "good.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match=r"cut\.nii\.gz: "):
        nifti_dataset(cut)
    four = _save(np.zeros((4, 4, 4, 3), np.float32), tmp_path / "bold.nii")
    with pytest.raises(UserError, match=r"bold\.nii: expected a 3D volume, got shape \(4, 4, 4, 3\)"):
        nifti_dataset(four)


def test_window_and_percentiles():
    hu = np.array([-1000.0, -160, 40, 240, 3000])
    assert normalise(hu, (40, 400)).tolist() == [0, 0, 0.5, 1, 1]
    stretched = normalise(np.arange(1000.0), percentiles=(10, 90))
    assert stretched[:100].max() == 0 and stretched[900:].min() == 1


def test_to_slices_shapes():
    volume = np.zeros((3, 4, 5))
    assert [to_slices(volume, a).shape for a in (0, 1, 2)] == [(3, 5, 4), (4, 5, 3), (5, 4, 3)]


def _series(folder: Path, count: int = 5, uid: str = "1.2.3.4", secrets: bool = True, start: int = 0) -> list[Path]:
    """Copies of pydicom's CT_small.dcm as one series; file names run against the slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PixelData = (ds.pixel_array // 4 + 100 * k).astype(np.int16).tobytes()  # brighter with height
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.InstanceNumber = count - k
        ds.SeriesInstanceUID = uid
        for key, value in SECRETS.items() if secrets else ():
            setattr(ds, key, value)
        paths.append(folder / f"IM{start + count - k:04d}")
        ds.save_as(paths[-1])
    return paths


def test_dicom_series_sorted_by_position(tmp_path):
    _series(tmp_path / "series")
    dataset = dicom_dataset(tmp_path / "series", Fit(32))
    assert dataset.names == [f"series0_slice{k:03d}" for k in range(5)]
    means = dataset.images.mean(dim=(1, 2, 3))
    assert (means.diff() > 0).all()  # ImagePositionPatient order, not file or InstanceNumber order
    assert len(dicom_dataset(tmp_path / "series", Fit(16), axis=0)) == 128  # reformatted sagittal slices


def test_dicom_without_positions_uses_instance_number(tmp_path):
    for path in _series(tmp_path):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    means = dicom_dataset(tmp_path, Fit(16)).images.mean(dim=(1, 2, 3))
    assert (means.diff() < 0).all()  # InstanceNumber runs downwards


def test_two_series_and_window(tmp_path):
    _series(tmp_path, 3, uid="1.2.3.4")
    _series(tmp_path, 2, uid="1.2.3.5", start=10)
    dataset = dicom_dataset(tmp_path, Fit(16), window_cw=(40, 400))
    assert [n.split("_")[0] for n in dataset.names] == ["series0"] * 3 + ["series1"] * 2


def test_nothing_identifying_reaches_the_dataset(tmp_path):
    paths = _series(tmp_path)
    dataset = dicom_dataset(tmp_path, Fit(16))
    text = repr(dataset.names) + repr({k: v for k, v in vars(dataset).items() if not hasattr(v, "shape")})
    for value in [*SECRETS.values(), "Doe", "12345", "1970", "1.2.3.4", "Example"]:
        assert value not in text
    tags = identifying_tags(paths[0])
    assert set(SECRETS) <= set(tags) and {"StudyDate", "SeriesInstanceUID", "private tags"} <= set(tags)
    assert "SOPClassUID" not in tags and "ExposureTime" not in tags and "Rows" not in tags


def test_dicom_errors_name_the_file(tmp_path):
    _series(tmp_path)
    (tmp_path / "README").write_text("scanner notes")
    with pytest.raises(UserError, match=r"README: not a DICOM file"):
        dicom_dataset(tmp_path)
    (tmp_path / "README").unlink()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.ImagePositionPatient = [0.0, 0.0, 12.5]  # the next slice of the series, by position
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.save_as(tmp_path / "IM9999")
    with pytest.raises(UserError, match=r"IM9999: slice size 64x64 differs"):
        dicom_dataset(tmp_path)


def test_a_missing_slice_or_a_slice_of_another_orientation_is_refused(tmp_path):
    paths = _series(tmp_path, count=6)  # files named against the slice order: IM0006 is at 0 mm
    paths[3].unlink()  # the slice at 7.5 mm
    with pytest.raises(UserError, match=r"IM0002: 5 mm from the previous slice .*IM0004, .* 2.5 mm apart; a slice"):
        dicom_dataset(tmp_path)
    _series(tmp_path, count=6)
    ds = pydicom.dcmread(paths[5])
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(paths[5])
    with pytest.raises(
        UserError, match=r"IM0001: slice orientation \[0.0, 1.0, 0.0, 0.0, 0.0, -1.0\] differs from the \[1.0"
    ):
        dicom_dataset(tmp_path)


def test_two_slices_at_one_position(tmp_path):
    paths = _series(tmp_path, 3)
    ds = pydicom.dcmread(paths[0])
    ds.ImagePositionPatient = [0.0, 0.0, 2.5]
    ds.save_as(paths[0])
    with pytest.raises(UserError, match=r"IM000[23]: same slice position as .*IM000[23]"):
        dicom_dataset(tmp_path)


def test_single_dicom_file():
    dataset = dicom_dataset(Path(get_testdata_file("MR_small.dcm")), Fit(16))
    assert dataset.names == ["series0_slice000"] and dataset.in_channels == 1


def test_nifti_identifying_fields(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert identifying_tags(_save(img.get_fdata(), tmp_path / "clean.nii")) == []
    img.header["descrip"] = b"Doe^Jane 1970-01-01"
    nib.save(img, tmp_path / "named.nii")
    assert identifying_tags(tmp_path / "named.nii") == ["descrip"]
