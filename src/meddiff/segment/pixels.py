"""Which labelled pixels train the pixel classifier, which stop it, and where their features live.

Baranchuk et al. keep every pixel's feature vector in RAM (float32, ~2.2 GB per 256-px image at 8,448
dimensions). Here a class-balanced sample of the labelled pixels is kept instead, in fp16, in a file on
disk read through short-lived ``np.memmap`` views, so memory no longer grows with the number of images.
Balancing draws rare classes (a thin myocardium, an instrument tip) as often as the background, and the
classifier is trained and stopped on that balanced sample as it is. The ``reweight`` option instead weights
each class in the loss by (its pixels) / (its sampled pixels), an unbiased estimate of the every-pixel
loss; it is off by default. In benchmarks/segmentation.py on ACDC (20 labels, 20,000 of ~66,000 pixels)
the reweighted sample scored 8.1 mIoU points below training on every pixel (1 seed, with a weaker diffusion
model: the results file of commit 772d421), the sample as drawn +0.28 points (3 seeds,
benchmarks/results/segmentation.md); weights of ~10x on the background make the gradient noisy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from meddiff.data.labels import IGNORE_INDEX


@dataclass
class PixelConfig:
    """How many labelled pixels train and stop the classifier, and how their features are stored.

    max_pixels:   training pixels, drawn class-balanced over all labelled images (null: every pixel)
    val_fraction: share of each image's labelled pixels held out for early stopping (never trained on)
    val_pixels:   at most this many held-out pixels are scored (class-balanced as well)
    reweight:     weight classes in the loss by true/sampled frequency (the every-pixel class prior)
    prior_correction: the per-class logit shift applied at prediction (``segment.calibrate``): none (the
                  balanced sample's prior) | prior (log(true prior / training prior), Menon et al. 2021's
                  logit adjustment) | fitted (that shift moved to the best mIoU of the held-out labelled
                  pixels, weighted back to their true class frequencies); not with ``reweight``, which
                  corrects the prior in the loss already
    storage:      disk (np.memmap file, bounded memory) | memory (all rows in RAM, the reference path)
    fp16:         store features in float16 (half the bytes; the classifier computes in float32)
    """

    max_pixels: int | None = 100_000
    val_fraction: float = 0.1
    val_pixels: int = 10_000
    reweight: bool = False
    prior_correction: Literal["none", "prior", "fitted"] = "prior"
    storage: Literal["disk", "memory"] = "disk"
    fp16: bool = True

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or null (every pixel), got {self.max_pixels}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_pixels < 1:
            raise ValueError(f"val_pixels must be >= 1, got {self.val_pixels}")
        if self.prior_correction not in ("none", "prior", "fitted"):
            raise ValueError(f"prior_correction must be none, prior or fitted, got {self.prior_correction!r}")
        if self.reweight and self.prior_correction != "none":
            raise ValueError(
                "reweight and prior_correction both correct the class prior: choose one "
                "(set prior_correction: none to reweight the loss)"
            )


def held_out_pixels(masks: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Bool ``[N, H, W]``: a random ``fraction`` of the labelled pixels of every image, chosen by ``seed``,
    to be kept out of training and used for early stopping only."""
    draw = torch.rand(masks.shape, generator=torch.Generator().manual_seed(seed))
    return (draw < fraction) & (masks != IGNORE_INDEX)


