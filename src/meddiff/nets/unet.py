"""One configurable diffusion UNet for every meddiff task.

Conditioning kinds (each switched on from ``UNetConfig``):
  (a) ``cond_channels``: extra input channels concatenated to x_t (SR3 style);
  (b) ``spade_classes``: a one-hot label map entering every middle and decoder residual block through
      SPADE normalisation (SDM style; the encoder sees only the noisy image);
  (c) ``context_dim``: cross-attention to a sequence of token embeddings (text) at the attention levels;
      with ``context_pooled`` the tokens' masked mean, projected, is also added to the time embedding
      (Imagen's pooled text conditioning), so global attributes of a prompt reach every residual block;
  (d) ``num_classes``: a class/attribute embedding added to the time embedding (index ``num_classes`` is
      the "no class" token used by classifier-free guidance).

Decoder blocks are numbered 0..``num_decoder_blocks``-1 from the bottom (lowest resolution) up, as the
output blocks of guided-diffusion; ``decoder_features`` returns their activations for pixel classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from meddiff.nets.attention import SpatialAttention
from meddiff.nets.layers import (
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    masked_mean,
    sinusoidal_embedding,
    zero_module,
)


@dataclass
class UNetConfig:
    """Architecture of the UNet. Levels are numbered from 0 (full resolution) down."""

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    blocks_per_level: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [2])  # self-attention here and in the middle
    head_channels: int = 32
    dropout: float = 0.0
    norm_groups: int = 32
    cond_channels: int = 0
    spade_classes: int = 0
    spade_hidden: int = 64
    context_dim: int = 0
    # without it a 1000-step cataract text model ignored the tone words (benchmarks/results/text_conditioning.md:
    # "bright" +0.2 intensity points vs +12.7 with it, "low contrast" +0.6% vs +19.5%)
    context_pooled: bool = True
    num_classes: int = 0

    def __post_init__(self):
        levels = len(self.channel_mults)
        if levels < 1 or self.blocks_per_level < 1 or self.base_channels < 1:
            raise ValueError("channel_mults, blocks_per_level and base_channels must be positive")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {levels} levels 0..{levels - 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (the total downsampling)."""
        return 2 ** (len(self.channel_mults) - 1)


