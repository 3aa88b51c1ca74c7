"""A plain U-Net segmenter (Ronneberger et al. 2015), the from-scratch baseline of few-label segmentation.

Hand-written because the project's libraries have no segmentation U-Net (diffusers' UNets are denoisers
with time embeddings; torchvision and MONAI are not dependencies). GroupNorm instead of BatchNorm: the
trainer evaluates EMA weights, which would not match BatchNorm running statistics, and few-label batches
are small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.nets.layers import group_norm


@dataclass
class SegNetConfig:
    """U-Net width and depth; ``in_channels`` and ``num_classes`` are set from the data by the task."""

    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 32
    depth: int = 4  # resolution levels: depth - 1 poolings, channels doubling at each
    norm_groups: int = 8
    dropout: float = 0.1  # before the classifier

    def __post_init__(self):
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {self.in_channels}, {self.num_classes}")
        if self.base_channels < 1 or self.depth < 1:
            raise ValueError("base_channels and depth must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.depth - 1)


def _double_conv(in_ch: int, out_ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        group_norm(out_ch, groups),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        group_norm(out_ch, groups),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """``forward(images [B, C, H, W]) -> logits [B, num_classes, H, W]`` for any H, W (padded inside)."""

    def __init__(self, config: SegNetConfig):
        super().__init__()
        self.config = cfg = config
        widths = [cfg.base_channels * 2**level for level in range(cfg.depth)]
        self.encoder = nn.ModuleList()
        current = cfg.in_channels
        for width in widths:
            self.encoder.append(_double_conv(current, width, cfg.norm_groups))
            current = width
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(current, width, 2, stride=2))
            self.decoder.append(_double_conv(2 * width, width, cfg.norm_groups))
            current = width
        self.head = nn.Sequential(nn.Dropout2d(cfg.dropout), nn.Conv2d(current, cfg.num_classes, 1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.config.size_multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]
