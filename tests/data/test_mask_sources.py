"""Mask sources for synthesis: folders read like the training data, CaDIS remaps, and augmentation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meddiff.data.arrays import rotate_mask
from meddiff.data.classmap import LabelSpec, label_spec
from meddiff.data.fit import Fit
from meddiff.data.mask_sources import (
    MaskAugment,
    MaskSet,
    augment_masks,
    elastic,
    paste,
    read_cadis_maps,
    read_mask_folder,
)
from meddiff.errors import UserError

NAMES = ("background", "cell", "membrane")


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _disc(size=32, radius=8, value=1, centre=None):
    rows, cols = np.mgrid[:size, :size]
    cy, cx = centre or (size // 2, size // 2)
    return np.where((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2, value, 0).astype(np.uint8)


def test_a_folder_is_read_through_the_training_data_remap_and_fitted(tmp_path):
    stored = np.where(_disc(64) == 1, 0, 255).astype(np.uint8)  # ISBI style: 0 = membrane, 255 = interior
    _save(tmp_path / "data" / "masks" / "a.png", stored)
    spec = label_spec(remap={0: [255], 1: [0]}, class_names=["interior", "membrane"])
    masks = read_mask_folder(tmp_path / "data", spec, ["interior", "membrane"], Fit(32))
    assert masks.names == ["a"] and masks.masks.shape == (1, 32, 32)
    assert masks.masks[0, 16, 16] == 1 and masks.masks[0, 0, 0] == 0
    assert masks.origins[0].endswith("masks/a.png")


def test_an_id_outside_the_model_classes_names_the_file(tmp_path):
    _save(tmp_path / "b.png", np.full((8, 8), 5))
    with pytest.raises(UserError, match=r"b\.png: mask contains class id"):
        read_mask_folder(tmp_path, LabelSpec(NAMES, source="the model"), NAMES, Fit(8))


def test_a_generated_folder_must_name_the_model_classes(tmp_path):
    _save(tmp_path / "masks" / "s.png", _disc(8, 2, value=2))
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"class_names": ["bg", "tumour"]}, "files": []}))
    with pytest.raises(UserError, match=r"manifest\.json: masks of classes"):
        read_mask_folder(tmp_path, LabelSpec(), NAMES, Fit(8))
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"class_names": list(NAMES)}, "files": []}))
    assert read_mask_folder(tmp_path, LabelSpec(), NAMES, Fit(8)).masks.max() == 2


def test_cadis_label_maps_are_remapped_to_the_task(shared_data):
    folder = shared_data / "cadis_relabelled_masks" / "masks"
    task1 = ("Pupil", "Surgical Tape", "Hand", "Eye Retractors", "Iris", "Skin", "Cornea", "Instrument")
    masks = read_cadis_maps(folder, "task1", task1, Fit(64))
    assert len(masks) == 40 and masks.masks.shape[1:] == (64, 64)
    assert set(masks.masks.unique().tolist()) <= set(range(8)) and (masks.masks == 7).any()
    with pytest.raises(UserError, match="CaDIS merged5 has classes"):
        read_cadis_maps(folder, "merged5", task1, Fit(64))


def test_rotation_keeps_class_ids_and_marks_new_corners_ignored():
    mask = np.ones((32, 32), np.uint8)
    turned = rotate_mask(mask, 45)
    assert set(np.unique(turned)) == {1, 255} and turned[16, 16] == 1 and turned[0, 0] == 255
    assert np.array_equal(rotate_mask(mask, 0), mask)


def test_elastic_deformation_moves_boundaries_but_keeps_the_classes():
    mask = _disc(48, 12, value=2)
    warped = elastic(mask, 4.0, 4.0, np.random.default_rng(0))
    assert set(np.unique(warped)) == {0, 2}
    changed = (warped != mask).mean()
    assert 0 < changed < 0.2
    assert np.array_equal(warped, elastic(mask, 4.0, 4.0, np.random.default_rng(0)))


def test_pasting_copies_the_region_of_a_class_from_the_donor():
    target, donor = _disc(16, 3, value=1), _disc(16, 2, value=2, centre=(3, 3))
    pasted = paste(target, donor, [2])
    assert np.array_equal(pasted[donor == 2], donor[donor == 2])
    assert np.array_equal(pasted[donor != 2], target[donor != 2])


def _set(*arrays):
    masks = torch.from_numpy(np.stack(arrays))
    names = [f"m{i}" for i in range(len(arrays))]
    return MaskSet(masks, names, names, NAMES)


def test_augmentation_is_a_function_of_seed_and_position():
    masks = _set(_disc(32, 8, 1), _disc(32, 5, 2, centre=(6, 6)))
    config = MaskAugment(hflip=True, vflip=True, rotate=30, elastic=2, paste_classes=[2])
    first, records = augment_masks(masks, [0, 0, 1], config, seed=3)
    again, _ = augment_masks(masks, [0, 0], config, seed=3)
    assert torch.equal(first[:2], again)
    assert not torch.equal(first[0], first[1])  # two copies of one mask differ
    assert records[0]["paste_from"] == "m1" and set(records[0]) >= {"rotate", "elastic"}
    assert (first[0] == 2).any()  # the pasted class arrived
    assert "paste_from" not in records[2]  # m1 is the only mask with class 2: nothing to paste into it
    assert set(first.unique().tolist()) <= {0, 1, 2, 255}


def test_pasting_needs_another_mask_with_that_class():
    masks = _set(_disc(16, 3, 1), _disc(16, 3, 1))
    with pytest.raises(UserError, match="no mask contains class"):
        augment_masks(masks, [0], MaskAugment(paste_classes=[2]), seed=0)
    with pytest.raises(UserError, match="paste class 7"):
        augment_masks(masks, [0], MaskAugment(paste_classes=[7]), seed=0)
