"""Mask-to-image synthesis: a diffusion UNet draws an image for a given label map (SDM, Wang et al. 2022).

The UNet's encoder sees only the noisy image; the one-hot label map enters every middle and decoder
residual block through SPADE (``mask_conditioning: spade``), is concatenated to the noisy image at the
input as in SR3 (``concat``), or both (``spade+concat``). For classifier-free guidance the whole map is
zeroed for ``cond_drop_prob`` of the training samples (0.2, as SDM); sampling then uses
``u + s * (c - u)`` with the sampler's ``guidance_scale`` s (1: the conditional model alone).

``init_from`` starts the model from a pretrained image-only generate run (``meddiff.tasks.pretrained``): its
architecture and noise process, with SPADE or the concatenated channels zero-initialised so that step 0
predicts what the backbone predicts, or (``controlnet``) the backbone steered by a ControlNet branch.

``run`` turns a folder of masks (or a joint generator's samples, optionally augmented) into a dataset
folder of images/, masks/ and manifest.json (model, seed, sampler, steps, guidance per file) that
meddiff's image+mask loader reads directly. ``export`` is shared with the pix2pix baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset, data_mirror
from meddiff.data.cadis import CadisTask, cadis_spec
from meddiff.data.classmap import LabelSpec, label_spec
from meddiff.data.fit import Fit
from meddiff.data.labels import one_hot
from meddiff.data.mask_sources import MaskAugment, MaskSet, augment_masks, read_cadis_maps, read_mask_folder
from meddiff.data.mirror import NO_MIRROR, Mirror
from meddiff.data.writers import write_pair_folder
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import check_new_folder
from meddiff.nets.controlnet import ControlledUNet
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.report.grids import pairs_grid, save_png
from meddiff.rundir import RunDir, list_checkpoints
from meddiff.runlock import releases_run_lock
from meddiff.tasks import upscale
from meddiff.tasks.pretrained import (
    Backbone,
    TrainParts,
    check_pretrained_options,
    new_unet,
    task_model,
    trainable_parameters,
)
from meddiff.tasks.runs import RunHandle, load_trained, run_config, to_uint8
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "synthesize"
MaskConditioning = Literal["spade", "concat", "spade+concat", "controlnet"]


@dataclass
class SynthesizeConfig:
    """``meddiff synth fit`` config of the mask-to-image task (``task: synthesize``)."""

    data: DataConfig = field(default_factory=DataConfig)  # labelled images
    model: UNetConfig = field(default_factory=UNetConfig)  # channels, spade_classes, cond_channels set from data
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(guidance_scale=1.5))  # training grids
    mask_conditioning: MaskConditioning = "spade"  # controlnet: needs init_from
    cond_drop_prob: float = 0.2  # share of training samples whose whole map is dropped (for guidance)
    grid_samples: int = 8
    # a pretrained image-only generate run to start from; its model and noise replace the two sections above
    init_from: str | None = None
    # with init_from, what trains: all, or only the new parts over the frozen backbone (default: adapters
    # for controlnet, all otherwise)
    train_parts: TrainParts | None = None

    def __post_init__(self):
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.mask_conditioning == "controlnet" and not self.init_from:
            raise ValueError("mask_conditioning controlnet steers a pretrained model: set init_from")
        check_pretrained_options(self.init_from, self.train_parts)

    @property
    def trained_parts(self) -> TrainParts:
        """What the optimiser updates (``train_parts`` or its default)."""
        if self.train_parts is not None:
            return self.train_parts
        return "adapters" if self.mask_conditioning == "controlnet" else "all"


@dataclass(repr=False)
class Synthesizer(RunHandle):
    """A trained mask-to-image model: ``meddiff.load(run).synthesize(masks)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = SynthesizeConfig
    model: UNet | ControlledUNet
    diffusion: Diffusion
    image_channels: int
    class_names: tuple[str, ...]
    mask_conditioning: MaskConditioning
    stored: dict
    path: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def size(self) -> int:
        return int(self.stored["data"]["size"])

    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def synthesize(
        self,
        masks: torch.Tensor,
        steps: int = 20,
        sampler: str = "dpm++",
        guidance: float = 1.0,
        eta: float = 0.0,
        seed: int = 0,
        batch_size: int = 16,
        bf16: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images ``[N, C, H, W]`` in [-1, 1] (CPU) for class-id masks ``[N, H, W]``; image ``i`` is drawn
        with seed ``seed + i``."""
        settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance, eta=eta)
        seeds = range(seed, seed + masks.shape[0])
        return synthesize(self, masks, settings, seeds, batch_size, progress, bf16)


def conditioning(masks: torch.Tensor, num_classes: int, mode: MaskConditioning) -> Conditioning:
    """The label-map conditioning of class-id masks ``[B, H, W]`` (ignored pixels: all-zero one-hot)."""
    m = one_hot(masks, num_classes)
    return Conditioning(
        label_map=m if "spade" in mode or mode == "controlnet" else None,
        cond_image=m if "concat" in mode else None,
        guide_cond_image=True,
    )


def with_backbone(
    config: SynthesizeConfig, image_channels: int, num_classes: int
) -> tuple[SynthesizeConfig, Backbone | None]:
    """``config`` with its model set for the data (with ``init_from``: the backbone's architecture and noise
    process in place of its own; for controlnet, the controlled UNet, which has no conditioning of its own)
    and the backbone (None without ``init_from``)."""
    mode = config.mask_conditioning
    model, noise, backbone = task_model(
        config.init_from,
        image_channels,
        config.model,
        config.noise,
        in_channels=image_channels,
        out_channels=image_channels,
        spade_classes=num_classes if "spade" in mode else 0,
        cond_channels=num_classes if "concat" in mode else 0,
    )
    return replace(config, model=model, noise=noise), backbone


def grid_indices(n_data: int, n: int) -> torch.Tensor:
    """``n`` evenly spread dataset indices (the training-time sample grid's masks)."""
    return torch.linspace(0, n_data - 1, min(n, n_data)).round().long()


@releases_run_lock
def fit(config: SynthesizeConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the mask-to-image model on ``config.data`` (images with masks); everything goes under ``run_dir``."""
    dataset = build_dataset(config.data)
    if dataset.masks is None or not dataset.num_classes:
        raise UserError(
            "mask-to-image synthesis needs data with masks (data.kind image_mask_folder, cadis, "
            "nifti with labels or brain_mri)"
        )
    if dataset.images is None:
        raise UserError(f"{config.data.root}: masks-only data; synthesis training needs images with their masks")
    num_classes, mode = dataset.num_classes, config.mask_conditioning
    config, backbone = with_backbone(config, dataset.in_channels, num_classes)
    RunDir(run_dir).prepare(config, resume)
    seed_everything(config.train.seed)
    model, trained = new_model(config, num_classes, backbone)
    diffusion = Diffusion(config.noise)
    stored = run_config(TASK, config)
    stored["synth"] = {
        "image_channels": dataset.in_channels,
        "class_names": list(dataset.class_names),
        "mask_conditioning": mode,
    }
    grid = grid_indices(len(dataset), config.grid_samples)
    grid_masks, grid_images = dataset.masks[grid].long(), dataset.images[grid]

    def loss_fn(net, batch, generator):
        cond = conditioning(batch["mask"], num_classes, mode)
        return diffusion.loss(net, batch["image"], cond, generator, cond_drop_prob=config.cond_drop_prob)

    def sample_fn(net, path):
        synth = Synthesizer(
            net, diffusion, dataset.in_channels, tuple(dataset.class_names), mode, stored, Path(run_dir)
        )
        fake = synthesize(synth, grid_masks, config.sampler, seeds=range(len(grid)))
        save_png(comparison_grid(fake, grid_masks, num_classes, grid_images), path)

    trainer = Trainer(
        run_dir, model, dataset, config.train, loss_fn, stored, sample_fn, progress, param_groups={"model": trained}
    )
    return trainer.fit(resume=resume)


def new_model(
    config: SynthesizeConfig, num_classes: int, backbone: Backbone | None
) -> tuple[UNet | ControlledUNet, list[nn.Parameter]]:
    """The untrained network of ``config`` (started from ``backbone`` if given) and the parameters to train."""
    if backbone is not None and config.mask_conditioning == "controlnet":
        controlled = ControlledUNet.from_backbone(backbone.model, num_classes)
        adapters = {name for name, _ in controlled.named_parameters() if name.startswith("control.")}
        return controlled, trainable_parameters(controlled, adapters, config.trained_parts)
    return new_unet(config.model, backbone, config.trained_parts)


def build_network(stored: dict) -> UNet | ControlledUNet:
    """The (untrained) network a stored synthesis config describes."""
    model = from_dict(UNetConfig, stored["model"], "model.")
    info = stored["synth"]
    if info["mask_conditioning"] == "controlnet":
        return ControlledUNet(model, len(info["class_names"]))
    return UNet(model)


def comparison_grid(
    fake: torch.Tensor, masks: torch.Tensor, num_classes: int, real: torch.Tensor | None = None
) -> np.ndarray:
    """Synthesised images with their mask overlays; with ``real``, each row is [synthesised | real] for one
    mask."""
    scale = max(1, 128 // fake.shape[-1])
    if real is None:
        return pairs_grid(fake, masks, num_classes, ncol=4, scale=scale)
    both = torch.stack([fake, real], dim=1).flatten(0, 1)
    return pairs_grid(both, masks.repeat_interleave(2, dim=0), num_classes, ncol=2, scale=scale)


@torch.no_grad()
def synthesize(
    synth: Synthesizer,
    masks: torch.Tensor,
    sampler: SamplerConfig,
    seeds: Sequence[int],
    batch_size: int = 16,
    progress: bool = False,
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] for class-id masks ``[N, H, W]``; image ``i`` is drawn with
    ``seeds[i]`` (its own generator), so it does not depend on the batch it was drawn in."""
    seeds = list(seeds)
    if len(seeds) != masks.shape[0]:
        raise ValueError("one seed per mask")
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = masks[start : start + batch_size].long().to(synth.device)
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        cond = conditioning(chunk, synth.num_classes, synth.mask_conditioning)
        out.append(
            sample(
                synth.model,
                synth.diffusion,
                sampler,
                (chunk.shape[0], synth.image_channels, *chunk.shape[-2:]),
                cond,
                generator=generators,
                autocast_bf16=autocast_bf16,
                progress=progress,
            ).cpu()
        )
    return torch.cat(out).clamp(-1, 1)


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> Synthesizer:
    """A trained mask-to-image model (EMA weights, on ``device``) from its run or checkpoint folder."""
    model, stored, path = load_trained(run_or_checkpoint, build=build_network, device=device, task=TASK)
    info = stored["synth"]
    return Synthesizer(
        model,
        Diffusion(from_dict(NoiseConfig, stored["noise"], "noise.")),
        info["image_channels"],
        tuple(info["class_names"]),
        info["mask_conditioning"],
        stored,
        path,
    )


# -- mask sources and export (shared with the pix2pix baseline) --------------------------------------------
def training_spec(stored: dict, class_names: Sequence[str]) -> LabelSpec:
    """How the model's training data stored mask ids, so a user's masks in the same format map the same way."""
    data = from_dict(DataConfig, stored["data"], "data.")
    if data.kind == "cadis":
        return cadis_spec(data.cadis_task)
    if data.kind in ("image_mask_folder", "nifti") and (data.class_map or data.remap):
        return label_spec(data.class_map, data.remap, data.class_names)
    return LabelSpec(tuple(class_names), source=f"the {len(class_names)} classes of the model")


def mask_fit(stored: dict) -> Fit:
    """How masks are brought to the model's size: as in training, but a centre crop where training cropped
    randomly."""
    data = from_dict(DataConfig, stored["data"], "data.")
    mode = "center_crop" if data.fit == "random_crop" else data.fit
    return Fit(data.size, mode, data.short_side)


def read_masks(
    stored: dict,
    class_names: Sequence[str],
    masks: Path,
    cadis_task: CadisTask | None = None,
    n_masks: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> MaskSet:
    """Masks for synthesis from ``masks``: a joint generator's run folder (``n_masks`` masks sampled with the
    generator's own sampler settings, seeds ``seed``..), raw CaDIS label maps (``cadis_task``), or a folder of
    masks (or a dataset folder with masks/) stored like the model's training data or written by meddiff."""
    masks = Path(masks)
    if list_checkpoints(masks):
        return generated_masks(masks, class_names, int(stored["data"]["size"]), n_masks, seed, progress)
    fit_ = mask_fit(stored)
    if cadis_task is not None:
        return read_cadis_maps(masks, cadis_task, class_names, fit_)
    return read_mask_folder(masks, training_spec(stored, class_names), class_names, fit_)


def generated_masks(
    run: Path, class_names: Sequence[str], size: int, n: int, seed: int, progress: bool = False
) -> MaskSet:
    """``n`` label maps sampled by the joint generator of ``run`` (its own sampler settings; conditional
    generators spread over their attributes)."""
    from meddiff.tasks import generate

    model, diffusion, codec, stored, path = generate.load(run)
    names = tuple(stored["codec"]["class_names"] or ())
    if not codec.num_classes or names != tuple(class_names):
        raise UserError(
            f"{path}: the joint generator makes masks of classes {list(names)}, but the synthesis "
            f"model was trained on {list(class_names)}"
        )
    sampler = from_dict(SamplerConfig, stored["sampler"], "sampler.")
    attribute_names = stored["codec"].get("attribute_names") or []
    _, masks = generate.generate(
        model,
        diffusion,
        codec,
        sampler,
        n,
        seed,
        (size, size),
        progress=progress,
        attributes=generate.spread_attributes(n, len(attribute_names)),
        num_attributes=len(attribute_names),
    )
    return MaskSet(
        masks.to(torch.uint8),
        [f"generated_{seed + i:06d}" for i in range(n)],
        [
            f"{path} (seed {seed + i}, {sampler.name} {sampler.steps} steps, guidance {sampler.guidance_scale})"
            for i in range(n)
        ],
        tuple(class_names),
    )


@dataclass
class Plan:
    """What to synthesise: one entry per output pair (its mask, name, seed and manifest record)."""

    masks: torch.Tensor
    names: list[str]
    seeds: list[int]
    records: list[dict[str, Any]]


def augment_mirror(stored: dict, class_names: Sequence[str], augment: MaskAugment | None) -> Mirror:
    """The class pairs the mask flips of ``augment`` swap: the model's training ``data.mirror_pairs`` (and
    class map ``mirror:`` keys) plus ``augment.mirror_pairs``."""
    if augment is None or not (augment.hflip or augment.vflip):
        return NO_MIRROR
    data = from_dict(DataConfig, stored["data"], "data.")
    pairs = [*(data.mirror_pairs or []), *augment.mirror_pairs]
    return data_mirror(replace(data, mirror_pairs=pairs or None), class_names)


def plan(
    masks: MaskSet, n_per_mask: int, seed: int, augment: MaskAugment | None = None, mirror: Mirror = NO_MIRROR
) -> Plan:
    """``n_per_mask`` outputs per mask; output ``j`` uses seed ``seed + j`` (and augmentation ``(seed, j)``,
    whose flips swap ``mirror``'s class pairs)."""
    if n_per_mask < 1:
        raise UserError(f"--n-per-mask must be >= 1, got {n_per_mask}")
    index = [i for i in range(len(masks)) for _ in range(n_per_mask)]
    seeds = [seed + j for j in range(len(index))]
    names = [f"{masks.names[i].replace('/', '__')}_{k}" for i in range(len(masks)) for k in range(n_per_mask)]
    records = [{"source_mask": masks.origins[i]} for i in index]
    if augment is not None and augment.active:
        chosen, changes = augment_masks(masks, index, augment, seed, mirror)
        records = [{**r, "augment": c} for r, c in zip(records, changes, strict=True)]
    else:
        chosen = masks.masks[index]
    return Plan(chosen.long(), names, seeds, records)


def export(
    out_dir: Path, images: torch.Tensor, job: Plan, model: dict, settings: dict, class_names: Sequence[str]
) -> Path:
    """Write images/, masks/, manifest.json (``model`` and ``settings`` in every file's entry) and grid.png."""
    arrays = to_uint8(images).permute(0, 2, 3, 1).numpy()
    arrays = arrays[..., 0] if arrays.shape[-1] == 1 else arrays
    files = [
        {
            "image": f"images/{name}.png",
            "mask": f"masks/{name}.png",
            "model": model["checkpoint"],
            "seed": seed,
            **settings,
            **record,
        }
        for name, seed, record in zip(job.names, job.seeds, job.records, strict=True)
    ]
    manifest = {"model": {**model, "class_names": list(class_names)}, "files": files}
    grid = comparison_grid(images[:32], job.masks[:32], len(class_names))
    masks = job.masks.numpy().astype(np.uint8)
    return write_pair_folder(
        out_dir, arrays, masks, job.names, manifest, extra=lambda tmp: save_png(grid, tmp / "grid.png")
    )


def run(
    run_or_checkpoint: Path,
    masks: Path,
    out_dir: Path,
    sampler: SamplerConfig,
    n_per_mask: int = 1,
    seed: int = 0,
    augment: MaskAugment | None = None,
    cadis_task: CadisTask | None = None,
    n_masks: int = 16,
    batch_size: int = 16,
    progress: bool = True,
    autocast_bf16: bool = False,
    device: str = "cpu",
    cascade: upscale.Cascade | None = None,
) -> Path:
    """Synthesise ``n_per_mask`` images for every mask of ``masks`` (see ``read_masks``) into the dataset
    folder ``out_dir``; with ``cascade``, the pairs are upscaled by its super-resolution run (the manifest
    records both stages). Everything is read and checked before anything is sampled or written."""
    check_new_folder(out_dir)
    synth = load(run_or_checkpoint, device)
    upscaler = upscale.load(cascade.run, device) if cascade is not None else None
    mask_set = read_masks(synth.stored, synth.class_names, masks, cadis_task, n_masks, seed, progress)
    job = plan(mask_set, n_per_mask, seed, augment, augment_mirror(synth.stored, synth.class_names, augment))
    images = synthesize(synth, job.masks, sampler, job.seeds, batch_size, progress, autocast_bf16)
    settings = {"sampler": sampler.name, "steps": sampler.steps, "guidance": sampler.guidance_scale, "eta": sampler.eta}
    model = {"checkpoint": str(synth.path), "task": TASK, "mask_conditioning": synth.mask_conditioning}
    if upscaler is not None and cascade is not None:  # both or neither; mypy needs to see it
        result, stage = upscale.cascade(
            upscaler, cascade, images, job.masks, synth.class_names, job.seeds, autocast_bf16, progress
        )
        images, model = result.images, {**model, "upscaler": stage["checkpoint"]}
        job = replace(job, masks=result.masks, records=[{**r, "upscale": stage} for r in job.records])
    return export(out_dir, images, job, model, settings, synth.class_names)
