"""Embedded demo data that ships with meddiff's dependencies: no download, no licence question.

``brain_mri`` slices the MNI152 2009a T1 template and its grey/white-matter probability maps, which are
bundled inside the ``nilearn`` wheel, into real 2D axial MRI slices with a 4-class tissue label map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from meddiff.data.arrays import ArrayDataset, pad_to_square, resize_image, resize_mask

BRAIN_CLASSES = ("background", "other brain tissue", "grey matter", "white matter")


@lru_cache(maxsize=1)
def _mni152_volumes() -> tuple[np.ndarray, np.ndarray]:
    """T1 intensities in [0, 1] and 4-class labels, both ``[X, Y, Z]`` at 1 mm."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1).get_fdata().astype(np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0.5
    grey = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    other = 1.0 - grey - white
    tissue = np.argmax(np.stack([other, grey, white]), axis=0) + 1  # 1 other, 2 grey, 3 white
    labels = np.where(brain, tissue, 0).astype(np.uint8)
    t1 = np.clip(t1 / np.percentile(t1[brain], 99.5), 0.0, 1.0)
    return t1, labels


def brain_mri(size: int = 64, min_brain_fraction: float = 0.08, hflip: bool = False, levels: int = 0) -> ArrayDataset:
    """Axial T1 slices of the MNI152 template as ``size`` x ``size`` images with tissue labels.

    Keeps slices where brain covers at least ``min_brain_fraction`` of the (square-padded) slice; at the
    default that is about 130 slices. Classes: 0 background, 1 other brain tissue (incl. CSF),
    2 grey matter, 3 white matter. Images are in [-1, 1], anterior at the top. With ``levels > 0`` each
    slice also carries an ``attribute``: its axial level, in ``levels`` bins of equal slice count from
    inferior (0) to superior, for level-conditional generation.
    """
    t1, labels = _mni152_volumes()
    # [X, Y, Z] -> [Z, Y, X] slices, flipped so anterior is up and the patient's left is on the right.
    images = torch.from_numpy(np.ascontiguousarray(t1.transpose(2, 1, 0)[:, ::-1]))
    masks = torch.from_numpy(np.ascontiguousarray(labels.transpose(2, 1, 0)[:, ::-1])).long()
    # Crop to the brain's bounding box over the whole volume (plus a margin) so the brain fills the frame.
    ys, xs = torch.nonzero(masks.amax(dim=0) > 0, as_tuple=True)
    margin = 4
    y0, y1 = max(int(ys.min()) - margin, 0), int(ys.max()) + margin + 1
    x0, x1 = max(int(xs.min()) - margin, 0), int(xs.max()) + margin + 1
    images, masks = images[:, y0:y1, x0:x1], masks[:, y0:y1, x0:x1]
    images, masks = pad_to_square(images, 0.0), pad_to_square(masks, 0)
    keep = (masks > 0).float().mean(dim=(1, 2)) >= min_brain_fraction
    slice_ids = torch.nonzero(keep)[:, 0].tolist()
    images = resize_image(images[keep][:, None], (size, size)).clamp(0, 1) * 2 - 1
    masks = resize_mask(masks[keep], (size, size))
    names = [f"mni152_axial_z{z:03d}" for z in slice_ids]
    if levels <= 0:
        return ArrayDataset(images, masks, names, BRAIN_CLASSES, hflip=hflip)
    attributes = torch.arange(len(names)) * levels // len(names)
    level_names = [f"axial level {i + 1}/{levels}" for i in range(levels)]
    return ArrayDataset(
        images, masks, names, BRAIN_CLASSES, hflip=hflip, attributes=attributes, attribute_names=level_names
    )
