"""The embedded brain MRI slices: real anatomy with a 4-class tissue map, made offline from nilearn's files."""

import torch

from meddiff.data.samples import BRAIN_CLASSES, brain_mri


def test_brain_slices_are_images_with_tissue_labels():
    data = brain_mri(size=32)
    assert 100 < len(data) < 160 and data.images.shape[1:] == (1, 32, 32)
    assert data.images.min() == -1 and data.images.max() <= 1
    assert data.class_names == list(BRAIN_CLASSES) and set(data.masks.unique().tolist()) == {0, 1, 2, 3}
    assert len(set(data.names)) == len(data)
    middle = data.masks[len(data) // 2]
    white, grey = (middle == 3).float().mean(), (middle == 2).float().mean()
    assert white > 0.1 and grey > 0.1  # a mid-brain slice has both tissues in quantity
    brain = data.masks > 0
    assert data.images[:, 0][brain].mean() > data.images[:, 0][~brain].mean() + 1  # brain is bright, background dark


def test_levels_label_slices_from_inferior_to_superior_in_equal_shares():
    data = brain_mri(size=16, levels=4)
    assert data.attribute_names == [f"axial level {i}/4" for i in range(1, 5)]
    assert torch.equal(data.attributes, data.attributes.sort().values)
    counts = torch.bincount(data.attributes)
    assert counts.max() - counts.min() <= 1
    assert data[0]["attribute"] == 0 and brain_mri(size=16)[0].get("attribute") is None
