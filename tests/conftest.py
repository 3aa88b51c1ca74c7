"""Shared test settings: offline, few threads, and where the real data lives."""

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# Session fixtures that train a model for tens of seconds: every test using one is slow.
SLOW_FIXTURES = {"trained_generator", "trained_textgen"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Derive the markers a test's fixtures imply, and skip gpu tests where no CUDA GPU is visible."""
    cuda = torch.cuda.is_available()
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "shared_data" in fixtures:
            item.add_marker(pytest.mark.data)
        if item.get_closest_marker("gpu") and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def meddiff_main(monkeypatch, capsys):
    """Run the command line's entry point in this process, error handling included (a subprocess spends
    ~7 s importing torch, diffusers and accelerate): returns the exit code and what went to stderr."""
    from meddiff.cli import main

    def run(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["meddiff", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            main()
        return exit_.value.code, capsys.readouterr().err

    return run


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

    settings = dict(
        steps=steps,
        batch_size=8,
        lr=2e-3,
        warmup_steps=10,
        ema_decay=0.9,
        log_every=1,
        sample_every=10_000,
        checkpoint_every=10_000,
    )
    settings.update(train)
    return GenerateConfig(
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32}),
        model=UNetConfig(base_channels=16, channel_mults=[1, 2, 2], attention_levels=[2], norm_groups=8),
        train=TrainConfig(**settings),
        sampler=SamplerConfig(name="ddim", steps=10),
        grid_samples=4,
    )


def tiny_image_generator_config(steps: int, size: int = 24):
    """``tiny_generate_config`` as an image-only generator on the brain slices at ``size`` px: the diffusion
    model whose features (or weights) the segmentation tests build on."""
    import dataclasses

    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig

    return dataclasses.replace(
        tiny_generate_config(steps=steps),
        joint_mask=False,
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": size}),
    )


@pytest.fixture(scope="session")
def trained_generator(tmp_path_factory):
    """A briefly trained joint generator run folder (shared by tests that need a model that denoises)."""
    from meddiff.tasks import generate

    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = generate.fit(tiny_generate_config(), run, progress=False)
    return run, result


def tiny_textgen_config(steps: int = 80, **changes):
    """A text-conditioned joint brain image+label model (MiniLM captions) small enough to train in seconds."""
    from meddiff.config import from_dict
    from meddiff.tasks.textgen import TextGenConfig

    data = {
        "data": {"kind": "brain_mri", "size": 32, "levels": 4},
        "model": {
            "base_channels": 16,
            "channel_mults": [1, 2, 2],
            "blocks_per_level": 1,
            "attention_levels": [1, 2],
            "norm_groups": 8,
        },
        "train": {
            "steps": steps,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 10,
            "ema_decay": 0.9,
            "log_every": 10,
            "sample_every": 10_000,
            "checkpoint_every": 10_000,
        },
        "sampler": {"name": "ddim", "steps": 10, "guidance_scale": 2.0},
        "alignment": {"steps": 30, "image_size": 32},
        "grid_samples": 4,
    }
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return from_dict(TextGenConfig, data)


@pytest.fixture(scope="session")
def trained_textgen(tmp_path_factory):
    """A briefly trained text-conditioned run folder (shared by the text-editing tests)."""
    from meddiff.tasks import textgen

    run = tmp_path_factory.mktemp("runs") / "textgen"
    textgen.fit(tiny_textgen_config(), run, progress=False)
    return run
