"""A tiny diffusion UNet with non-trivial weights: enough to test feature plumbing without training."""

import pytest
import torch

from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig
from meddiff.nets.unet import UNet, UNetConfig


@pytest.fixture
def tiny_unet() -> UNet:
    """3 levels x 3 decoder blocks; zero-initialised output convs perturbed so every block matters."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = UNet(
            UNetConfig(
                base_channels=8, channel_mults=[1, 2, 2], blocks_per_level=2, attention_levels=[2], norm_groups=4
            )
        )
        for p in model.parameters():
            p.data += 0.05 * torch.randn_like(p)
    return model.eval()


@pytest.fixture
def diffusion() -> Diffusion:
    return Diffusion(NoiseConfig())
