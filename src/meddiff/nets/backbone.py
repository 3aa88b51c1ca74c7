"""A diffusion UNet used as a segmenter: the strongest simple use of a backbone pretrained on unlabelled
images is to fine-tune all of it end to end on the labels (the pretraining is only the initialisation).

The image enters as ``x_t`` at one fixed diffusion time (a clean image at a small ``t``, where the decoder
features of the pretrained model segment best); the output convolution predicts class logits instead of
noise. ``UNet(..., out_channels=num_classes)`` holds every pretrained weight but that last convolution.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from meddiff.nets.unet import UNet, UNetConfig


class BackboneSegNet(nn.Module):
    """``forward(images [B, C, H, W]) -> logits [B, num_classes, H, W]`` through a diffusion UNet at the fixed
    model time ``time`` (what the UNet receives for the chosen step: the step, or its scaled noise level)."""

    def __init__(self, unet: UNetConfig, num_classes: int, time: float):
        super().__init__()
        self.unet = UNet(replace(unet, out_channels=num_classes))
        self.register_buffer("time", torch.tensor(float(time)), persistent=False)  # in the run config

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy the pretrained denoiser's weights, all but those whose shape differs (the output convolution,
        which predicts another number of channels); returns the names of those left as initialised."""
        own = self.unet.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.unet.load_state_dict(kept, strict=False)
        return sorted(set(own) - set(kept))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x, self.time.expand(x.shape[0]))
