"""The orthonormal 2D Haar wavelet transform as exact, invertible tensor layers.

Hand-written because neither torch nor the pinned libraries ship a batched, differentiable DWT (PyWavelets
and pytorch_wavelets are not dependencies); Haar is a 2x2 block transform, so it is a pixel unshuffle
followed by a 4x4 orthogonal matrix, and its inverse is the transpose (the same matrix here).

Layout: ``haar_dwt`` maps ``[B, C, H, W]`` to ``[B, 4C, H/2, W/2]`` holding the bands band-major:
channels ``0..C-1`` are the approximation LL, then the horizontal, vertical and diagonal details of every
input channel. The transform is orthonormal, so energy (sum of squares) is preserved and
``haar_idwt(haar_dwt(x)) == x`` up to float rounding. H and W must be even; ``pad_for_levels`` pads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows: LL, detail across columns, detail across rows, diagonal; columns: the 2x2 block read row by row
# (top-left, top-right, bottom-left, bottom-right). Symmetric and orthogonal, hence its own inverse.
_HAAR = 0.5 * torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
)


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """One level of the 2D Haar DWT: ``[B, C, H, W]`` (H, W even) -> ``[B, 4C, H/2, W/2]``, bands band-major."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"the Haar DWT needs an even height and width, got {h}x{w} (pad first)")
    blocks = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2)  # the 4 pixels of each 2x2 block
    bands = torch.einsum("kj,bcjhw->bkchw", _HAAR.to(x), blocks)
    return bands.reshape(b, 4 * c, h // 2, w // 2)


def haar_idwt(y: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_dwt``: ``[B, 4C, h, w]`` -> ``[B, C, 2h, 2w]``."""
    b, c4, h, w = y.shape
    if c4 % 4:
        raise ValueError(f"the inverse Haar DWT needs a multiple of 4 channels, got {c4}")
    c = c4 // 4
    blocks = torch.einsum("kj,bkchw->bcjhw", _HAAR.to(y), y.view(b, 4, c, h, w))
    return F.pixel_shuffle(blocks.reshape(b, 4 * c, h, w), 2)


def pad_for_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of ``x`` so that ``levels`` DWTs apply (a multiple of 2**levels);
    crop the result back with ``[..., :H, :W]``."""
    m = 2**levels
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")


class HaarDWT(nn.Module):
    """Lossless 2x downsampling: ``[B, C, H, W]`` -> ``[B, 4C, H/2, W/2]`` (see ``haar_dwt``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return haar_dwt(x)


class HaarIDWT(nn.Module):
    """Exact 2x upsampling, the inverse of ``HaarDWT``: ``[B, 4C, h, w]`` -> ``[B, C, 2h, 2w]``."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return haar_idwt(y)
