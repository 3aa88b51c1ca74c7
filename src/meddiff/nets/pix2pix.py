"""pix2pix (Isola et al., CVPR 2017): a U-Net generator and a PatchGAN discriminator, the GAN baseline of
mask-to-image synthesis.

Hand-written because no installed library ships them (torchvision is not available and diffusers has no
GAN). Following the paper: 4x4 convolutions with stride 2, LeakyReLU(0.2) in the encoder and ReLU in the
decoder, skip connections between mirrored layers, dropout 0.5 in the three innermost decoder layers (kept
on at test time as the only source of randomness), tanh output; the discriminator classifies overlapping
patches of (label map, image) as real or fake. GroupNorm replaces BatchNorm: it does not depend on the
batch size and stays defined at the 1x1 bottleneck, where the paper drops normalisation with batch 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Pix2PixNetConfig:
    """Sizes of the generator and the discriminator (label channels and image channels come from the data).

    depth:         downsamplings of the generator (6 takes 64 px to 1x1, the paper uses 8 at 256 px); inputs
                   are padded to a multiple of 2**depth
    disc_layers:   strided layers of the PatchGAN (3: 70x70 receptive field)
    """

    base_channels: int = 64
    max_channels: int = 512
    depth: int = 6
    dropout: float = 0.5
    disc_channels: int = 64
    disc_layers: int = 3
    norm_groups: int = 32

    def __post_init__(self):
        if self.depth < 1 or self.disc_layers < 1 or self.base_channels < 1 or self.disc_channels < 1:
            raise ValueError("depth, disc_layers, base_channels and disc_channels must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class Generator(nn.Module):
    """U-Net: one-hot label map ``[B, K, H, W]`` -> image ``[B, C, H, W]`` in [-1, 1]."""

    def __init__(self, label_channels: int, image_channels: int, cfg: Pix2PixNetConfig):
        super().__init__()
        self.config = cfg
        widths = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(cfg.depth)]
        self.down = nn.ModuleList()
        previous = label_channels
        for i, width in enumerate(widths):
            layers = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(previous, width, 4, stride=2, padding=1))
            if i > 0:
                layers.append(_norm(width, cfg.norm_groups))
            self.down.append(nn.Sequential(*layers))
            previous = width
        self.up = nn.ModuleList()
        for i in reversed(range(cfg.depth)):
            out = widths[i - 1] if i > 0 else image_channels
            in_ch = widths[i] if i == cfg.depth - 1 else 2 * widths[i]
            layers = [nn.ReLU(), nn.ConvTranspose2d(in_ch, out, 4, stride=2, padding=1)]
            if i > 0:
                layers.append(_norm(out, cfg.norm_groups))
                if cfg.depth - 1 - i < 3 and cfg.dropout:
                    layers.append(nn.Dropout(cfg.dropout))
            else:
                layers.append(nn.Tanh())
            self.up.append(nn.Sequential(*layers))

    def forward(self, label_map: torch.Tensor) -> torch.Tensor:
        h, w = label_map.shape[-2:]
        m = 2**self.config.depth
        x = F.pad(label_map, (0, (-w) % m, 0, (-h) % m))
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()
        for i, layer in enumerate(self.up):
            x = layer(x if i == 0 else torch.cat([x, skips.pop()], dim=1))
        return x[..., :h, :w]


class Discriminator(nn.Module):
    """PatchGAN: (label map, image) -> ``[B, 1, h, w]`` real/fake logits, one per overlapping patch."""

    def __init__(self, label_channels: int, image_channels: int, cfg: Pix2PixNetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        previous = label_channels + image_channels
        for i in range(cfg.disc_layers + 1):
            stride = 2 if i < cfg.disc_layers else 1
            out = min(cfg.disc_channels * 2**i, cfg.max_channels)
            layers.append(nn.Conv2d(previous, out, 4, stride=stride, padding=1))
            if i > 0:
                layers.append(_norm(out, cfg.norm_groups))
            layers.append(nn.LeakyReLU(0.2))
            previous = out
        layers.append(nn.Conv2d(previous, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, label_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([label_map, image.to(label_map.dtype)], dim=1))


def num_parameters(module: nn.Module) -> int:
    """Number of parameters of a network."""
    return sum(p.numel() for p in module.parameters())
