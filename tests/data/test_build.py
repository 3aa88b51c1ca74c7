import dataclasses
from pathlib import Path

import pytest
import torch

from meddiff.config import from_dict, load_config
from meddiff.data import ArrayDataset, DataConfig, build, build_dataset
from meddiff.errors import UserError

from .makers import image_mask_folder

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "configs" / "data").glob("*.yaml"))
# What each example gives (count, in_channels, in_channels_b, num_classes); ACDC checked on its val split.
EXPECTED = {
    "acdc": (210, 1, 0, 4),
    "cadis_relabelled_task1": (40, 0, 0, 8),
    "cadis_samples_mt": (4, 3, 0, 2),
    "cadis_trafas_task1": (1, 3, 0, 8),
    "cataract1k": (15, 3, 0, 2),
    "cataract_unlabelled": (100, 3, 0, 0),
    "catinstseg": (5, 3, 0, 2),
    "harvard_mri_pet": (42, 1, 3, 0),
    "harvard_mri_spect": (73, 1, 3, 0),
    "isbi_em_membrane": (30, 1, 0, 2),
}


def test_every_example_config_is_listed():
    assert sorted(p.stem for p in EXAMPLES) == sorted(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_configs_build(path, shared_data, repo_cwd):
    config = load_config(DataConfig, path)
    small = {"size": 32} if config.short_side is None else {"size": 32, "short_side": 128}
    if config.split_file is not None:
        small["split"] = "val"
    dataset = build_dataset(dataclasses.replace(config, **small))
    assert (len(dataset), dataset.in_channels, dataset.in_channels_b, dataset.num_classes) == EXPECTED[path.stem]
    sample = dataset[0]
    if dataset.in_channels:
        assert sample["image"].shape == (dataset.in_channels, 32, 32)
    if dataset.num_classes:
        assert sample["mask"].shape == (32, 32) and len(dataset.class_names) == dataset.num_classes
        found = set(dataset.masks.unique().tolist()) - {255}
        assert found <= set(range(dataset.num_classes))


def test_brain_mri_kind_passes_size_and_flips(monkeypatch):
    calls = []

    def fake_brain_mri(size, hflip, levels):  # the real one slices the MNI152 template; see test_samples.py
        calls.append((size, hflip, levels))
        return ArrayDataset(torch.zeros(2, 1, size, size), torch.zeros(2, size, size), ["a", "b"], ["bg"])

    monkeypatch.setattr(build, "brain_mri", fake_brain_mri)
    dataset = build_dataset(DataConfig(size=32, hflip=True, vflip=True, levels=3))
    assert calls == [(32, True, 3)] and dataset.vflip


def test_brain_mri_random_crops_are_windows_of_slices_at_the_short_side(monkeypatch):
    calls = []

    def fake_brain_mri(size, hflip, levels):
        calls.append(size)
        return ArrayDataset(torch.zeros(2, 1, size, size), torch.zeros(2, size, size), ["a", "b"], ["bg"])

    monkeypatch.setattr(build, "brain_mri", fake_brain_mri)
    dataset = build_dataset(DataConfig(size=32, fit="random_crop", short_side=128))
    assert calls == [128] and dataset.crop == 32 and dataset[0]["image"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="resize or random_crop"):
        DataConfig(fit="pad")


def test_yaml_config_with_class_map_and_remap(tmp_path):
    image_mask_folder(tmp_path / "set", classes=4)
    (tmp_path / "classes.yaml").write_text("".join(f"- {{name: c{i}, id: {i}}}\n" for i in range(4)))
    (tmp_path / "data.yaml").write_text(
        f"kind: image_mask_folder\nroot: {tmp_path / 'set'}\nclass_map: {tmp_path / 'classes.yaml'}\n"
        "remap: {0: [0], 1: [1, 2], 255: [3]}\nsize: 16\nfit: random_crop\nhflip: true\n"
    )
    dataset = build_dataset(load_config(DataConfig, tmp_path / "data.yaml"))
    assert dataset.class_names == ["c0", "c1+c2"] and dataset.crop == 16
    assert set(dataset.masks.unique().tolist()) == {0, 1, 255}


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"kind": "image_folder", "root": "x", "window": [40, 400]},
            r"'window' does not apply to kind 'image_folder' \(only to dicom, nifti\)",
        ),
        ({"kind": "image_folder"}, "'root' is required for kind 'image_folder'"),
        ({"kind": "nifti", "root": "x", "axis": 3}, "'axis' must be 0, 1 or 2"),
        ({"kind": "cadis", "root": "x", "cadis_task": "task4"}, "'data.cadis_task' must be one of"),
        ({"kind": "image_mask_folder", "root": "x", "roots": "y"}, "unknown key 'data.roots'"),
        ({"kind": "image_mask_folder", "root": "x", "fit": "squash"}, "'data.fit' must be one of"),
        (
            {"kind": "image_mask_folder", "root": "x", "size": 32, "fit": "random_crop", "short_side": 16},
            "short_side \\(16\\) must be at least size \\(32\\)",
        ),
        ({"kind": "image_mask_folder", "root": "x", "split_file": "s.csv"}, "'split' must name the split"),
        ({"kind": "dicom", "root": "x", "window": [40, 0]}, "'window' must be \\[center, width\\] with width > 0"),
    ],
)
def test_config_errors_name_the_key(data, message):
    with pytest.raises(UserError, match=message):
        from_dict(DataConfig, data, "data.")


def test_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'absent'}: dataset folder not found"):
        build_dataset(DataConfig(kind="image_mask_folder", root=tmp_path / "absent"))


def test_rotation_reaches_the_dataset_and_survives_choosing_images():
    from meddiff.tasks.segmenter import select_images, split_pixels

    dataset = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 16, "rotate": 20}))
    chosen = select_images(dataset, dataset.names[:2])
    assert dataset.rotate == chosen.rotate == split_pixels(chosen, 0.1, seed=0)[0].rotate == 20
    with pytest.raises(UserError, match="rotate"):
        from_dict(DataConfig, {"kind": "brain_mri", "rotate": 200})
