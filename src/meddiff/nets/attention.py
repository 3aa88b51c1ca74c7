"""Self-attention over pixels and cross-attention from pixels to a token sequence (text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.nets.layers import group_norm, zero_module


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


class SpatialAttention(nn.Module):
    """Multi-head attention of every pixel to every pixel (``kv_dim == 0``) or to ``context`` tokens.

    Residual with a zero-initialised output projection, so a freshly added block is the identity.
    """

    def __init__(self, channels: int, head_channels: int, groups: int, context_dim: int = 0):
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        self.norm = group_norm(channels, groups)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim or channels, 2 * channels)
        self.out = zero_module(nn.Linear(channels, channels))
        self.cross = context_dim > 0

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        if self.cross:
            if context is None:
                raise ValueError("this UNet uses cross-attention: pass context (token embeddings [B, L, D])")
            source = context.to(tokens.dtype)
        else:
            source = tokens
        q = _heads(self.q(tokens), self.num_heads)
        k, v = (_heads(t, self.num_heads) for t in self.kv(source).chunk(2, dim=-1))
        mask = None
        if self.cross and context_mask is not None:  # True = attend; padding tokens are False
            mask = context_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(attended).transpose(1, 2).reshape(b, c, h, w)
