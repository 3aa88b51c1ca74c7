"""A ControlNet (Zhang et al. 2023) over meddiff's UNet: a trainable copy of the encoder and middle reads the
label map and adds its outputs, through zero-initialised 1x1 convolutions, to the skips and the middle of a
(usually frozen) pretrained UNet, so at step 0 the controlled model predicts exactly what the UNet predicts.

Hand-written because diffusers' ``ControlNetModel`` copies a ``UNet2DConditionModel`` and feeds its residuals
only to that class; meddiff's UNet (SPADE, concat, class and text conditioning in one model) is not one.
"""

from __future__ import annotations

import torch
from torch import nn

from meddiff.nets.layers import zero_module
from meddiff.nets.unet import UNet, UNetConfig


class ControlBranch(nn.Module):
    """The trainable copy: time/class/text embeddings, input convolution, encoder and middle of the UNet, with
    the hint (a small convolutional encoder of the label map, zero at its output) added after the input
    convolution and one zero 1x1 convolution per skip and for the middle."""

    def __init__(self, config: UNetConfig, hint_channels: int, hint_hidden: int = 64):
        super().__init__()
        self.trunk = UNet(config, encoder_only=True)
        self.hint = nn.Sequential(
            nn.Conv2d(hint_channels, hint_hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hint_hidden, hint_hidden, 3, padding=1),
            nn.SiLU(),
            zero_module(nn.Conv2d(hint_hidden, config.base_channels, 3, padding=1)),
        )
        self.skip_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.trunk.skip_channels)
        middle = self.trunk.middle_channels
        self.middle_conv = zero_module(nn.Conv2d(middle, middle, 1))

    def forward(self, x, t, label_map, class_labels, context, context_mask):
        """Residuals ``([one per skip], middle)`` for the padded input ``x`` and label map ``[B, K, H, W]``."""
        if label_map is None:
            raise ValueError("this UNet is controlled by a label map: pass label_map (one-hot [B, K, H, W])")
        trunk = self.trunk
        emb = trunk.embedding(t, x.dtype, class_labels, context, context_mask)
        hint = self.hint(label_map.to(x.dtype))
        h, skips = trunk.encode(x, emb, (None, context, context_mask), input_residual=hint)
        return [conv(s) for conv, s in zip(self.skip_convs, skips, strict=True)], self.middle_conv(h)


class ControlledUNet(nn.Module):
    """``base`` (the pretrained UNet's architecture) steered by ``control``; the ``forward`` of a UNet with
    a ``label_map``, so samplers and losses use it unchanged."""

    def __init__(self, config: UNetConfig, hint_channels: int, hint_hidden: int = 64):
        super().__init__()
        self.config = config
        self.base = UNet(config)
        self.control = ControlBranch(config, hint_channels, hint_hidden)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        label_map: torch.Tensor | None = None,
        cond_image: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.base(
            x,
            t,
            cond_image=cond_image,
            label_map=label_map,
            context=context,
            context_mask=context_mask,
            class_labels=class_labels,
            control=self.control,
        )

    @classmethod
    def from_backbone(cls, backbone: UNet, hint_channels: int, hint_hidden: int = 64) -> ControlledUNet:
        """A controlled copy of ``backbone``: ``base`` and the control's trunk both start from its weights."""
        model = cls(backbone.config, hint_channels, hint_hidden)
        weights = backbone.state_dict()
        model.base.load_state_dict(weights)
        trunk_keys = set(model.control.trunk.state_dict())
        model.control.trunk.load_state_dict({k: v for k, v in weights.items() if k in trunk_keys})
        return model
