"""Islands: connected regions of one class smaller than a set size, refilled from their surroundings.

A pixel classifier decides each pixel alone, so its masks carry specks of one class inside another. A
region (4-connected, of one class) of fewer than ``min_size`` pixels takes, pixel by pixel, the class of the
nearest pixel outside every small region. scikit-image's ``remove_small_objects`` / ``remove_small_holes``
only work on one binary mask and set removed pixels to background, which would turn a speck of tissue
inside another tissue into background; here every class's small regions are found with
``skimage.measure.label`` and filled with scipy's exact Euclidean distance transform (one call, no loop
over pixels).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

from meddiff.data.labels import IGNORE_INDEX


def small_regions(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Boolean ``[H, W]``: the pixels of the 4-connected single-class regions of ``labels`` (int ``[H, W]``)
    smaller than ``min_size`` pixels."""
    small = np.zeros(labels.shape, dtype=bool)
    for k in np.unique(labels):
        regions = measure.label(labels == k, connectivity=1)
        sizes = np.bincount(regions.ravel())
        tiny = sizes < min_size
        tiny[0] = False  # 0 = outside this class
        small |= tiny[regions]
    return small


def fill_islands(labels: torch.Tensor, min_size: int) -> torch.Tensor:
    """``labels`` (int ``[H, W]``) with every region smaller than ``min_size`` pixels given the class of the
    nearest pixel outside all such regions; unchanged when ``min_size`` <= 1 or no region is large enough
    to take from."""
    if min_size <= 1:
        return labels
    array = labels.cpu().numpy()
    small = small_regions(array, min_size)
    if not small.any() or small.all():
        return labels
    nearest = ndimage.distance_transform_edt(small, return_distances=False, return_indices=True)
    return torch.from_numpy(array[tuple(nearest)]).to(labels.device, labels.dtype)


# the sizes label_min_island tries, largest first, and the share of the labelled pixels it may change
CANDIDATE_SIZES = (32, 16, 8, 4)
LABEL_TOLERANCE = 0.002


def label_min_island(masks: torch.Tensor) -> int:
    """The island filter's size that the labels themselves support: the largest of ``CANDIDATE_SIZES`` whose
    filter changes at most ``LABEL_TOLERANCE`` of the labelled (not ``IGNORE_INDEX``) pixels of ``masks``
    (int ``[N, H, W]``), else 0 (off). Labels drawn as smooth regions (cardiac structures) get a large size;
    labels with many true specks (thresholded tissue maps, thin fragments) get a small one or none, since
    there the filter would erase anatomy the annotators drew."""
    labelled = masks != IGNORE_INDEX
    total = int(labelled.sum())
    for size in CANDIDATE_SIZES:
        changed = sum(int(((fill_islands(m, size) != m) & v).sum()) for m, v in zip(masks, labelled, strict=True))
        if total and changed <= LABEL_TOLERANCE * total:
            return size
    return 0


def scaled_min_size(min_size: int, working_side: int, shape: tuple[int, ...]) -> int:
    """``min_size`` given in pixels at the classifier's working size (``working_side`` squared), scaled to an
    image of ``shape`` (``[..., H, W]``) by the ratio of areas, so that a setting means the same share of the
    image at any resolution."""
    area = shape[-2] * shape[-1]
    return max(1, round(min_size * area / working_side**2)) if min_size > 1 else min_size