def _water_fill(counts: torch.Tensor, budget: int) -> torch.Tensor:
    """Per-class quotas summing to ``min(budget, counts.sum())``, as equal as the counts allow."""
    quotas = torch.zeros_like(counts)
    remaining = budget
    present = [int(k) for k in counts.argsort() if counts[k] > 0]  # smallest class first
    for left, k in zip(range(len(present), 0, -1), present, strict=True):
        quotas[k] = min(int(counts[k]), remaining // left)
        remaining -= int(quotas[k])
    return quotas


@dataclass(frozen=True)
class PixelSample:
    """Sampled pixels of ``N`` images of size ``H x W``: sorted flat indices into ``[N, H, W]``, their
    labels, and per-class loss weights (true count / sampled count, mean 1 over the sample)."""

    flat: torch.Tensor
    labels: torch.Tensor
    class_weights: torch.Tensor
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.flat)

    def of_image(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``(ys, xs)`` of the pixels sampled in image ``index``, in sample order."""
        _, h, w = self.shape
        lo, hi = torch.searchsorted(self.flat, torch.tensor([index * h * w, (index + 1) * h * w])).tolist()
        pixel = self.flat[lo:hi] % (h * w)
        return pixel // w, pixel % w


def balanced_sample(
    masks: torch.Tensor, candidates: torch.Tensor, budget: int | None, num_classes: int, generator: torch.Generator
) -> PixelSample:
    """Up to ``budget`` pixels among ``candidates`` (bool ``[N, H, W]``, labelled ones only), split as
    equally over the classes as their counts allow and uniformly at random within a class; every candidate
    when ``budget`` is None or covers them all."""
    labels = masks.reshape(-1).long()
    valid = candidates.reshape(-1) & (labels != IGNORE_INDEX)
    counts = torch.bincount(labels[valid], minlength=num_classes)[:num_classes]
    if budget is None or budget >= int(counts.sum()):
        flat = torch.nonzero(valid)[:, 0]
        quotas = counts
    else:
        quotas = _water_fill(counts, budget)
        chosen = []
        for k in range(num_classes):  # a loop over classes; pixels are handled as whole tensors
            members = torch.nonzero(valid & (labels == k))[:, 0]
            keep = torch.randperm(len(members), generator=generator)[: int(quotas[k])]
            chosen.append(members[keep])
        flat = torch.cat(chosen).sort().values
    sampled = quotas > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[sampled] = counts[sampled].double() / quotas[sampled].double()
    weights *= quotas.sum().double() / max(1.0, float(counts.sum()))
    return PixelSample(flat, labels[flat], weights.float(), tuple(masks.shape))


class PixelStore:
    """Feature rows ``[rows, dims]`` with their labels: in a file (``path``) or in RAM (``path=None``).

    File rows are written and read through a fresh ``np.memmap`` per call, dropped at once: pages of an
    open mapping count towards the process's resident memory for as long as the mapping lives, so one
    long-lived mapping of a multi-GB file would grow to the file's size.
    """

    def __init__(self, path: Path | None, rows: int, dims: int, labels: torch.Tensor, fp16: bool = True):
        if len(labels) != rows:
            raise ValueError(f"{len(labels)} labels for {rows} rows")
        self.path, self.rows, self.dims = path, rows, dims
        self.dtype = np.dtype(np.float16 if fp16 else np.float32)
        self.labels = labels.long()
        if path is None:
            self._array = np.zeros((rows, dims), dtype=self.dtype)
        else:
            self._array = None
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(rows * dims * self.dtype.itemsize)  # sparse until written

    @property
    def nbytes(self) -> int:
        return self.rows * self.dims * self.dtype.itemsize

    def _view(self, mode: str, start: int = 0, count: int | None = None) -> np.ndarray:
        count = self.rows - start if count is None else count
        if self._array is not None:
            return self._array[start : start + count]
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode=mode,
            offset=start * self.dims * self.dtype.itemsize,
            shape=(count, self.dims),
        )

    def write(self, start: int, features: torch.Tensor) -> None:
        """Store ``features`` ``[n, dims]`` as rows ``start:start + n``."""
        view = self._view("r+", start, len(features))
        view[:] = features.detach().numpy().astype(self.dtype, copy=False)
        if isinstance(view, np.memmap):
            view.flush()
        del view

    def read(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Float32 features of the given rows (any order), as a new tensor."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # read the file front to back, then restore the order asked
        view = self._view("r")
        block = np.empty((len(rows), self.dims), dtype=np.float32)
        block[order] = view[rows[order]]
        del view
        return torch.from_numpy(block)

    def close(self) -> None:
        """Delete the file (a store is scratch space for one fit)."""
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
