"""Building blocks of the meddiff UNet: time embedding, residual blocks, resampling.

Hand-written because the library UNets (diffusers ``UNet2DModel``/``UNet2DConditionModel``, MONAI's
``DiffusionModelUNet``) do not offer SPADE normalisation inside every decoder block together with concat,
cross-attention and class conditioning in one model, nor hooks on arbitrary decoder blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.nets.spade import SPADE

SKIP_SCALE = 1.0 / math.sqrt(2.0)


def group_norm(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, affine=affine)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of a (possibly fractional) timestep or scaled noise level."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, L, D]`` tokens -> ``[B, D]``: their mean over the positions ``mask`` ``[B, L]`` keeps (all if None)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class ResBlock(nn.Module):
    """BigGAN-style residual block: norm-SiLU-conv, time scale-shift, norm-SiLU-dropout-conv, and the sum
    with the (projected) input scaled by 1/sqrt(2) as in SR3.

    With ``spade_classes > 0`` both norms are SPADE: parameter-free GroupNorm modulated by the label map.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        dropout: float,
        spade_classes: int = 0,
        spade_hidden: int = 64,
    ):
        super().__init__()
        self.spade = spade_classes > 0
        if self.spade:
            self.norm1 = SPADE(in_ch, spade_classes, spade_hidden, groups)
            self.norm2 = SPADE(out_ch, spade_classes, spade_hidden, groups)
        else:
            self.norm1 = group_norm(in_ch, groups)
            self.norm2 = group_norm(out_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _norm(self, norm: nn.Module, h: torch.Tensor, label_map: torch.Tensor | None) -> torch.Tensor:
        return norm(h, label_map) if self.spade else norm(h)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, label_map: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, label_map)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self._norm(self.norm2, h, label_map) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (h + self.skip(x)) * SKIP_SCALE


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling followed by a 3x3 convolution (no checkerboard artefacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
