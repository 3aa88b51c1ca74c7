"""An in-memory dataset of image (+ mask) tensors, and the resizing every loader shares."""

from __future__ import annotations

from typing import Sequence, TypedDict

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class Sample(TypedDict, total=False):
    """What every meddiff dataset yields, so every task accepts any of them.

    image:   float32 ``[C, H, W]`` in [-1, 1]
    mask:    int64 ``[H, W]`` class ids, 255 = ignore (absent for unlabelled data)
    image_b: float32 ``[C, H, W]`` second modality of a registered pair (fusion)
    name:    identifier unique within the dataset, free of patient identifiers
    """

    image: torch.Tensor
    mask: torch.Tensor
    image_b: torch.Tensor
    name: str


def pad_to_square(x: torch.Tensor, value: float) -> torch.Tensor:
    """Centre-pad the last two dims of ``x`` to a square with ``value``."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=value)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``[C, H, W]`` or ``[N, C, H, W]`` float images."""
    batched = image.dim() == 4
    out = F.interpolate(image if batched else image[None], size=size, mode="bilinear", antialias=True,
                        align_corners=False)
    return out if batched else out[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[H, W]`` or ``[N, H, W]`` integer masks (class ids stay valid)."""
    batched = mask.dim() == 3
    m = (mask if batched else mask[None])[:, None].float()
    out = F.interpolate(m, size=size, mode="nearest-exact")[:, 0].long()
    return out if batched else out[0]


class ArrayDataset(Dataset):
    """Images ``[N, C, H, W]`` in [-1, 1] and optional masks ``[N, H, W]`` held in memory.

    ``hflip`` flips a sample left-right with probability 0.5 (torch's global RNG, so a seeded trainer
    replays the same augmentations on resume).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor | None, names: Sequence[str],
                 class_names: Sequence[str] | None = None, hflip: bool = False):
        if masks is not None and masks.shape[0] != images.shape[0]:
            raise ValueError("images and masks must have the same count")
        self.images, self.masks, self.names = images.float(), masks, list(names)
        self.class_names = list(class_names) if class_names is not None else None
        self.hflip = hflip

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        mask = self.masks[index] if self.masks is not None else None
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        sample: Sample = {"image": image, "name": self.names[index]}
        if mask is not None:
            sample["mask"] = mask
        return sample
