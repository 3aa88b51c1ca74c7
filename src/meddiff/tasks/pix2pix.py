"""The pix2pix baseline of mask-to-image synthesis: train on the same image+mask pairs, export the same
dataset folders as the diffusion model, so every table has a GAN row beside it.

Loss (Isola et al. 2017): the generator minimises ``BCE(D(m, G(m)), real) + l1_weight * |G(m) - x|``, the
discriminator ``(BCE(D(m, x), real) + BCE(D(m, G(m)), fake)) / 2``; Adam with lr 2e-4 and betas
(0.5, 0.999), no warm-up, clipping or EMA. The shared engine (``train.engine.Trainer``) trains both
networks with two optimisers stepped in turn (discriminator first, then the generator against the updated
discriminator, as in the authors' code), so pix2pix runs have the same run folder, checkpoints, time
budget, devices and exact resume as every other task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.checkpoint import load_checkpoint
from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.cadis import CadisTask
from meddiff.data.labels import one_hot
from meddiff.data.mask_sources import MaskAugment
from meddiff.devices import model_device, resolve_device
from meddiff.errors import UserError
from meddiff.files import check_new_folder
from meddiff.nets.pix2pix import Discriminator, Generator, Pix2PixNetConfig
from meddiff.report.grids import save_png
from meddiff.rundir import RunDir, resolve_checkpoint
from meddiff.runlock import releases_run_lock
from meddiff.tasks.runs import RunHandle, check_task, run_config
from meddiff.tasks.synthesize import augment_mirror, comparison_grid, export, grid_indices, plan, read_masks
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "pix2pix"


@dataclass
class Pix2PixTrainConfig:
    """Optimisation, budget and bookkeeping of a pix2pix run."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    l1_weight: float = 100.0
    seed: int = 0
    max_minutes: float | None = None  # stop cleanly (and checkpoint) after this much training time
    mixed_precision: Literal["no", "bf16"] = "no"
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.l1_weight < 0:
            raise ValueError("lr must be > 0 and l1_weight >= 0")

    def engine_config(self) -> TrainConfig:
        """These settings as the shared engine's config (no warm-up, clipping or EMA)."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            adam_beta1=self.beta1,
            warmup_steps=0,
            grad_clip=0.0,
            ema_decay=0.0,
            seed=self.seed,
            max_minutes=self.max_minutes,
            mixed_precision=self.mixed_precision,
            log_every=self.log_every,
            sample_every=self.sample_every,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
        )


@dataclass
class Pix2PixConfig:
    """``meddiff synth pix2pix-fit`` config (``task: pix2pix``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Pix2PixNetConfig = field(default_factory=Pix2PixNetConfig)
    train: Pix2PixTrainConfig = field(default_factory=Pix2PixTrainConfig)
    grid_samples: int = 8


@dataclass(repr=False)
class Pix2Pix(RunHandle):
    """A trained pix2pix generator: ``meddiff.load(run).synthesize(masks)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = Pix2PixConfig
    generator: Generator
    image_channels: int
    class_names: tuple[str, ...]
    stored: dict
    path: Path

    def networks(self) -> list[torch.nn.Module]:
        return [self.generator]

    def synthesize(self, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Images ``[N, C, H, W]`` in [-1, 1] (CPU) for class-id masks ``[N, H, W]``; dropout of image ``i``
        is drawn with seed ``seed + i``."""
        return translate(self.generator, masks, len(self.class_names), list(range(seed, seed + masks.shape[0])))


class Pix2PixPair(nn.Module):
    """The generator and discriminator trained together (their weights are ``generator.*`` and
    ``discriminator.*`` of the checkpoint's ``model`` group)."""

    def __init__(self, generator: Generator, discriminator: Discriminator):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator


def _networks(stored: dict) -> Pix2PixPair:
    info = stored["synth"]
    net = from_dict(Pix2PixNetConfig, stored["model"], "model.")
    k, c = len(info["class_names"]), info["image_channels"]
    return Pix2PixPair(Generator(k, c, net), Discriminator(k, c, net))


def translate(generator: Generator, masks: torch.Tensor, num_classes: int, seeds: list[int]) -> torch.Tensor:
    """Images for class-id masks ``[N, H, W]``. Dropout stays on, as in the paper; image ``i`` is drawn alone
    with seed ``seeds[i]``, so it does not depend on the other masks."""
    images = []
    device = model_device(generator)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        generator.train()  # dropout on; GroupNorm has no running statistics, so nothing else changes
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            images.append(generator(one_hot(masks[i : i + 1].long().to(device), num_classes)).cpu())
    return torch.cat(images).clamp(-1, 1)


@releases_run_lock
def fit(config: Pix2PixConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train pix2pix on ``config.data`` (images with masks); everything goes under ``run_dir``."""
    dataset = build_dataset(config.data)
    if dataset.images is None or dataset.masks is None or not dataset.num_classes:
        raise UserError(
            "pix2pix needs images with masks (data.kind image_mask_folder, cadis, nifti with labels or brain_mri)"
        )
    RunDir(run_dir).prepare(config, resume)
    k = dataset.num_classes
    stored = run_config(TASK, config)
    stored["synth"] = {"image_channels": dataset.in_channels, "class_names": list(dataset.class_names)}
    seed_everything(config.train.seed)
    pair = _networks(stored)
    grid = grid_indices(len(dataset), config.grid_samples)

    def loss_fn(model: Pix2PixPair, batch: dict, _noise: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
        label_map, image = one_hot(batch["mask"], k), batch["image"]
        fake = model.generator(label_map)
        real_logits = model.discriminator(label_map, image)
        fake_logits = model.discriminator(label_map, fake.detach())
        yield (
            "discriminator",
            0.5
            * (
                F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            ),
        )
        fooled = model.discriminator(label_map, fake)
        adversarial = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        yield "generator", adversarial + config.train.l1_weight * F.l1_loss(fake, image)

    def sample_fn(model: Pix2PixPair, path: Path) -> None:
        masks = dataset.masks[grid]
        fake = translate(model.generator, masks, k, list(range(len(grid))))
        save_png(comparison_grid(fake, masks.long(), k, dataset.images[grid]), path)

    groups = {"generator": list(pair.generator.parameters()), "discriminator": list(pair.discriminator.parameters())}
    trainer = Trainer(
        run_dir,
        pair,
        dataset,
        config.train.engine_config(),
        loss_fn,
        stored,
        sample_fn,
        progress,
        param_groups=groups,
    )
    return trainer.fit(resume=resume)


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> Pix2Pix:
    """The trained generator of a pix2pix run or checkpoint folder, on ``device``."""
    path = resolve_checkpoint(Path(run_or_checkpoint))
    groups, state = load_checkpoint(path)
    stored = state.get("config", {})
    check_task(stored, TASK, path)
    pair = _networks(stored)
    pair.load_state_dict(groups["model"])
    generator = pair.generator.requires_grad_(False).to(resolve_device(device))
    info = stored["synth"]
    return Pix2Pix(generator, info["image_channels"], tuple(info["class_names"]), stored, path)


def run(
    run_or_checkpoint: Path,
    masks: Path,
    out_dir: Path,
    n_per_mask: int = 1,
    seed: int = 0,
    augment: MaskAugment | None = None,
    cadis_task: CadisTask | None = None,
    n_masks: int = 16,
    progress: bool = False,
    device: str = "cpu",
) -> Path:
    """Translate every mask of ``masks`` (as ``synthesize.read_masks``) into ``n_per_mask`` images (dropout
    drawn with seed ``seed + j`` for output ``j``) and export the same dataset folder as ``synthesize.run``."""
    check_new_folder(out_dir)
    model = load(run_or_checkpoint, device)
    mask_set = read_masks(model.stored, model.class_names, masks, cadis_task, n_masks, seed, progress)
    job = plan(mask_set, n_per_mask, seed, augment, augment_mirror(model.stored, model.class_names, augment))
    images = translate(model.generator, job.masks, len(model.class_names), job.seeds)
    info = {"checkpoint": str(model.path), "task": TASK}
    return export(out_dir, images, job, info, {"sampler": "pix2pix", "steps": 1, "guidance": None}, model.class_names)
