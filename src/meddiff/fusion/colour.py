"""Colour handling for fusion: BT.601 full-range YCbCr (JPEG's, the Y of OpenCV's grey conversion).

In meddiff's [-1, 1] range the transform is a plain 3x3 matrix: Y's weights sum to 1 (so Y stays in
[-1, 1]) and Cb/Cr's sum to 0 (their 0.5 offset on [0, 1] data becomes 0, the neutral chroma).
A grey-grey pair is fused as grey; when a source is colour, its Y is fused and its Cb/Cr are put back
(when both are colour, each pixel keeps the chroma farther from neutral), so colour comes out as colour.
"""

from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected [N, 3, H, W] images, got shape {tuple(x.shape)}")
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB in [-1, 1] -> Y, Cb, Cr in [-1, 1] (chroma 0 = grey)."""
    return _apply(_RGB_TO_YCBCR, rgb)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_ycbcr`` (not clamped: out-of-gamut values are the caller's to clip)."""
    return _apply(_YCBCR_TO_RGB, ycbcr)


def luma(image: torch.Tensor) -> torch.Tensor:
    """``[N, 1 or 3, H, W]`` -> its Y ``[N, 1, H, W]`` (grey images are their own Y)."""
    return image if image.shape[1] == 1 else rgb_to_ycbcr(image)[:, :1]


def chroma(image: torch.Tensor) -> torch.Tensor | None:
    """Cb/Cr ``[N, 2, H, W]`` of a colour image, None for a grey one."""
    return None if image.shape[1] == 1 else rgb_to_ycbcr(image)[:, 1:]


def merged_chroma(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """The chroma a fused image gets from sources ``a`` and ``b``: the colour source's, the per-pixel more
    saturated of the two when both are colour, None when both are grey."""
    ca, cb = chroma(a), chroma(b)
    if ca is None or cb is None:
        return cb if ca is None else ca
    stronger_a = ca.abs().amax(1, keepdim=True) >= cb.abs().amax(1, keepdim=True)
    return torch.where(stronger_a, ca, cb)


def colourise(y: torch.Tensor, chroma_cbcr: torch.Tensor | None) -> torch.Tensor:
    """Fused Y ``[N, 1, H, W]`` plus chroma (or None) -> the output image in [-1, 1] (grey or RGB)."""
    if chroma_cbcr is None:
        return y
    return ycbcr_to_rgb(torch.cat([y, chroma_cbcr.to(y)], dim=1)).clamp(-1, 1)
