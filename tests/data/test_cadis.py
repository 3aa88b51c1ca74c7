import os

import numpy as np
import pytest

from meddiff.data.cadis import CADIS_CLASSES, SPLITS, cadis_dataset, cadis_label_maps, cadis_remap, cadis_spec, video_of
from meddiff.data.fit import Fit
from meddiff.data.imagefiles import read_mask
from meddiff.errors import UserError

from .makers import label, rgb, write_image

TASKS = ("raw", "task1", "task2", "task3", "merged5")


def _histogram(ids: np.ndarray) -> np.ndarray:
    return np.bincount(ids.ravel(), minlength=256)


def test_task_tables():
    assert len(CADIS_CLASSES) == 36
    assert {t: len(cadis_spec(t).class_names) for t in TASKS} == {
        "raw": 36,
        "task1": 8,
        "task2": 17,
        "task3": 25,
        "merged5": 5,
    }
    for task in TASKS:  # every CaDIS id is mapped exactly once or ignored
        listed = [old for olds in cadis_remap(task).values() for old in olds]
        assert len(listed) == len(set(listed)) and set(listed) <= set(range(36))
    assert cadis_remap("task1")[7] == list(range(7, 36))
    assert cadis_remap("merged5") == {0: [0], 1: [4], 2: [6], 3: [5], 4: list(range(7, 36))}


def test_official_split_is_video_wise_and_disjoint():
    assert SPLITS["val"] == (5, 7, 16) and SPLITS["test"] == (2, 12, 22) and len(SPLITS["train"]) == 19
    assert sorted(sum(SPLITS.values(), ())) == list(range(1, 26))
    assert video_of("Video01") == 1 and video_of("Video12_frame000090") == 12


@pytest.mark.parametrize("task", TASKS)
def test_remaps_on_real_label_maps(shared_data, task):
    spec, remap = cadis_spec(task), cadis_remap(task)
    files = sorted((shared_data / "cadis_relabelled_masks" / "masks").glob("*.png"))
    assert len(files) == 40
    for path in files[::4]:
        stored = read_mask(path)
        before, after = _histogram(stored), _histogram(spec.apply(stored, path))
        mapped = 0
        for new, olds in remap.items():
            if new != 255:
                assert after[new] == before[olds].sum()
                mapped += after[new]
        assert after[255] == stored.size - mapped
        if task == "task1":
            assert after[7] == before[7:36].sum()


def test_original_rgb_and_rgba_label_maps_read_as_ids(shared_data):
    folder = shared_data / "cadis_relabelled_masks"
    for name in sorted(os.listdir(folder / "masks"))[:6]:
        assert np.array_equal(read_mask(folder / "masks_original" / name), read_mask(folder / "masks" / name))


def test_trafas_sample_task1_counts(shared_data):
    path = shared_data / "cadis_sample_trafas" / "masks" / "sample.png"
    before = _histogram(read_mask(path))
    expected = {0: 42973, 1: 158714, 2: 44121, 3: 13479, 4: 30721, 5: 97773, 6: 98417, 11: 22184, 16: 4152, 23: 5866}
    assert {k: int(v) for k, v in enumerate(before) if v} == expected  # SOURCE.md's data.csv row
    after = _histogram(cadis_spec("task1").apply(read_mask(path), path))
    assert after[7] == 22184 + 4152 + 5866 and after[:7].tolist() == before[:7].tolist()
    merged = _histogram(cadis_spec("merged5").apply(read_mask(path), path))
    assert merged[[0, 1, 2, 3, 4, 255]].tolist() == [42973, 30721, 98417, 97773, 32202, 158714 + 44121 + 13479]


def test_trafas_flat_layout_as_dataset(shared_data):
    dataset = cadis_dataset(shared_data / "cadis_sample_trafas", "task2", fit=Fit(32))
    assert len(dataset) == 1 and dataset.num_classes == 17 and dataset.in_channels == 3
    with pytest.raises(UserError, match="no CaDIS video number in the name"):
        cadis_dataset(shared_data / "cadis_sample_trafas", split="train")


def test_relabelled_masks_as_masks_only_dataset(shared_data):
    folder = shared_data / "cadis_relabelled_masks" / "masks"
    dataset = cadis_label_maps(folder, "task1", fit=Fit(32))
    assert len(dataset) == 40 and dataset.in_channels == 0 and dataset.num_classes == 8
    assert set(dataset[0]) == {"mask", "name"} and dataset[0]["mask"].max() <= 7
    val = cadis_label_maps(folder, "task1", "val", Fit(16))
    assert {video_of(n) for n in val.names} == {7, 16}
    assert (
        len(cadis_label_maps(folder, "task1", "test", Fit(16)))
        + len(val)
        + len(cadis_label_maps(folder, "task1", "train", Fit(16)))
        == 40
    )


def _official(root, video: int, frame: int, image: np.ndarray, ids: np.ndarray) -> None:
    name = f"Video{video}_frame{frame:06d}.png"
    write_image(root / f"Video{video:02d}" / "Images" / name, image)
    write_image(root / f"Video{video:02d}" / "Labels" / name, ids)


def test_official_layout_and_splits(tmp_path, shared_data):
    trafas = shared_data / "cadis_sample_trafas"
    for kind, src in (("Images", "images"), ("Labels", "masks")):  # link, never copy, the real frame
        (tmp_path / "Video01" / kind).mkdir(parents=True)
        os.symlink(trafas / src / "sample.png", tmp_path / "Video01" / kind / "Video1_frame000090.png")
    _official(tmp_path, 5, 10, rgb(27, 48), label(27, 48, 36))
    _official(tmp_path, 2, 10, rgb(27, 48), label(27, 48, 36, seed=1))
    _official(tmp_path, 2, 20, rgb(27, 48, seed=2), label(27, 48, 36, seed=2))
    assert cadis_dataset(tmp_path, "task1", "train", Fit(16)).names == ["Video1_frame000090"]
    assert cadis_dataset(tmp_path, "task1", "val", Fit(16)).names == ["Video5_frame000010"]
    assert len(cadis_dataset(tmp_path, "task3", "test", Fit(16))) == 2
    assert len(cadis_dataset(tmp_path, "raw", None, Fit(16))) == 4


def test_official_layout_errors(tmp_path):
    _official(tmp_path, 5, 10, rgb(27, 48), label(27, 48, 36))
    bad = label(27, 48, 36)
    bad[0, 0] = 40
    _official(tmp_path, 5, 20, rgb(27, 48), bad)
    with pytest.raises(
        UserError,
        match=r"Video5_frame000020\.png: mask contains class id\(s\) 40 that are not in "
        r"the 36 CaDIS classes",
    ):
        cadis_dataset(tmp_path)
    with pytest.raises(UserError, match="no Video folder of split 'test'"):
        cadis_dataset(tmp_path, split="test")
    write_image(tmp_path / "Video05" / "Images" / "Video5_frame000030.png", rgb(27, 48))
    with pytest.raises(UserError, match=r"Video5_frame000030\.png: frame has no label map"):
        cadis_dataset(tmp_path)
