"""``meddiff demo``: the main job a newcomer runs first.

Trains a joint image + tissue-label generator on the embedded MNI152 brain MRI slices for a fixed time
budget, conditioned on the axial level of the slice (8 levels), samples labelled pairs at every level with
a fast guided sampler, and writes a run folder with a sample grid, the loss curve, real pairs for
comparison and an HTML report. The settings were chosen by measurement on a 2-core CPU: in 6 minutes an
unconditional model of the same size learned tissue texture but not the global anatomy (blob-shaped
slices), while level conditioning with guidance 2 gives recognisable slices from cerebellum to vertex
(see benchmarks/results/demo.md).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.samples import BRAIN_CLASSES
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import write_json
from meddiff.nets.unet import UNetConfig
from meddiff.report import Section, pairs_grid, save_png, write_report
from meddiff.rundir import RunDir
from meddiff.tasks import generate
from meddiff.train.engine import TrainConfig

MARKER = "demo.json"
DEMO_SAMPLER = SamplerConfig(name="dpm++", steps=20, guidance_scale=2.0)
DEMO_LEVELS = 8
DEMO_SAMPLES = 32


def demo_config(minutes: float) -> generate.GenerateConfig:
    """The demo's generator config: a 3M-parameter level-conditional UNet at 64 px, v-prediction with
    min-SNR-5 loss weighting (benchmarks/results/convergence.md), bf16 where the CPU has it."""
    return generate.GenerateConfig(
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 64, "hflip": True, "levels": DEMO_LEVELS}),
        model=UNetConfig(base_channels=32, channel_mults=[1, 2, 2, 4], blocks_per_level=1, attention_levels=[2, 3]),
        noise=NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction", loss_weighting="min_snr"),
        train=TrainConfig(
            steps=100_000,
            batch_size=8,
            lr=1e-3,
            warmup_steps=50,
            ema_decay=0.995,
            mixed_precision="bf16",
            max_minutes=minutes,
            log_every=10,
            sample_every=200,
            checkpoint_every=200,
            keep_checkpoints=1,
        ),
        sampler=DEMO_SAMPLER,
        joint_mask=True,
        conditional=True,
        grid_samples=16,
    )


def _fresh_run_dir(out: Path) -> None:
    """The demo always starts from scratch; it only ever deletes a folder an earlier demo wrote."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out}: folder exists and was not written by `meddiff demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"written_by": "meddiff demo"})


def _class_fractions(masks: torch.Tensor, num_classes: int) -> list[float]:
    valid = masks[masks != IGNORE_INDEX]
    counts = torch.bincount(valid.flatten(), minlength=num_classes).float()
    return (counts / counts.sum()).tolist()


def run_demo(out: Path, minutes: float = 6.0) -> Path:
    """Train, sample and report; returns the path of ``report.html``."""
    out = Path(out)
    _fresh_run_dir(out)
    started = time.monotonic()
    config = demo_config(minutes)
    result = generate.fit(config, out)
    train_seconds = time.monotonic() - started

    sample_started = time.monotonic()
    synthetic = generate.run(out, DEMO_SAMPLES, out / "synthetic", DEMO_SAMPLER, seed=0, autocast_bf16=True)
    sample_seconds = time.monotonic() - sample_started

    real = build_dataset(config.data)
    real_images, real_masks = real.images, real.masks
    idx = torch.linspace(0, len(real) - 1, 8).long()
    real_grid = save_png(
        pairs_grid(real_images[idx], real_masks[idx], len(BRAIN_CLASSES), ncol=4, scale=2), out / "real_pairs.png"
    )
    fake_masks = _read_masks(synthetic)

    num_classes = len(BRAIN_CLASSES)
    metrics = {
        "final_loss": float(np.mean(list(result.losses.values())[-50:])),
        "train_steps": result.step,
        "train_minutes": round(train_seconds / 60, 2),
        "sampler": {
            "name": DEMO_SAMPLER.name,
            "steps": DEMO_SAMPLER.steps,
            "samples": DEMO_SAMPLES,
            "seconds_per_image": round(sample_seconds / DEMO_SAMPLES, 3),
        },
        "tissue_fractions": [
            {"class": name, "real": round(r, 4), "generated": round(g, 4)}
            for name, r, g in zip(
                BRAIN_CLASSES,
                _class_fractions(real_masks, num_classes),
                _class_fractions(fake_masks, num_classes),
                strict=True,
            )
        ],
    }
    RunDir(out).write_metrics(metrics)
    sections = [
        Section(
            "Generated labelled pairs",
            f"{DEMO_SAMPLES} image + tissue-label pairs sampled with {DEMO_SAMPLER.name}, "
            f"{DEMO_SAMPLER.steps} steps, guidance {DEMO_SAMPLER.guidance_scale} (seed 0); one row per "
            f"axial level, from inferior (top) to superior. Left: image; right: its generated label map "
            "(orange other brain tissue / CSF, light blue grey matter, green white matter).",
            [synthetic / "grid.png"],
        ),
        Section("Real training pairs", "Axial slices of the MNI152 template with their tissue labels.", [real_grid]),
    ]
    return write_report(out, title="meddiff demo: brain MRI image + label generation", sections=sections)


def _read_masks(folder: Path) -> torch.Tensor:
    from PIL import Image

    return torch.stack(
        [torch.from_numpy(np.array(Image.open(p))).long() for p in sorted((folder / "masks").glob("*.png"))]
    )