class _Block(nn.Module):
    """A residual block, optionally followed by self-attention, cross-attention and upsampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cfg: UNetConfig,
        emb_dim: int,
        attention: bool,
        spade: bool,
        upsample: bool = False,
    ):
        super().__init__()
        self.res = ResBlock(
            in_ch, out_ch, emb_dim, cfg.norm_groups, cfg.dropout, cfg.spade_classes if spade else 0, cfg.spade_hidden
        )
        self.attn = SpatialAttention(out_ch, cfg.head_channels, cfg.norm_groups) if attention else None
        self.xattn = (
            SpatialAttention(out_ch, cfg.head_channels, cfg.norm_groups, cfg.context_dim)
            if attention and cfg.context_dim
            else None
        )
        self.up = Upsample(out_ch) if upsample else None

    def forward(self, h, emb, label_map, context, context_mask):
        h = self.res(h, emb, label_map)
        if self.attn is not None:
            h = self.attn(h)
        if self.xattn is not None:
            h = self.xattn(h, context, context_mask)
        return self.up(h) if self.up is not None else h


class UNet(nn.Module):
    """Diffusion UNet: ``forward(x_t, t, **conditioning) -> prediction`` with the shape of ``x_t``."""

    def __init__(self, config: UNetConfig, encoder_only: bool = False):
        """``encoder_only``: build the embeddings, input convolution, encoder and middle only (a ControlNet's
        trainable copy, ``meddiff.nets.controlnet``)."""
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.context_embed = (
            nn.Sequential(nn.Linear(cfg.context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.context_dim and cfg.context_pooled
            else None
        )
        self.input_conv = nn.Conv2d(cfg.in_channels + cfg.cond_channels, ch, 3, padding=1)

        self.encoder = nn.ModuleList()
        skips, current = [ch], ch
        # (channels, downsample factor) of each decoder block's output, for feature extraction.
        self._decoder_info: list[tuple[int, int]] = []
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.blocks_per_level):
                self.encoder.append(
                    _Block(current, ch * mult, cfg, emb_dim, level in cfg.attention_levels, spade=False)
                )
                current = ch * mult
                skips.append(current)
            if level < len(cfg.channel_mults) - 1:
                self.encoder.append(Downsample(current))
                skips.append(current)

        self.middle = nn.ModuleList(
            [
                _Block(current, current, cfg, emb_dim, attention=True, spade=bool(cfg.spade_classes)),
                _Block(current, current, cfg, emb_dim, attention=False, spade=bool(cfg.spade_classes)),
            ]
        )

        self.skip_channels = list(skips)  # of the encoder's outputs, in order (what a ControlNet adds to)
        self.middle_channels = current
        self.decoder = nn.ModuleList()
        self.out = None
        if encoder_only:
            return
        for level in reversed(range(len(cfg.channel_mults))):
            out_ch = ch * cfg.channel_mults[level]
            for i in range(cfg.blocks_per_level + 1):
                upsample = level > 0 and i == cfg.blocks_per_level
                self.decoder.append(
                    _Block(
                        current + skips.pop(),
                        out_ch,
                        cfg,
                        emb_dim,
                        level in cfg.attention_levels,
                        spade=bool(cfg.spade_classes),
                        upsample=upsample,
                    )
                )
                current = out_ch
                self._decoder_info.append((out_ch, 2 ** (level - 1 if upsample else level)))

        self.out = nn.Sequential(
            group_norm(current, cfg.norm_groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(current, cfg.out_channels, 3, padding=1)),
        )

    @property
    def num_decoder_blocks(self) -> int:
        return len(self.decoder)

    def decoder_block_info(self) -> list[tuple[int, int]]:
        """``(channels, downsample factor)`` of each decoder block's output, bottom block first."""
        return list(self._decoder_info)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        cond_image: torch.Tensor | None = None,
        label_map: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        control: nn.Module | None = None,
    ) -> torch.Tensor:
        """Predict noise / v / x0 (the caller's choice) for ``x`` ``[B, C, H, W]`` at times ``t`` ``[B]``.

        ``t`` may be fractional (e.g. a scaled continuous noise level). Any H, W: inputs are padded to a
        multiple of ``config.size_multiple`` and the output is cropped back. ``control`` (a ControlNet
        branch) is called on the padded inputs and returns residuals added to every skip and to the middle.
        """
        out, _ = self._run(x, t, cond_image, label_map, context, context_mask, class_labels, blocks=(), control=control)
        return out

    def decoder_features(
        self, x: torch.Tensor, t: torch.Tensor, blocks: list[int], **conditioning
    ) -> list[torch.Tensor]:
        """Activations of the chosen decoder blocks (cropped to the input's extent), in the order given.

        Stops after the last block needed, so early blocks cost only part of a forward pass.
        """
        bad = [b for b in blocks if not 0 <= b < self.num_decoder_blocks]
        if bad:
            raise ValueError(f"decoder blocks {bad} outside 0..{self.num_decoder_blocks - 1}")
        _, features = self._run(
            x,
            t,
            conditioning.get("cond_image"),
            conditioning.get("label_map"),
            conditioning.get("context"),
            conditioning.get("context_mask"),
            conditioning.get("class_labels"),
            blocks=tuple(blocks),
        )
        return [features[b] for b in blocks]

    def _run(self, x, t, cond_image, label_map, context, context_mask, class_labels, blocks, control=None):
        cfg = self.config
        h_in, w_in = x.shape[-2:]
        m = cfg.size_multiple
        pad_h, pad_w = (-h_in) % m, (-w_in) % m
        if cfg.cond_channels:
            if cond_image is None:
                raise ValueError(f"this UNet concatenates {cfg.cond_channels} condition channels: pass cond_image")
            x = torch.cat([x, cond_image.to(x.dtype)], dim=1)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            if label_map is not None:
                label_map = F.pad(label_map, (0, pad_w, 0, pad_h))

        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.embedding(t, x.dtype, class_labels, context, context_mask)
        cond = (label_map, context, context_mask)
        h, skips = self.encode(x, emb, cond)
        if control is not None:
            skip_residuals, middle_residual = control(x, t, label_map, class_labels, context, context_mask)
            skips = [s + r for s, r in zip(skips, skip_residuals, strict=True)]
            h = h + middle_residual

        features: dict[int, torch.Tensor] = {}
        last_needed = max(blocks) if blocks else None
        for index, block in enumerate(self.decoder):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, *cond)
            if index in blocks:
                factor = self._decoder_info[index][1]
                features[index] = h[..., : -(-h_in // factor), : -(-w_in // factor)]
            if last_needed is not None and index == last_needed:
                return None, features
        return self.out(h)[..., :h_in, :w_in], features

    def embedding(
        self,
        t: torch.Tensor,
        dtype: torch.dtype,
        class_labels: torch.Tensor | None,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The embedding ``[B, 4 * base_channels]`` every residual block is scaled and shifted by: time, plus
        the class and pooled-text embeddings where the UNet has them."""
        cfg = self.config
        emb = self.time_embed(sinusoidal_embedding(t, cfg.base_channels).to(dtype))
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError(
                    f"this UNet has a class embedding: pass class_labels (0..{cfg.num_classes}, "
                    f"{cfg.num_classes} = no class)"
                )
            emb = emb + self.class_embed(class_labels)
        if self.context_embed is not None:
            if context is None:
                raise ValueError("this UNet is text-conditioned: pass context (and context_mask)")
            emb = emb + self.context_embed(masked_mean(context, context_mask).to(emb.dtype))
        return emb

    def encode(
        self, x: torch.Tensor, emb: torch.Tensor, cond: tuple, input_residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The middle's output and the encoder's outputs (the skips, input convolution first) for padded
        ``x`` (with its condition channels); ``input_residual`` is added to the input convolution's output."""
        h = self.input_conv(x)
        if input_residual is not None:
            h = h + input_residual
        skips = [h]
        for block in self.encoder:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, *cond)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb, *cond)
        return h, skips

    def example_inputs(self, batch: int, height: int, width: int, context_len: int = 8) -> tuple[tuple, dict]:
        """Random inputs of the right shapes for every enabled conditioning (for tests, FLOPs, benchmarks)."""
        cfg = self.config
        args = (torch.randn(batch, cfg.in_channels, height, width), torch.randint(0, 1000, (batch,)))
        kwargs = {}
        if cfg.cond_channels:
            kwargs["cond_image"] = torch.randn(batch, cfg.cond_channels, height, width)
        if cfg.spade_classes:
            ids = torch.randint(0, cfg.spade_classes, (batch, height, width))
            kwargs["label_map"] = F.one_hot(ids, cfg.spade_classes).permute(0, 3, 1, 2).float()
        if cfg.context_dim:
            kwargs["context"] = torch.randn(batch, context_len, cfg.context_dim)
        if cfg.num_classes:
            kwargs["class_labels"] = torch.randint(0, cfg.num_classes, (batch,))
        return args, kwargs

    @torch.no_grad()
    def flops(self, height: int, width: int, batch: int = 1) -> int:
        """Floating-point operations of one forward pass (counted by torch's FlopCounterMode)."""
        args, kwargs = self.example_inputs(batch, height, width)
        device = next(self.parameters()).device
        args = tuple(a.to(device) for a in args)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        with FlopCounterMode(display=False) as counter:
            self(*args, **kwargs)
        return counter.get_total_flops()
