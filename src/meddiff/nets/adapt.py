"""Start a conditioned UNet from a pretrained unconditional one so that, before any training, it predicts
exactly what the pretrained UNet predicts (the zero-initialisation principle of ControlNet, Zhang et al. 2023).

Every new part starts as a no-op:
- SPADE norms: the pretrained GroupNorm's affine ``(w, b)`` becomes the bias of SPADE's ``gamma`` (``w - 1``)
  and ``beta`` (``b``) with zero kernels, so ``norm(x) * (1 + gamma) + beta`` is the pretrained norm;
- extra input channels (concatenated conditions, a joint model's mask code): zero kernels;
- extra output channels (a joint model's mask code): zero (the output convolution starts at zero anyway);
- cross-attention: its output projection starts at zero (residual identity), the pooled-text and class
  embeddings added to the time embedding start at zero.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from meddiff.errors import UserError
from meddiff.nets.spade import SPADE
from meddiff.nets.unet import UNet, UNetConfig

# What a task may change when it adapts a pretrained UNet; every other field is the backbone's architecture.
CONDITIONING_FIELDS = frozenset(
    {
        "in_channels",
        "out_channels",
        "cond_channels",
        "spade_classes",
        "spade_hidden",
        "context_dim",
        "context_pooled",
        "num_classes",
    }
)


def adapt_unet(backbone: UNet, config: UNetConfig) -> tuple[UNet, set[str]]:
    """A UNet of ``config`` started from ``backbone``'s weights, equal to it in prediction (on the backbone's
    channels) until trained, and the names of its adapters: the parameters that are new or were widened."""
    base = backbone.config
    for f in dataclasses.fields(UNetConfig):
        if f.name not in CONDITIONING_FIELDS and getattr(config, f.name) != getattr(base, f.name):
            raise UserError(
                f"the adapted model must keep the pretrained architecture: model.{f.name} is "
                f"{getattr(config, f.name)!r} here, {getattr(base, f.name)!r} in the backbone"
            )
    if base.cond_channels or base.spade_classes or base.context_dim or base.num_classes:
        raise UserError("the backbone must be an unconditional image model (an image-only generate run)")
    if config.in_channels < base.in_channels or config.out_channels < base.out_channels:
        raise UserError(
            f"the backbone models {base.in_channels} image channels; the adapted model has "
            f"{config.in_channels} in and {config.out_channels} out"
        )
    model = UNet(config)
    pretrained = backbone.state_dict()
    state = model.state_dict()
    loaded: set[str] = set()
    with torch.no_grad():
        for name, value in pretrained.items():
            if name in state and state[name].shape == value.shape:
                state[name].copy_(value)
                loaded.add(name)
        _widen(state, pretrained, "input_conv.weight", dim=1)
        for name in ("out.2.weight", "out.2.bias"):
            _widen(state, pretrained, name, dim=0)
        _spade_from_group_norms(model, pretrained)
        _zero_new_embeddings(model)
    return model, set(state) - loaded


def _widen(state: dict, pretrained: dict, name: str, dim: int) -> None:
    """The pretrained tensor in the first slots of a wider one along ``dim``, zeros in the rest."""
    wide, narrow = state[name], pretrained[name]
    if wide.shape == narrow.shape:
        return
    wide.zero_()
    wide.narrow(dim, 0, narrow.shape[dim]).copy_(narrow)


def _spade_from_group_norms(model: UNet, pretrained: dict) -> None:
    for name, module in model.named_modules():
        if not isinstance(module, SPADE):
            continue
        weight, bias = pretrained.get(f"{name}.weight"), pretrained.get(f"{name}.bias")
        for conv in (module.gamma, module.beta):
            nn.init.zeros_(conv.weight)
        if weight is not None:
            module.gamma.bias.copy_(weight - 1)
            module.beta.bias.copy_(bias)
        else:
            nn.init.zeros_(module.gamma.bias)
            nn.init.zeros_(module.beta.bias)


def _zero_new_embeddings(model: UNet) -> None:
    if model.class_embed is not None:
        nn.init.zeros_(model.class_embed.weight)
    if model.context_embed is not None:
        for p in model.context_embed[-1].parameters():
            nn.init.zeros_(p)
