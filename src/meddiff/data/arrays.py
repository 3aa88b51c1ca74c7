"""An in-memory dataset of image (+ mask) tensors, and the resizing every loader shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.mirror import NO_MIRROR, Mirror, flip_mask


class Sample(TypedDict, total=False):
    """What every meddiff dataset yields, so every task accepts any of them.

    image:   float32 ``[C, H, W]`` in [-1, 1]
    mask:    int64 ``[H, W]`` class ids, 255 = ignore (absent for unlabelled data)
    image_b: float32 ``[C, H, W]`` second modality of a registered pair (fusion)
    attribute: int64 scalar, an image-level label (e.g. slice level, scanner) for conditional generation
    name:    identifier unique within the dataset, free of patient identifiers
    """

    image: torch.Tensor
    mask: torch.Tensor
    image_b: torch.Tensor
    attribute: torch.Tensor
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
    out = F.interpolate(
        image if batched else image[None], size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out if batched else out[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[H, W]`` or ``[N, H, W]`` integer masks (class ids stay valid)."""
    batched = mask.dim() == 3
    m = (mask if batched else mask[None])[:, None].float()
    out = F.interpolate(m, size=size, mode="nearest-exact")[:, 0].long()
    return out if batched else out[0]


class ArrayDataset(Dataset):
    """Images ``[N, C, H, W]`` in [-1, 1], optional masks ``[N, H, W]`` and optional second-modality images
    ``images_b [N, C_b, H, W]``, held in memory.

    ``images`` may be None for a masks-only dataset (label maps to synthesise from; ``in_channels`` is then 0).
    ``attributes`` ``[N]`` are optional image-level labels 0..len(attribute_names)-1.
    Masks may be stored in any integer dtype (uint8 saves memory); samples always carry int64 masks.
    Augmentation, applied identically to every tensor of a sample: ``crop`` takes a random ``crop`` x
    ``crop`` window, ``hflip`` / ``vflip`` flip left-right / top-bottom with probability 0.5, swapping the
    mask ids of ``mirror``'s pairs (``flip_mask``), ``rotate`` turns the sample by a uniform angle within
    ± that many degrees (``rotate_sample``). All of it draws from torch's global RNG, so a seeded
    trainer replays the same augmentations on resume.
    """

    def __init__(
        self,
        images: torch.Tensor | None,
        masks: torch.Tensor | None,
        names: Sequence[str],
        class_names: Sequence[str] | None = None,
        hflip: bool = False,
        *,
        vflip: bool = False,
        images_b: torch.Tensor | None = None,
        crop: int | None = None,
        attributes: torch.Tensor | None = None,
        attribute_names: Sequence[str] | None = None,
        mirror: Mirror = NO_MIRROR,
        rotate: float = 0.0,
    ):
        if images is None and masks is None:
            raise ValueError("a dataset needs images or masks")
        count = (images if images is not None else masks).shape[0]
        for other in (masks, images_b, attributes):
            if other is not None and other.shape[0] != count:
                raise ValueError("images, masks, images_b and attributes must have the same count")
        if (attributes is None) != (attribute_names is None):
            raise ValueError("attributes and attribute_names go together")
        if len(names) != count:
            raise ValueError("there must be one name per sample")
        self.images = images.float() if images is not None else None
        self.masks, self.names = masks, list(names)
        self.images_b = images_b.float() if images_b is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.hflip, self.vflip, self.crop, self.mirror, self.rotate = hflip, vflip, crop, mirror, rotate
        self.attributes = attributes.long() if attributes is not None else None
        self.attribute_names = list(attribute_names) if attribute_names is not None else None

    def with_samples(self, images: torch.Tensor, masks: torch.Tensor, names: Sequence[str]) -> ArrayDataset:
        """Other labelled samples with this dataset's classes and augmentations (flips, mirror, crop, rotation)."""
        return ArrayDataset(
            images,
            masks,
            names,
            self.class_names,
            self.hflip,
            vflip=self.vflip,
            mirror=self.mirror,
            crop=self.crop,
            rotate=self.rotate,
        )

    @property
    def in_channels(self) -> int:
        return self.images.shape[1] if self.images is not None else 0

    @property
    def in_channels_b(self) -> int:
        """Channels of the second modality (0 when the dataset is not paired)."""
        return self.images_b.shape[1] if self.images_b is not None else 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names) if self.attribute_names else 0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        parts = {"image": self.images, "mask": self.masks, "image_b": self.images_b}
        parts = {key: value[index] for key, value in parts.items() if value is not None}
        if self.crop:
            h, w = next(iter(parts.values())).shape[-2:]
            top = int(torch.randint(0, h - self.crop + 1, ()))
            left = int(torch.randint(0, w - self.crop + 1, ()))
            parts = {k: v[..., top : top + self.crop, left : left + self.crop] for k, v in parts.items()}
        for dim, on in ((-1, self.hflip), (-2, self.vflip)):
            if on and torch.rand(()) < 0.5:
                parts = {k: flip_mask(v, dim, self.mirror) if k == "mask" else v.flip(dim) for k, v in parts.items()}
        if self.rotate:
            parts = rotate_sample(parts, float((torch.rand(()) * 2 - 1) * self.rotate))
        if "mask" in parts:
            parts["mask"] = parts["mask"].long()
        if self.attributes is not None:
            parts["attribute"] = self.attributes[index]
        return Sample(**parts, name=self.names[index])


def rotate_mask(mask: np.ndarray, degrees: float) -> np.ndarray:
    """A class-id map ``[H, W]`` turned about its centre (nearest neighbour, same size, new pixels 255)."""
    return ndimage.rotate(mask, degrees, reshape=False, order=0, mode="constant", cval=IGNORE_INDEX)


def rotate_sample(parts: dict[str, torch.Tensor], degrees: float) -> dict[str, torch.Tensor]:
    """The images (``[C, H, W]`` in [-1, 1], bilinear) and mask (``[H, W]``, ``rotate_mask``) of one sample
    turned by ``degrees`` about their centre; what enters the frame from outside is black in images and
    ``IGNORE_INDEX`` in the mask, so no loss is computed on made-up labels."""
    turned = {}
    for key, value in parts.items():
        if key == "mask":
            turned[key] = torch.from_numpy(rotate_mask(value.numpy(), degrees))
        else:
            array = ndimage.rotate(value.numpy(), degrees, axes=(1, 2), reshape=False, order=1, cval=-1.0)
            turned[key] = torch.from_numpy(array)
    return turned
