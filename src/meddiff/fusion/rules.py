"""Classic pixel- and multi-scale fusion rules on batches of grey (Y) images ``[N, 1, H, W]``, any size.

Baselines for the diffusion model and the candidates of its training prior. Every rule commutes with an
increasing affine change of intensity, so it works on meddiff's [-1, 1] as on 0..255. Multi-scale rules
can overshoot the input range (ringing): callers clip, never stretch, their output.

Hand-written in torch because the pinned libraries lack them batched: scikit-image's
``pyramid_laplacian`` has no reconstruction, and PyWavelets is not a dependency (the Haar DWT is
``meddiff.nets.wavelets``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from meddiff.nets.wavelets import haar_dwt, haar_idwt, pad_for_levels

Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DWT_LEVELS = 3
PYRAMID_LEVELS = 4
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # Burt-Adelson generating kernel


def average(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-wise mean."""
    return (a + b) / 2


def pixel_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-wise maximum (the brighter source wins)."""
    return torch.maximum(a, b)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a.abs() >= b.abs(), a, b)


def dwt(a: torch.Tensor, b: torch.Tensor, levels: int = DWT_LEVELS) -> torch.Tensor:
    """Haar DWT fusion: approximations averaged, detail coefficients by maximum absolute value, ``levels``
    levels (inputs padded by replication to a multiple of 2**levels, the output cropped back)."""
    h, w = a.shape[-2:]
    x = pad_for_levels(torch.cat([a, b]), levels)  # both sources in one batch
    details = []
    for _ in range(levels):
        bands = haar_dwt(x)
        c = bands.shape[1] // 4
        x = bands[:, :c]
        ba, bb = bands[:, c:].chunk(2)
        details.append(_max_abs(ba, bb))
    fused = average(*x.chunk(2))
    for d in reversed(details):
        fused = haar_idwt(torch.cat([fused, d], dim=1))
    return fused[..., :h, :w]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur with edge replication."""
    k = _BINOMIAL.to(x)
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` band-pass images (finest first) and the coarsest low-pass image last; any size (each
    level is ceil(half) of the previous). ``collapse`` inverts it exactly."""
    bands = []
    for _ in range(levels):
        low = _blur(x)[..., ::2, ::2]
        bands.append(x - _expand(low, x.shape[-2:]))
        x = low
    return [*bands, x]


def collapse(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Rebuild the image from ``laplacian_pyramid``'s output."""
    x = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        x = band + _expand(x, band.shape[-2:])
    return x


def laplacian(a: torch.Tensor, b: torch.Tensor, levels: int = PYRAMID_LEVELS) -> torch.Tensor:
    """Laplacian-pyramid fusion: band-pass levels by maximum absolute value, the low-pass top averaged."""
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [_max_abs(x, y) for x, y in zip(pa[:-1], pb[:-1], strict=True)] + [average(pa[-1], pb[-1])]
    return collapse(fused)


RULES: dict[str, Rule] = {"average": average, "max": pixel_max, "dwt": dwt, "laplacian": laplacian}
