"""Shared test settings: offline, few threads, and where the real data lives."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_generate_config(steps: int = 120, **train):
    """A joint brain image+label generator small enough to train in seconds at 32 px."""
    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig
    from meddiff.diffusion.schedulers import SamplerConfig
    from meddiff.nets.unet import UNetConfig
    from meddiff.tasks.generate import GenerateConfig
    from meddiff.train.engine import TrainConfig

    settings = dict(steps=steps, batch_size=8, lr=2e-3, warmup_steps=10, ema_decay=0.9, log_every=1,
                    sample_every=10_000, checkpoint_every=10_000)
    settings.update(train)
    return GenerateConfig(
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32}),
        model=UNetConfig(base_channels=16, channel_mults=[1, 2, 2], attention_levels=[2], norm_groups=8),
        train=TrainConfig(**settings),
        sampler=SamplerConfig(name="ddim", steps=10),
        grid_samples=4,
    )


@pytest.fixture(scope="session")
def trained_generator(tmp_path_factory):
    """A briefly trained joint generator run folder (shared by tests that need a model that denoises)."""
    from meddiff.tasks import generate

    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = generate.fit(tiny_generate_config(), run, progress=False)
    return run, result
