"""Per-case 3D scores of label volumes, the unit the semi-supervised cardiac literature reports (ACDC: one
case = one patient at one phase): per foreground class, Dice and HD95 of the whole volume.

- Dice_k = 2 |P_k ∩ T_k| / (|P_k| + |T_k|) over all voxels of the case; 1 when the class is absent from
  both, 0 when it is in only one.
- HD95_k: the 95th percentile of the surface distances pooled over both directions (every surface voxel
  of P_k to the nearest of T_k, and every one of T_k to P_k), in units of ``spacing`` (voxels by default),
  as medpy's ``hd95`` that SSL4MIS-style ACDC tables use. Undefined (NaN) when the class is absent from
  the prediction or the truth, so a missed structure never scores a flattering 0.

Hand-written on scipy's Euclidean distance transform: torchmetrics' Hausdorff distance has no percentile,
scikit-image's neither, and MONAI (which has one) is not a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass(frozen=True)
class VolumeScores:
    """``dice`` and ``hd95`` (float64 ``[K - 1]``, one per foreground class 1..K-1) of one case."""

    dice: np.ndarray
    hd95: np.ndarray


def _surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face-neighbour outside it (the volume's border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """HD95 between two boolean volumes (or images); NaN when either is empty."""
    if not pred.any() or not truth.any():
        return float("nan")
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    distances = np.concatenate([to_truth[pred_surface], to_pred[truth_surface]])
    return float(np.percentile(distances, 95))


def volume_scores(
    pred: torch.Tensor | np.ndarray,
    truth: torch.Tensor | np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
) -> VolumeScores:
    """Dice and HD95 of classes 1..``num_classes``-1 for one case: class-id volumes ``[D, H, W]`` (or images
    ``[H, W]``) of the same shape; ``spacing`` is the voxel size per axis (default 1)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if spacing is not None and len(spacing) != pred.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {pred.ndim}-D volume")
    dice, distance = [], []
    for k in range(1, num_classes):
        p, t = pred == k, truth == k
        total = int(p.sum()) + int(t.sum())
        dice.append(1.0 if total == 0 else 2 * int((p & t).sum()) / total)
        distance.append(hd95(p, t, spacing))
    return VolumeScores(np.array(dice), np.array(distance))
