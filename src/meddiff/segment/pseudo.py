"""Pseudo-labels for self-training: a teacher labels unlabelled images and only its surest pixels count.

Per predicted class, the ``keep`` share of its pixels with the highest confidence is kept and the rest is set
to ``IGNORE_INDEX``. Ranking within each class (not one global threshold) keeps the small structures in the
training set: a global cut would keep mostly the background, on which every teacher is surest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meddiff.data.labels import IGNORE_INDEX
from meddiff.segment.islands import fill_islands
from meddiff.segment.pipeline import PixelClassifier


@dataclass
class PseudoLabels:
    """Teacher masks ``[N, H, W]`` (uint8, ``IGNORE_INDEX`` where not kept) and, per class, how many pixels the
    teacher gave it and how many were kept."""

    masks: torch.Tensor
    predicted: list[int]
    kept: list[int]


def confident_labels(
    labels: torch.Tensor,
    confidence: torch.Tensor,
    num_classes: int,
    keep: float,
    eligible: torch.Tensor | None = None,
) -> PseudoLabels:
    """Keep, within each class of ``labels`` (int ``[N, H, W]``), the ``keep`` share of its ``eligible``
    pixels (default all) with the highest ``confidence`` (float, same shape); ties at the cut are kept."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    eligible = torch.ones_like(labels, dtype=torch.bool) if eligible is None else eligible
    masks = torch.full(labels.shape, IGNORE_INDEX, dtype=torch.uint8)
    predicted, kept = [], []
    for k in range(num_classes):
        of_class = labels == k
        candidates = of_class & eligible
        count = int(candidates.sum())
        predicted.append(int(of_class.sum()))
        if count == 0:
            kept.append(0)
            continue
        values = confidence[candidates].float()
        drop = count - max(1, round(keep * count))  # kthvalue is 1-based: the drop-th lowest is the last dropped
        cut = values.kthvalue(drop).values if drop > 0 else values.min() - 1
        chosen = candidates & (confidence.float() > cut)
        masks[chosen] = k
        kept.append(int(chosen.sum()))
    return PseudoLabels(masks, predicted, kept)


@torch.no_grad()
def classifier_pseudo_labels(
    classifier: PixelClassifier,
    images: torch.Tensor,
    num_classes: int,
    keep: float,
    max_disagreement: float,
    min_island: int,
) -> PseudoLabels:
    """The pixel classifier as teacher on working-size ``images`` ``[N, C, H, W]`` in [-1, 1]: its vote (with
    the run's island filter) as labels, 1 - entropy of its mean prediction as confidence; pixels where more
    than ``max_disagreement`` of the members are outvoted are never kept."""
    vote = classifier.predict(images)
    labels = torch.stack([fill_islands(m, min_island) for m in vote.labels])
    return confident_labels(labels, 1 - vote.entropy, num_classes, keep, vote.disagreement <= max_disagreement)


@torch.no_grad()
def network_pseudo_labels(
    network: torch.nn.Module, images: torch.Tensor, num_classes: int, keep: float, batch_size: int = 8
) -> PseudoLabels:
    """A segmentation network (``images -> logits``) as teacher: its arg-max as labels, its softmax probability
    of that class as confidence."""
    device = next(network.parameters()).device
    network.eval()
    probabilities = torch.cat(
        [
            network(images[i : i + batch_size].float().to(device)).float().softmax(dim=1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )
    confidence, labels = probabilities.max(dim=1)
    return confident_labels(labels, confidence, num_classes, keep)
