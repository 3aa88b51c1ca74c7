"""The pix2pix baseline of mask-to-image synthesis: train on the same image+mask pairs, export the same
dataset folders as the diffusion model, so every table has a GAN row beside it.

Loss (Isola et al. 2017): the generator minimises ``BCE(D(m, G(m)), real) + l1_weight * |G(m) - x|``, the
discriminator ``(BCE(D(m, x), real) + BCE(D(m, G(m)), fake)) / 2``; Adam with lr 2e-4 and betas
(0.5, 0.999). Two networks with two optimisers updated in turn do not fit ``train.engine.Trainer`` (one
model, one loss), so this module has its own small single-process loop with the same bookkeeping: a
time budget, ``logs/train.jsonl``, sample grids, atomic safetensors checkpoints (``train.checkpoint``)
holding both networks, both optimisers and every RNG state, and exact resume.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from meddiff import __version__
from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.cadis import CadisTask
from meddiff.data.labels import one_hot
from meddiff.data.mask_sources import MaskAugment
from meddiff.devices import model_device, resolve_device
from meddiff.errors import UserError
from meddiff.nets.pix2pix import Discriminator, Generator, Pix2PixNetConfig
from meddiff.report.files import check_new_folder
from meddiff.report.grids import save_png
from meddiff.tasks.runs import RunHandle, prepare_run_dir, run_config
from meddiff.tasks.synthesize import comparison_grid, export, grid_indices, plan, read_masks
from meddiff.train.checkpoint import (
    checkpoint_name,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from meddiff.train.engine import TrainResult, console, seed_everything
from meddiff.train.progress import TrainProgress

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


def _networks(stored: dict) -> tuple[Generator, Discriminator]:
    info = stored["synth"]
    net = from_dict(Pix2PixNetConfig, stored["model"], "model.")
    k, c = len(info["class_names"]), info["image_channels"]
    return Generator(k, c, net), Discriminator(k, c, net)


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


def fit(config: Pix2PixConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train pix2pix on ``config.data`` (images with masks); everything goes under ``run_dir``."""
    dataset = build_dataset(config.data)
    if dataset.images is None or dataset.masks is None or not dataset.num_classes:
        raise UserError(
            "pix2pix needs images with masks (data.kind image_mask_folder, cadis, nifti with labels or brain_mri)"
        )
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, config, resume)
    cfg, k = config.train, dataset.num_classes
    stored = run_config(TASK, config)
    stored["synth"] = {"image_channels": dataset.in_channels, "class_names": list(dataset.class_names)}
    seed_everything(cfg.seed)
    generator, discriminator = _networks(stored)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    data_rng = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if resume and list_checkpoints(run_dir):
        step = _restore(list_checkpoints(run_dir)[-1], stored, generator, discriminator, opt_g, opt_d, data_rng)
        console.print(f"resuming from {list_checkpoints(run_dir)[-1]} (step {step})")
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _truncate_log(logs / "train.jsonl", step)
    grid = grid_indices(len(dataset), config.grid_samples)

    def sample_grid(at: int) -> None:
        fake = translate(generator, dataset.masks[grid], k, list(range(len(grid))))
        save_png(
            comparison_grid(fake, dataset.masks[grid].long(), k, dataset.images[grid]),
            run_dir / "samples" / f"{checkpoint_name(at)}.png",
        )

    result = TrainResult(step=step)
    started, last_saved = time.monotonic(), step if step else None
    budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    with TrainProgress(cfg.steps, step, progress, budget) as bar:
        while step < cfg.steps:
            index = torch.randint(0, len(dataset), (cfg.batch_size,), generator=data_rng)
            batch = default_collate([dataset[int(i)] for i in index])
            losses = _step(
                generator, discriminator, opt_g, opt_d, one_hot(batch["mask"], k), batch["image"], cfg.l1_weight
            )
            step += 1
            if not all(math.isfinite(v) for v in losses.values()):
                raise RuntimeError(f"loss became {losses} at step {step}; lower train.lr or check the data")
            result.losses[step] = losses["loss"]
            elapsed = time.monotonic() - started
            bar.update(step, losses["loss"])
            if step % cfg.log_every == 0 or step == cfg.steps:
                with open(logs / "train.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **losses, "elapsed_s": round(elapsed, 3)}) + "\n")
            if step % cfg.sample_every == 0:
                sample_grid(step)
            out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
            if step % cfg.checkpoint_every == 0 or out_of_time or step == cfg.steps:
                result.checkpoint = _save(
                    run_dir, step, stored, generator, discriminator, opt_g, opt_d, data_rng, cfg.keep_checkpoints
                )
                last_saved = step
            if out_of_time:
                result.stopped_by_budget = True
                console.print(f"time budget of {cfg.max_minutes} min reached at step {step}; saved")
                break
    if last_saved != step:
        result.checkpoint = _save(
            run_dir, step, stored, generator, discriminator, opt_g, opt_d, data_rng, cfg.keep_checkpoints
        )
    if step % cfg.sample_every:
        sample_grid(step)
    result.step, result.seconds = step, time.monotonic() - started
    return result


def _step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g,
    opt_d,
    label_map: torch.Tensor,
    image: torch.Tensor,
    l1_weight: float,
) -> dict[str, float]:
    """One discriminator update, then one generator update, on a batch."""
    generator.train()
    discriminator.train()
    fake = generator(label_map)
    real_logits = discriminator(label_map, image)
    fake_logits = discriminator(label_map, fake.detach())
    d_loss = 0.5 * (
        F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    )
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    fooled = discriminator(label_map, fake)
    adversarial = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    l1 = F.l1_loss(fake, image)
    g_loss = adversarial + l1_weight * l1
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return {"loss": g_loss.item(), "l1": l1.item(), "g_adv": adversarial.item(), "d": d_loss.item()}


