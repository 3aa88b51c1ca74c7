"""SPADE normalisation (Park et al. 2019), as used by SDM to inject a label map into a diffusion UNet."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SPADE(nn.Module):
    """GroupNorm without affine parameters, then ``x * (1 + gamma(m)) + beta(m)``.

    ``gamma`` and ``beta`` are 3x3 convolutions on a shared 3x3 conv + ReLU of the label map ``m``
    (one-hot, ``[B, K, H, W]``), resized to the feature resolution by nearest neighbour. An all-zero map
    (the classifier-free-guidance "no mask") gives gamma and beta that are learned constants away from the
    border (the convolutions' zero padding shapes the outermost pixels): the unconditional path.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int = 64, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(channels, groups), channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        if label_map is None:
            raise ValueError("this UNet uses SPADE: pass label_map (one-hot [B, K, H, W]; zeros = no mask)")
        m = F.interpolate(label_map.to(x.dtype), size=x.shape[-2:], mode="nearest")
        h = self.shared(m)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)
