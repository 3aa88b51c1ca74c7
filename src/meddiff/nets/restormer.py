"""Restormer blocks and the wavelet-Restormer denoiser of the fusion task.

Restormer (Zamir et al., CVPR 2022) blocks are two residual halves on per-pixel LayerNorm:
- MDTA, multi-Dconv-head "transposed" attention: queries, keys and values from a 1x1 then a 3x3
  depthwise convolution, attention between *channels* (a C/h x C/h map per head, keys and queries
  L2-normalised over the pixels, a learned temperature per head). Its cost is linear in the pixel count,
  so it runs at any image size.
- GDFN, gated-Dconv feed-forward: 1x1 expansion, 3x3 depthwise convolution, GELU(x1) * x2, 1x1 back.

``ModalityCrossAttention`` is MDTA with the queries from one modality's features and keys/values from the
other's, in both directions. ``FusionDenoiser`` puts it all together (see its docstring). Hand-written:
diffusers and the other pinned libraries have no Restormer blocks nor channel attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from meddiff.nets.layers import sinusoidal_embedding, zero_module
from meddiff.nets.wavelets import HaarDWT, HaarIDWT, pad_for_levels


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel of ``[B, C, H, W]`` (Restormer's "with bias" norm)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def _dconv(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 convolution followed by a 3x3 depthwise convolution (Restormer's projections)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch))


class ChannelAttention(nn.Module):
    """MDTA: attention across channels, ``heads`` heads. ``forward(x)`` attends within ``x``;
    ``forward(x, context)`` takes keys and values from ``context`` (same shape as ``x``)."""

    def __init__(self, channels: int, heads: int, cross: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.cross = heads, cross
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        if cross:
            self.q, self.kv = _dconv(channels, channels), _dconv(channels, 2 * channels)
        else:
            self.qkv = _dconv(channels, 3 * channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs the other modality's features as context")
            q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.out((attn @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """GDFN: ``out(GELU(x1) * x2)`` with ``x1, x2`` from a 1x1 expansion and a 3x3 depthwise convolution."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = max(1, int(channels * expansion))
        self.inner = _dconv(channels, 2 * hidden)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.inner(x).chunk(2, dim=1)
        return self.out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """``x + MDTA(norm(x))``, then ``x + GDFN(norm(x))``. With ``emb_dim > 0`` each norm is modulated by a
    scale and shift from an embedding (adaptive LayerNorm, zero-initialised: a plain block at start)."""

    def __init__(self, channels: int, heads: int, expansion: float = 2.0, emb_dim: int = 0):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(channels), LayerNorm2d(channels)
        self.attn = ChannelAttention(channels, heads)
        self.ffn = GatedFeedForward(channels, expansion)
        self.modulation = zero_module(nn.Linear(emb_dim, 4 * channels)) if emb_dim else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h1, h2 = self.norm1(x), self.norm2
        if self.modulation is not None:
            if emb is None:
                raise ValueError("this block is conditioned: pass the embedding")
            s1, b1, s2, b2 = self.modulation(F.silu(emb))[:, :, None, None].chunk(4, dim=1)
            x = x + self.attn(h1 * (1 + s1) + b1)
            return x + self.ffn(h2(x) * (1 + s2) + b2)
        x = x + self.attn(h1)
        return x + self.ffn(h2(x))


class ModalityCrossAttention(nn.Module):
    """Each modality's features attend to the other's (MDTA cross-attention both ways); the two results
    are merged by a 1x1 convolution into one feature map."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm_a, self.norm_b = LayerNorm2d(channels), LayerNorm2d(channels)
        self.a_from_b = ChannelAttention(channels, heads, cross=True)
        self.b_from_a = ChannelAttention(channels, heads, cross=True)
        self.merge = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        na, nb = self.norm_a(a), self.norm_b(b)
        a = a + self.a_from_b(na, nb)
        b = b + self.b_from_a(nb, na)
        return self.merge(torch.cat([a, b], dim=1))


@dataclass
class FusionNetConfig:
    """Architecture of ``FusionDenoiser``: three levels (full, 1/2, 1/4 resolution)."""

    in_channels: int = 1  # the diffused image (the fused Y channel)
    cond_channels: int = 2  # the sources, concatenated to x_t (Y_A, Y_B)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    heads: list[int] = field(default_factory=lambda: [2, 4])  # attention heads at levels 1 and 2
    blocks: list[int] = field(default_factory=lambda: [1, 2])  # Restormer blocks at levels 1 and 2
    ffn_expansion: float = 2.0
    emb_dim: int = 64

    def __post_init__(self):
        if len(self.channels) != 3 or len(self.heads) != 2 or len(self.blocks) != 2:
            raise ValueError("channels needs 3 entries (levels 0, 1, 2); heads and blocks 2 (levels 1, 2)")
        if min(self.channels) < 1 or min(self.heads) < 1 or min(self.blocks) < 0:
            raise ValueError("channels and heads must be positive and blocks non-negative")
        for c, h in zip(self.channels[1:], self.heads, strict=True):
            if c % h:
                raise ValueError(f"channels {c} is not divisible by heads {h}")
        if self.cond_channels != 2:
            raise ValueError("the fusion denoiser takes exactly two source images (cond_channels: 2)")

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (two Haar levels)."""
        return 4


