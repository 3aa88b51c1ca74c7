"""The per-class logit shift a pixel classifier predicts with (``PixelConfig.prior_correction``).

The classifier trains on a class-balanced pixel sample, so left alone it predicts as if every class were
equally likely. ``prior`` shifts its logits by log(true prior / training prior) (logit adjustment, Menon et
al. 2021), exact for a calibrated classifier; ``fitted`` starts from that shift and moves each class's
shift to where the held-out labelled pixels, weighted back to their true class frequencies, score the
highest mIoU, for classifiers whose scores are not calibrated probabilities (an ensemble's majority vote of
early-stopped MLPs).
"""

from __future__ import annotations

import numpy as np
import torch

from meddiff.segment.ensemble import MLPEnsemble, vote
from meddiff.segment.pixels import PixelSample, PixelStore


def prior_bias(sample: PixelSample) -> torch.Tensor:
    """Per-class logit shift ``log(true prior / training prior)`` for a classifier trained on ``sample``: the
    log of its class weights (true count / sampled count), up to a constant that no decision depends on.
    A class with no sampled pixel gets a large negative shift (it was never learnt)."""
    return sample.class_weights.clamp(min=1e-12).log()


def weighted_miou(pred: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> float:
    """mIoU of class ids ``pred`` against ``target`` (both ``[P]``), each pixel counted with the weight of
    its true class, over the classes present in ``target``. Hand-written: torchmetrics' confusion matrices
    take no sample weights."""
    classes = len(class_weights)
    weights = class_weights.double()[target]
    confusion = torch.bincount(target * classes + pred, weights=weights, minlength=classes**2).view(classes, classes)
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = confusion.sum(1) > 0
    return float((hits[present] / union[present].clamp(min=1e-12)).mean())


@torch.no_grad()
def held_out_logits(model: MLPEnsemble, store: PixelStore, train_rows: int, rows_per_read: int = 8192) -> torch.Tensor:
    """Member logits ``[M, P, C]`` (on the CPU) of the store's held-out rows (those after ``train_rows``)."""
    model.eval()
    device = next(model.parameters()).device
    rows = np.arange(train_rows, store.rows)
    starts = range(0, len(rows), rows_per_read)
    parts = [model(store.read(rows[s : s + rows_per_read]).to(device)).cpu() for s in starts]
    return torch.cat(parts, dim=1)


def fit_bias(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor,
    start: torch.Tensor,
    span: float = 4.0,
    points: int = 33,
    rounds: int = 2,
) -> torch.Tensor:
    """The per-class shift that maximises ``weighted_miou`` of ``vote(logits, shift)`` on held-out pixels
    (``logits`` ``[M, P, C]``, ``labels`` ``[P]``, ``class_weights`` true / sampled count per class):
    coordinate search over classes 1.. (class 0 stays, only differences matter), each within ``start ±
    span`` on ``points`` values, ``rounds`` times; among equal scores the value nearest ``start`` wins."""
    bias = start.clone().float()
    labels = labels.long()
    offsets = torch.linspace(-span, span, points)
    order = torch.argsort(offsets.abs(), stable=True)  # try the smallest moves first: ties keep them
    for _ in range(rounds):
        for k in range(1, len(bias)):
            best_value, best_score = bias[k].item(), -1.0
            for value in (start[k] + offsets[order]).tolist():
                trial = bias.clone()
                trial[k] = value
                score = weighted_miou(vote(logits, trial).labels, labels, class_weights)
                if score > best_score + 1e-9:
                    best_value, best_score = value, score
            bias[k] = best_value
    return bias
