"""The feature-network interface shared by FID/KID and the memorisation check.

A feature network maps images ``[N, C, H, W]`` in [-1, 1], with any channel count and any size, to
features ``[N, num_features]``; its ``name`` goes into every number computed with it, because FID/KID
values are only comparable between runs that used the same feature network. meddiff has two:
``inception.InceptionV3Features`` (user-supplied Inception-v3 weights) and ``domain_net.DomainCNN``
(a small encoder meddiff trains on the real images).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from meddiff.data.arrays import resize_image
from meddiff.errors import UserError

Images = torch.Tensor | Iterable[torch.Tensor]


class FeatureNet(nn.Module):
    """Base of meddiff's feature networks: ``forward`` maps ``[N, C, H, W]`` images in [-1, 1] to
    ``[N, num_features]``; ``name`` identifies the network (architecture and weights)."""

    name: str
    num_features: int


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Give ``images`` ``channels`` channels: grey is replicated, and a 1-channel network gets the mean
    of the channels; any other mismatch is an error."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise UserError(f"'images' have {have} channels but the feature network takes {channels} (or 1)")


def match_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``images`` to ``size`` x ``size`` (antialiased bilinear) unless they already are."""
    if images.shape[-2:] == (size, size):
        return images
    return resize_image(images, (size, size))


def iter_batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of ``[b, C, H, W]`` images from one tensor or from an iterable of batch tensors."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise UserError(f"'images' must be a [N, C, H, W] batch, got shape {tuple(images.shape)}")
        yield from images.split(batch_size)
    else:
        for batch in images:
            if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
                raise UserError("'images' must yield [N, C, H, W] tensors")
            yield batch


@torch.no_grad()
def extract_features(images: Images, net: nn.Module, batch_size: int = 64) -> torch.Tensor:
    """Features ``[N, D]`` (float32) of ``images`` (a ``[N, C, H, W]`` tensor in [-1, 1], or an iterable of
    such batches, e.g. a generator reading from disk), computed in eval mode in batches of ``batch_size``."""
    was_training = net.training
    net.eval()
    try:
        chunks = [net(batch.float()).float() for batch in iter_batches(images, batch_size)]
    finally:
        net.train(was_training)
    if not chunks:
        raise UserError("'images' is empty")
    return torch.cat(chunks)