def _save(
    run_dir: Path, step: int, stored: dict, generator, discriminator, opt_g, opt_d, data_rng: torch.Generator, keep: int
) -> Path:
    optimizers: dict[str, dict] = {}
    tensors: dict[str, dict[str, torch.Tensor]] = {"opt_g": {}, "opt_d": {}}
    for name, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        optimizers[name] = flatten_state(opt.state_dict(), tensors[name])
    path = save_checkpoint(
        run_dir / "checkpoints" / checkpoint_name(step),
        {
            "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(),
            **tensors,
            "rng": {"global": torch.get_rng_state(), "data": data_rng.get_state()},
        },
        {"step": step, "meddiff_version": __version__, "config": stored, "optimizers": optimizers},
    )
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _restore(path: Path, stored: dict, generator, discriminator, opt_g, opt_d, data_rng: torch.Generator) -> int:
    groups, state = load_checkpoint(path)
    if state.get("config", {}).get("model") != stored["model"]:
        raise UserError(
            f"{path}: the checkpoint's model config differs from this run's config; resume with "
            "the run's own config.yaml"
        )
    generator.load_state_dict(groups["generator"])
    discriminator.load_state_dict(groups["discriminator"])
    opt_g.load_state_dict(unflatten_state(state["optimizers"]["opt_g"], groups["opt_g"]))
    opt_d.load_state_dict(unflatten_state(state["optimizers"]["opt_d"], groups["opt_d"]))
    torch.set_rng_state(groups["rng"]["global"])
    data_rng.set_state(groups["rng"]["data"])
    return int(state["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step (they belong to the interrupted attempt)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> Pix2Pix:
    """The trained generator of a pix2pix run or checkpoint folder, on ``device``."""
    path = resolve_checkpoint(Path(run_or_checkpoint))
    groups, state = load_checkpoint(path)
    stored = state.get("config", {})
    if stored.get("task") != TASK:
        raise UserError(f"{path}: checkpoint of task '{stored.get('task')}', not '{TASK}'")
    generator, _ = _networks(stored)
    generator.load_state_dict(groups["generator"])
    generator.to(resolve_device(device))
    info = stored["synth"]
    return Pix2Pix(generator.requires_grad_(False), info["image_channels"], tuple(info["class_names"]), stored, path)


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
    job = plan(mask_set, n_per_mask, seed, augment)
    images = translate(model.generator, job.masks, len(model.class_names), job.seeds)
    info = {"checkpoint": str(model.path), "task": TASK}
    return export(out_dir, images, job, info, {"sampler": "pix2pix", "steps": 1, "guidance": None}, model.class_names)