def _down(in_ch: int, out_ch: int) -> nn.Sequential:
    """Lossless Haar downsampling, then a 1x1 convolution to ``out_ch`` channels."""
    return nn.Sequential(HaarDWT(), nn.Conv2d(4 * in_ch, out_ch, 1))


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    """A 1x1 convolution to the four Haar bands of ``out_ch`` channels, then the exact inverse DWT."""
    return nn.Sequential(nn.Conv2d(in_ch, 4 * out_ch, 1), HaarIDWT())


class _ModalityEncoder(nn.Module):
    """One source image -> features at 1/4 resolution (conv, Haar down, GELU, Haar down)."""

    def __init__(self, c0: int, c1: int, c2: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, c0, 3, padding=1), nn.GELU(), _down(c0, c1), nn.GELU(), _down(c1, c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusionDenoiser(nn.Module):
    """Conditional denoiser of the fused image: ``forward(x_t, t, cond_image=[Y_A, Y_B]) -> prediction``.

    The input is concat(Y_A, Y_B, x_t) (SR3 style). Haar DWTs downsample losslessly to 1/2 and 1/4
    resolution, where time-modulated Restormer blocks work; at 1/4 the features of each source (own small
    encoders) cross-attend to each other and are added to the denoiser's. Inverse DWTs upsample, with skip
    connections from the encoder. Any H, W: padded to a multiple of 4 internally, cropped back.
    """

    def __init__(self, config: FusionNetConfig):
        super().__init__()
        self.config = cfg = config
        c0, c1, c2 = cfg.channels
        emb = cfg.emb_dim
        self.time_embed = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv2d(cfg.in_channels + cfg.cond_channels, c0, 3, padding=1)
        self.down1, self.down2 = _down(c0, c1), _down(c1, c2)

        def blocks(channels: int, heads: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(RestormerBlock(channels, heads, cfg.ffn_expansion, emb) for _ in range(count))

        self.enc1 = blocks(c1, cfg.heads[0], cfg.blocks[0])
        self.encode_a, self.encode_b = _ModalityEncoder(c0, c1, c2), _ModalityEncoder(c0, c1, c2)
        self.cross = ModalityCrossAttention(c2, cfg.heads[1])
        self.inject = zero_module(nn.Conv2d(c2, c2, 1))
        self.mid = blocks(c2, cfg.heads[1], cfg.blocks[1])
        self.up2 = _up(c2, c1)
        self.merge1 = nn.Conv2d(2 * c1, c1, 1)
        self.dec1 = blocks(c1, cfg.heads[0], cfg.blocks[0])
        self.up1 = _up(c1, c0)
        self.out = nn.Sequential(
            nn.Conv2d(2 * c0, c0, 3, padding=1), nn.GELU(), zero_module(nn.Conv2d(c0, cfg.in_channels, 3, padding=1))
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, cond_image: torch.Tensor | None = None) -> torch.Tensor:
        """Predict noise / v (the caller's choice) for ``x`` ``[B, 1, H, W]`` at times ``t`` ``[B]`` given the
        sources ``cond_image`` ``[B, 2, H, W]``, all in [-1, 1]."""
        if cond_image is None or cond_image.shape[1] != self.config.cond_channels:
            raise ValueError(f"pass cond_image with the {self.config.cond_channels} source images [B, 2, H, W]")
        h_in, w_in = x.shape[-2:]
        inputs = pad_for_levels(torch.cat([cond_image.to(x.dtype), x], dim=1), levels=2)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.time_embed(sinusoidal_embedding(t, self.config.channels[0]).to(x.dtype))

        h0 = self.stem(inputs)
        h1 = self.down1(h0)
        for block in self.enc1:
            h1 = block(h1, emb)
        h2 = self.down2(h1)
        sources = self.cross(self.encode_a(inputs[:, :1]), self.encode_b(inputs[:, 1:2]))
        h2 = h2 + self.inject(sources)
        for block in self.mid:
            h2 = block(h2, emb)
        h = self.merge1(torch.cat([self.up2(h2), h1], dim=1))
        for block in self.dec1:
            h = block(h, emb)
        h = self.out(torch.cat([self.up1(h), h0], dim=1))
        return h[..., :h_in, :w_in]

    @torch.no_grad()
    def flops(self, height: int, width: int, batch: int = 1) -> int:
        """Floating-point operations of one forward pass (counted by torch's FlopCounterMode)."""
        device = next(self.parameters()).device
        x = torch.zeros(batch, self.config.in_channels, height, width, device=device)
        cond = torch.zeros(batch, self.config.cond_channels, height, width, device=device)
        with FlopCounterMode(display=False) as counter:
            self(x, torch.zeros(batch, device=device), cond_image=cond)
        return counter.get_total_flops()
