"""Per-class IoU and Dice, mIoU and mean Dice, from a confusion matrix accumulated over a whole test set.

Semantics (the same for the streaming ``SegmentationMeter`` and the one-shot ``segmentation_scores``):

- Scores are pooled over the whole set: every labelled pixel of every image counts once in one confusion
  matrix (rows = ground truth, columns = prediction), and IoU_k = TP / (TP + FP + FN),
  Dice_k = 2 TP / (2 TP + FP + FN) are computed from it at the end. They are not per-image averages,
  so a large test set never has to be held in memory and small structures in one image do not dominate.
- Pixels whose ground truth is ``IGNORE_INDEX`` (255) are excluded whatever was predicted there.
- Class 0 is background. It is included in the means by default (``include_background=True``), which
  raises mIoU on images that are mostly background; pass ``include_background=False`` to average over the
  foreground classes only. The per-class vectors always list every class, background included.
- A class absent from both the prediction and the ground truth in the whole set has no defined IoU/Dice
  (0 / 0): its entry is NaN and it is left out of the means (a NaN mean means no class was scorable).
  A class present in only one of them scores 0 and does count.

``per_image_scores`` gives the same scores image by image (one confusion matrix per image, the same NaN
rule per image), for the per-case tables the field reports (mean and spread of per-image Dice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError


@dataclass(frozen=True)
class SegmentationScores:
    """Per-class ``iou`` and ``dice`` (float64 ``[K]``, NaN = class absent everywhere), their means over
    the included classes, and the ``confusion`` matrix (int64 ``[K, K]``, rows ground truth)."""

    iou: torch.Tensor
    dice: torch.Tensor
    miou: float
    mean_dice: float
    confusion: torch.Tensor
    include_background: bool

    def per_class(self, class_names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """``{class name: {"iou": ..., "dice": ...}}``; names default to the class ids as strings."""
        names = list(class_names) if class_names is not None else [str(k) for k in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise UserError(f"'class_names' has {len(names)} names for {len(self.iou)} classes")
        return {
            name: {"iou": float(i), "dice": float(d)} for name, i, d in zip(names, self.iou, self.dice, strict=True)
        }


def _iou_dice(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU and Dice (float64, NaN for a class in neither ground truth nor prediction) of one or a
    batch of confusion matrices ``[..., K, K]`` (rows ground truth)."""
    cm = confusion.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    union = cm.sum(dim=-2) + cm.sum(dim=-1) - tp  # tp + fp + fn
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union == 0, nan, tp / union.clamp(min=1))
    dice = torch.where(union == 0, nan, 2 * tp / (union + tp).clamp(min=1))
    return iou, dice


def scores_from_confusion(confusion: torch.Tensor, include_background: bool = True) -> SegmentationScores:
    """IoU / Dice per class and their NaN-skipping means from a ``[K, K]`` confusion matrix."""
    confusion = confusion.to(torch.int64)
    iou, dice = _iou_dice(confusion)
    first = 0 if include_background else 1
    return SegmentationScores(
        iou=iou,
        dice=dice,
        miou=float(iou[first:].nanmean()),
        mean_dice=float(dice[first:].nanmean()),
        confusion=confusion,
        include_background=include_background,
    )


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise UserError(f"'num_classes' must be at least 2 (background + one class), got {num_classes}")


def _check_masks(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    """UserErrors for masks of other shapes, float masks and class ids outside ``0..num_classes - 1``."""
    if pred.shape != target.shape:
        raise UserError(f"'pred' has shape {tuple(pred.shape)} but 'target' has {tuple(target.shape)}; they must match")
    if pred.is_floating_point() or target.is_floating_point():
        raise UserError(
            "'pred' and 'target' must be integer class-id masks, not float tensors "
            "(take the argmax of the logits first)"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise UserError(f"'pred' holds class ids outside 0..{num_classes - 1}")
    labelled = target[target != IGNORE_INDEX]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() >= num_classes):
        raise UserError(
            f"'target' holds class ids outside 0..{num_classes - 1} (other than the ignore index {IGNORE_INDEX})"
        )


class SegmentationMeter:
    """Streaming segmentation scores: ``update`` with batches of masks, ``compute`` at the end.

    Holds only a ``[K, K]`` confusion matrix (torchmetrics' ``MulticlassConfusionMatrix``).
    """

    def __init__(self, num_classes: int, include_background: bool = True):
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.include_background = include_background
        self._confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` int ``[N, H, W]`` (or ``[H, W]``) class ids; ``target`` may
        hold ``IGNORE_INDEX``."""
        _check_masks(pred, target, self.num_classes)
        self._confusion.update(pred.long().reshape(-1), target.long().reshape(-1))

    def compute(self) -> SegmentationScores:
        """Scores of everything added since construction or the last ``reset``."""
        return scores_from_confusion(self._confusion.compute(), self.include_background)

    def reset(self) -> None:
        """Forget all added batches."""
        self._confusion.reset()


def segmentation_scores(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, include_background: bool = True
) -> SegmentationScores:
    """One-shot version of ``SegmentationMeter`` for masks that fit in memory."""
    meter = SegmentationMeter(num_classes, include_background)
    meter.update(pred, target)
    return meter.compute()


@dataclass(frozen=True)
class PerImageScores:
    """Scores of each image alone: ``iou`` and ``dice`` float64 ``[N, K]`` (NaN where the class is in
    neither the image's prediction nor its ground truth), ``miou`` and ``mean_dice`` ``[N]`` (NaN-skipping
    means over the included classes)."""

    iou: torch.Tensor
    dice: torch.Tensor
    miou: torch.Tensor
    mean_dice: torch.Tensor
    include_background: bool


def per_image_scores(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, include_background: bool = True
) -> PerImageScores:
    """IoU and Dice of every image of ``pred`` / ``target`` (int ``[N, H, W]`` class ids, ``target`` may hold
    ``IGNORE_INDEX``), each from that image's own confusion matrix."""
    _check_num_classes(num_classes)
    _check_masks(pred, target, num_classes)
    n = pred.shape[0]
    labelled = target != IGNORE_INDEX
    image = torch.arange(n).view(n, *([1] * (pred.dim() - 1))).expand_as(pred)
    cell = (image * num_classes + target.long()) * num_classes + pred.long()  # (image, truth, prediction)
    confusion = torch.bincount(cell[labelled], minlength=n * num_classes**2).view(n, num_classes, num_classes)
    iou, dice = _iou_dice(confusion)
    first = 0 if include_background else 1
    return PerImageScores(iou, dice, iou[:, first:].nanmean(dim=1), dice[:, first:].nanmean(dim=1), include_background)
