"""Bringing images and masks of any size to the training size: resize, pad, centre crop or random crop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from meddiff.data.arrays import pad_to_square, resize_image, resize_mask
from meddiff.data.labels import IGNORE_INDEX

FitMode = Literal["resize", "pad", "center_crop", "random_crop"]


@dataclass(frozen=True)
class Fit:
    """How an image (and its mask) becomes ``size`` x ``size``; masks always use nearest neighbour.

    - ``resize``: stretch to the square (the aspect ratio is not kept).
    - ``pad``: centre-pad to a square (image black, mask 255 = ignore, because padding is not data), then resize.
    - ``center_crop``: resize so the shorter side is ``short_side`` (default ``size``; set it to the native
      size to crop without resizing), then keep the central square.
    - ``random_crop``: as ``center_crop``, but the square is drawn per sample at training time. Stored images
      are cut to the largest canvas every image of the dataset shares, so all can be held in one tensor.
    """

    size: int
    mode: FitMode = "resize"
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {self.size}")
        if self.short_side is not None and self.short_side < self.size:
            raise ValueError(f"short_side ({self.short_side}) must be at least size ({self.size})")

    @property
    def decode_side(self) -> int:
        """Smallest side a decoder may shrink an image to without losing detail we keep."""
        return self.size if self.mode in ("resize", "pad") else (self.short_side or self.size)

    @property
    def crop(self) -> int | None:
        """Window size for ``ArrayDataset(crop=...)``: only random crops are taken at training time."""
        return self.size if self.mode == "random_crop" else None

    def _shape(self, h: int, w: int) -> tuple[int, int]:
        if self.mode in ("resize", "pad"):
            return self.size, self.size
        scale = (self.short_side or self.size) / min(h, w)
        return max(round(h * scale), self.size), max(round(w * scale), self.size)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """``[C, H, W]`` float in [0, 1] -> fitted ``[C, h, w]`` in [0, 1]."""
        if self.mode == "pad":
            image = pad_to_square(image, 0.0)
        shape = self._shape(*image.shape[-2:])
        if tuple(image.shape[-2:]) != shape:
            image = resize_image(image, shape).clamp(0.0, 1.0)
        return center_crop(image, self.size) if self.mode == "center_crop" else image

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``[H, W]`` uint8 class ids -> fitted ``[h, w]`` uint8 (nearest neighbour)."""
        if self.mode == "pad":
            mask = pad_to_square(mask, IGNORE_INDEX)
        shape = self._shape(*mask.shape[-2:])
        if tuple(mask.shape[-2:]) != shape:
            mask = resize_mask(mask, shape).to(torch.uint8)
        return center_crop(mask, self.size) if self.mode == "center_crop" else mask


def center_crop(x: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Central ``height`` x ``width`` (default square) window of the last two dims."""
    width = height if width is None else width
    h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def stack_common(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack tensors after centre-cropping each to the largest canvas they all share."""
    height = min(t.shape[-2] for t in tensors)
    width = min(t.shape[-1] for t in tensors)
    return torch.stack([center_crop(t, height, width) for t in tensors])
