"""Super-resolution: SR3 (Saharia et al. 2021) and the cascade to clinical sizes (Ho et al. 2021).

The UNet denoises the high-resolution image with the bicubic upsampling of its low-resolution version
concatenated to x_t, and sees SR3's continuous noise level as its time input. It trains on (random crops of)
any image folder, labelled or not: the low-resolution input is made on the fly by antialiased bicubic
downsampling. Being fully convolutional, a model trained on 64-px crops upscales images of any size.

Cascade noise augmentation: the conditioning image is itself noised to a random level s in
[0, ``max_aug_level``] of the training schedule (x_s = sqrt(alpha_bar_s) up + sqrt(1 - alpha_bar_s) noise)
and s enters the UNet as one more constant input channel, so that at sampling time a level > 0 makes the
model ignore the artefacts of a generator's 64-px output instead of copying them.

Label-aware upscaling (``label_aware``, for labelled data): the low-resolution label map, enlarged by nearest
neighbour, drives SPADE in every middle and decoder block, so an upscaled pair stays aligned. Training builds
the map the same way from the crop's mask (subsampled, then enlarged), never from the high-resolution mask:
a model trained on the sharp map it never gets at run time would copy the enlarged map's blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.folders import to_channels
from meddiff.data.imagefiles import read_image, read_mask
from meddiff.data.labels import IGNORE_INDEX, one_hot
from meddiff.data.validate import list_images
from meddiff.data.writers import write_pair_folder
from meddiff.devices import model_device, rand, randn
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import check_new_folder
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.progress import progress_bar
from meddiff.report.grids import image_grid, save_png
from meddiff.rundir import RunDir
from meddiff.runlock import releases_run_lock
from meddiff.tasks.runs import RunHandle, load_trained, run_config, to_uint8
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "upscale"


def _default_model() -> UNetConfig:
    # no attention outside the middle block: attention cost grows with the square of the image area, and a
    # super-resolution model's job is local
    return UNetConfig(base_channels=32, channel_mults=[1, 2, 2, 4], blocks_per_level=1, attention_levels=[])


@dataclass
class UpscaleConfig:
    """``meddiff upscale fit`` config of the super-resolution task (``task: upscale``).

    ``data``: the high-resolution images (labelled or not); crops of them are what the model learns from,
    e.g. ``fit: random_crop, size: 64, short_side: 256`` for 64-px crops of images at 256 px.
    ``factor``: the upscaling factor (``data.size`` must be a multiple of it).
    ``label_aware``: with labelled data, the high-resolution label map drives SPADE (the run then needs masks).
    ``max_aug_level``: conditioning noise augmentation, as a share of the noise schedule (0: none).
    ``aug_level``: the conditioning noise level used at sampling unless a run asks for another.
    """

    data: DataConfig = field(default_factory=DataConfig)
    factor: int = 4
    model: UNetConfig = field(default_factory=_default_model)  # channels and SPADE classes are set from the data
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(time_input="noise_level"))
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # for grids during training
    label_aware: bool = True
    max_aug_level: float = 0.2
    aug_level: float = 0.0
    grid_samples: int = 8

    def __post_init__(self):
        if self.factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {self.factor}")
        if self.data.size % self.factor:
            raise ValueError(f"data.size ({self.data.size}) must be a multiple of factor ({self.factor})")
        if not 0.0 <= self.max_aug_level < 1.0:
            raise ValueError(f"max_aug_level must be in [0, 1), got {self.max_aug_level}")
        if not 0.0 <= self.aug_level <= self.max_aug_level:
            raise ValueError(f"aug_level must be in [0, max_aug_level = {self.max_aug_level}], got {self.aug_level}")


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution version of ``[B, C, H, W]`` images: antialiased bicubic, ``H // factor`` pixels."""
    h, w = images.shape[-2:]
    size = (max(1, h // factor), max(1, w // factor))
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, h, w]`` images enlarged to ``size`` by bicubic interpolation (the SR baseline and the model's
    conditioning image)."""
    return F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def shrink_masks(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution version of ``[B, H, W]`` class ids: every ``factor``-th pixel (nearest neighbour)."""
    return masks[:, ::factor, ::factor]


def enlarge_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` class ids enlarged to ``size`` by nearest neighbour (class ids stay valid)."""
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()


def conditioning(
    upsampled: torch.Tensor,
    levels: torch.Tensor,
    noise: torch.Tensor,
    diffusion: Diffusion,
    label_map: torch.Tensor | None,
) -> Conditioning:
    """The model's conditioning: the bicubic image noised to ``levels`` ``[B]`` (shares of the schedule, 0 =
    clean) plus one channel holding the level, and the one-hot label map for SPADE (or None)."""
    steps = diffusion.config.num_train_timesteps
    t = (levels * (steps - 1)).round().long()
    alpha_bar = diffusion.alphas_cumprod.to(upsampled.device)[t].view(-1, 1, 1, 1)
    noised = alpha_bar.sqrt() * upsampled + (1 - alpha_bar).sqrt() * noise
    noised = torch.where(levels.view(-1, 1, 1, 1) > 0, noised, upsampled)
    level_channel = levels.view(-1, 1, 1, 1).expand(-1, 1, *upsampled.shape[-2:]).to(upsampled.dtype)
    return Conditioning(cond_image=torch.cat([noised, level_channel], dim=1), label_map=label_map)


def model_config(config: UpscaleConfig, image_channels: int, num_classes: int) -> UNetConfig:
    """The UNet of ``config`` for data with these image channels and classes (0: unlabelled)."""
    return replace(
        config.model,
        in_channels=image_channels,
        out_channels=image_channels,
        cond_channels=image_channels + 1,
        spade_classes=num_classes if config.label_aware else 0,
    )


@releases_run_lock
def fit(config: UpscaleConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the super-resolution model on (crops of) ``config.data``; everything goes under ``run_dir``."""
    dataset = build_dataset(config.data)
    label_aware = config.label_aware and dataset.num_classes > 0
    num_classes = dataset.num_classes if label_aware else 0
    config = replace(
        config,
        label_aware=label_aware,
        model=model_config(replace(config, label_aware=label_aware), dataset.in_channels, num_classes),
    )
    RunDir(run_dir).prepare(config, resume)
    seed_everything(config.train.seed)
    model = UNet(config.model)
    diffusion = Diffusion(config.noise)
    stored = run_config(TASK, config)
    stored["image_channels"] = dataset.in_channels
    stored["class_names"] = list(dataset.class_names) if label_aware else None
    factor = config.factor

    def loss_fn(net, batch, generator):
        high = batch["image"]
        device = high.device
        upsampled = bicubic(downsample(high, factor), tuple(high.shape[-2:]))
        levels = rand((high.shape[0],), generator, device) * config.max_aug_level
        noise = randn(tuple(high.shape), generator, device, high.dtype)
        label_map = (
            one_hot(enlarge_masks(shrink_masks(batch["mask"], factor), tuple(high.shape[-2:])), num_classes)
            if label_aware
            else None
        )
        return diffusion.loss(net, high, conditioning(upsampled, levels, noise, diffusion, label_map), generator)

    index = torch.linspace(0, len(dataset) - 1, min(config.grid_samples, len(dataset))).round().long()
    examples = [dataset[int(i)] for i in index]
    grid_high = torch.stack([e["image"] for e in examples])
    grid_masks = torch.stack([e["mask"] for e in examples]) if label_aware else None

    def sample_fn(net, path):
        low = downsample(grid_high, factor)
        generators = [torch.Generator().manual_seed(config.train.seed + i) for i in range(len(low))]
        label_maps = (
            None if grid_masks is None else enlarge_masks(shrink_masks(grid_masks, factor), grid_high.shape[-2:])
        )
        result = upscale_images(
            net, diffusion, config.sampler, low, factor, config.aug_level, label_maps, num_classes, generators
        )
        save_png(comparison_grid(low, result, grid_high), path)

    trainer = Trainer(run_dir, model, dataset, config.train, loss_fn, stored, sample_fn, progress)
    return trainer.fit(resume=resume)


@torch.no_grad()
def upscale_images(
    model: torch.nn.Module,
    diffusion: Diffusion,
    sampler: SamplerConfig,
    low: torch.Tensor,
    factor: int,
    aug_level: float,
    label_maps: torch.Tensor | None,
    num_classes: int,
    generators: list[torch.Generator],
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """One batch: low-resolution images ``[B, C, h, w]`` in [-1, 1] (and, for a label-aware model, class-id
    maps ``[B, h * factor, w * factor]`` at the output size) -> ``[B, C, h * factor, w * factor]``; sample
    ``i`` draws all its noise from ``generators[i]``."""
    device = model_device(model)
    size = (low.shape[-2] * factor, low.shape[-1] * factor)
    upsampled = bicubic(low, size).to(device)
    shape = (low.shape[0], low.shape[1], *size)
    noise = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators]).to(device)
    levels = torch.full((low.shape[0],), aug_level, device=device)
    label_map = one_hot(label_maps, num_classes).to(device) if num_classes and label_maps is not None else None
    cond = conditioning(upsampled, levels, noise, diffusion, label_map)
    return sample(model, diffusion, sampler, shape, cond, generator=generators, autocast_bf16=autocast_bf16).cpu()


def comparison_grid(low: torch.Tensor, upscaled: torch.Tensor, reference: torch.Tensor | None = None) -> np.ndarray:
    """Rows of bicubic | upscaled (| reference) for each image, at the high resolution."""
    size = tuple(upscaled.shape[-2:])
    columns = [bicubic(low, size), upscaled] + ([reference] if reference is not None else [])
    tiles = torch.stack(columns, dim=1).flatten(0, 1)
    return image_grid(tiles, nrow=len(columns), scale=max(1, 128 // size[0]))


@dataclass
class Upscaled:
    """Upscaled images ``[N, C, H, W]`` in [-1, 1] and their label maps ``[N, H, W]`` (None without masks),
    on the CPU."""

    images: torch.Tensor
    masks: torch.Tensor | None


@dataclass(repr=False)
class Upscaler(RunHandle):
    """A trained super-resolution model: ``meddiff.load(run).upscale(images, masks)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = UpscaleConfig
    model: UNet
    diffusion: Diffusion
    stored: dict
    path: Path

    @property
    def factor(self) -> int:
        return int(self.stored["factor"])

    @property
    def image_channels(self) -> int:
        return int(self.stored["image_channels"])

    @property
    def class_names(self) -> list[str] | None:
        """The classes a label-aware model's masks hold (None: it takes no masks)."""
        return self.stored.get("class_names")

    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def upscale(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        steps: int = 20,
        sampler: str = "dpm++",
        aug_level: float | None = None,
        seed: int = 0,
        batch_size: int = 8,
        bf16: bool = False,
        progress: bool = False,
    ) -> Upscaled:
        """``factor`` times larger images for ``[N, C, h, w]`` images in [-1, 1] (image ``i`` from seed
        ``seed + i``); a label-aware model needs their class-id masks ``[N, h, w]``, which come back enlarged
        by nearest neighbour. ``aug_level``: conditioning noise level (default: the run's ``aug_level``)."""
        return self.upscale_seeded(
            images, masks, range(seed, seed + images.shape[0]), steps, sampler, aug_level, batch_size, bf16, progress
        )

    def upscale_seeded(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None,
        seeds: Sequence[int],
        steps: int = 20,
        sampler: str = "dpm++",
        aug_level: float | None = None,
        batch_size: int = 8,
        bf16: bool = False,
        progress: bool = False,
    ) -> Upscaled:
        """``upscale`` with image ``i`` drawn from seed ``seeds[i]``."""
        level = float(self.stored["aug_level"]) if aug_level is None else aug_level
        trained_up_to = float(self.stored["max_aug_level"])
        if not 0.0 <= level <= trained_up_to:
            raise UserError(
                f"aug_level {level} is outside the levels this model was trained on, 0..{trained_up_to} (max_aug_level)"
            )
        images = self._check(images, masks)
        settings = SamplerConfig(name=sampler, steps=steps)
        num_classes = len(self.class_names or [])
        size = (images.shape[-2] * self.factor, images.shape[-1] * self.factor)
        enlarged = enlarge_masks(masks, size) if masks is not None else None  # the output's masks, SPADE's maps
        outputs = []
        for start in progress_bar(range(0, images.shape[0], batch_size), "upscaling", enabled=progress):
            chunk = slice(start, start + batch_size)
            generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
            batch_maps = enlarged[chunk] if enlarged is not None and num_classes else None
            outputs.append(
                upscale_images(
                    self.model,
                    self.diffusion,
                    settings,
                    images[chunk],
                    self.factor,
                    level,
                    batch_maps,
                    num_classes,
                    generators,
                    bf16,
                )
            )
        return Upscaled(torch.cat(outputs), enlarged)

    def _check(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        if images.dim() != 4:
            raise UserError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
        if images.shape[1] != self.image_channels:
            images = torch.stack([to_channels(im, self.image_channels) for im in images])
        if self.class_names and masks is None:
            raise UserError(
                f"{self.path}: this model was trained label-aware (classes {self.class_names}); give each image "
                "its mask"
            )
        if masks is not None:
            if masks.shape != (images.shape[0], *images.shape[-2:]):
                raise UserError(f"masks of shape {list(masks.shape)} do not match images {list(images.shape)}")
            k = len(self.class_names or [])
            bad = masks[(masks != IGNORE_INDEX) & ((masks < 0) | (masks >= max(k, 1)))]
            if k and bad.numel():
                raise UserError(f"mask class id {int(bad[0])} outside this model's classes 0..{k - 1}")
        return images.float()


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> Upscaler:
    """A trained super-resolution model (EMA weights) on ``device``."""
    model, stored, path = load_trained(run_or_checkpoint, device=device, task=TASK)
    return Upscaler(model, Diffusion(from_dict(NoiseConfig, stored["noise"], "noise.")), stored, path)


@dataclass
class Inputs:
    """Images to upscale, read from a folder: names, ``[C, h, w]`` images in [-1, 1] and masks (or None)."""

    names: list[str]
    images: list[torch.Tensor]
    masks: list[torch.Tensor] | None


def read_inputs(folder: Path, image_channels: int, num_classes: int) -> Inputs:
    """A folder of images, or a dataset folder with images/ (and masks/, matched by file name) such as
    ``meddiff generate run`` and ``synth run`` write. Every file is read and checked before anything runs."""
    folder = Path(folder)
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks_dir = folder / "masks" if images_dir != folder and (folder / "masks").is_dir() else None
    files = list_images(images_dir)
    names = [p.stem for p in files]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise UserError(f"{images_dir}: two images are named '{duplicate}' (different extensions); rename one")
    images = [to_channels(torch.from_numpy(read_image(p)), image_channels) * 2 - 1 for p in files]
    if masks_dir is None:
        return Inputs(names, images, None)
    by_name = {p.stem: p for p in list_images(masks_dir)}
    masks = []
    for path, image in zip(files, images, strict=True):
        mask_path = by_name.get(path.stem)
        if mask_path is None:
            raise UserError(f"{path}: no mask named '{path.stem}' in {masks_dir}")
        mask = torch.from_numpy(read_mask(mask_path).astype(np.int64))
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise UserError(
                f"{mask_path}: mask is {tuple(mask.shape)} pixels but its image is {tuple(image.shape[-2:])}"
            )
        bad = mask[(mask != IGNORE_INDEX) & (mask >= num_classes)] if num_classes else mask[:0]
        if bad.numel():
            raise UserError(f"{mask_path}: class id {int(bad[0])} outside the model's classes 0..{num_classes - 1}")
        masks.append(mask)
    return Inputs(names, images, masks)


def run(
    run_or_checkpoint: Path,
    inputs: Path,
    out_dir: Path,
    sampler: SamplerConfig,
    seed: int = 0,
    aug_level: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
    autocast_bf16: bool = False,
    device: str = "cpu",
) -> Path:
    """``meddiff upscale run``: every image of ``inputs`` (any size; see ``read_inputs``) ``factor`` times
    larger into the dataset folder ``out_dir`` (images/, masks/ when the inputs have masks, manifest.json,
    grid.png of bicubic | upscaled). Image ``i`` (sorted by name) uses seed ``seed + i``."""
    check_new_folder(out_dir)
    handle = load(run_or_checkpoint, device)
    found = read_inputs(inputs, handle.image_channels, len(handle.class_names or []))
    if handle.class_names and found.masks is None:
        raise UserError(
            f"{inputs}: {handle.path} was trained label-aware and needs masks: give a dataset folder with "
            "images/ and masks/"
        )
    count = len(found.names)
    high_images: list[torch.Tensor] = [torch.empty(0)] * count
    high_masks: list[torch.Tensor | None] = [None] * count
    shapes = sorted({tuple(im.shape) for im in found.images})
    for shape in shapes:  # one batch stream per image size, each image keeping its own seed
        index = [i for i in range(count) if tuple(found.images[i].shape) == shape]
        masks = torch.stack([found.masks[i] for i in index]) if found.masks is not None else None
        result = handle.upscale_seeded(
            torch.stack([found.images[i] for i in index]),
            masks,
            [seed + i for i in index],
            sampler.steps,
            sampler.name,
            aug_level,
            batch_size,
            autocast_bf16,
            progress,
        )
        for j, i in enumerate(index):
            high_images[i] = result.images[j]
            high_masks[i] = result.masks[j] if result.masks is not None else None
    level = float(handle.stored["aug_level"]) if aug_level is None else aug_level
    settings = {"sampler": sampler.name, "steps": sampler.steps, "aug_level": level, "factor": handle.factor}
    return write_upscaled(
        out_dir,
        found.names,
        found.images,
        high_images,
        high_masks if found.masks is not None else None,
        [{"source": name, "seed": seed + i, **settings} for i, name in enumerate(found.names)],
        {"checkpoint": str(handle.path), "task": TASK, "class_names": handle.class_names},
    )


def write_upscaled(
    out_dir: Path,
    names: Sequence[str],
    low: Sequence[torch.Tensor],
    high: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None] | None,
    records: Sequence[dict],
    model: dict,
) -> Path:
    """Write upscaled images (and masks) as a dataset folder with a bicubic | upscaled grid of up to 8 images
    of the first image's size."""
    arrays = [to_uint8(im).permute(1, 2, 0).numpy() for im in high]
    arrays = [a[..., 0] if a.shape[-1] == 1 else a for a in arrays]
    mask_arrays = [m.numpy().astype(np.uint8) for m in masks] if masks is not None else None  # type: ignore[union-attr]
    files = [
        {"image": f"images/{name}.png", **({"mask": f"masks/{name}.png"} if masks is not None else {}), **r}
        for name, r in zip(names, records, strict=True)
    ]
    same = [i for i in range(len(high)) if high[i].shape == high[0].shape][:8]
    grid = comparison_grid(torch.stack([low[i] for i in same]), torch.stack([high[i] for i in same]))
    return write_pair_folder(
        out_dir,
        arrays,
        mask_arrays,
        list(names),
        {"model": model, "files": files},
        extra=lambda tmp: save_png(grid, tmp / "grid.png"),
    )


@dataclass(frozen=True)
class Cascade:
    """The second stage a generator's or synthesiser's ``run`` adds: this super-resolution run, its sampling
    steps and conditioning noise level (None: the run's ``aug_level``)."""

    run: Path
    steps: int = 20
    aug_level: float | None = None


def cascade(
    upscaler: Upscaler,
    stage: Cascade,
    images: torch.Tensor,
    masks: torch.Tensor | None,
    class_names: Sequence[str] | None,
    seeds: Sequence[int],
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Upscaled, dict]:
    """The cascade's second ``stage`` (``upscaler`` is its loaded run) for a generator's pairs (classes
    ``class_names``): the upscaled pairs and the record of this stage for the manifest."""
    if upscaler.class_names:
        if masks is None:
            raise UserError(f"{upscaler.path}: this upscaler is label-aware, but the generator makes no label maps")
        if list(class_names or []) != upscaler.class_names:
            raise UserError(
                f"{upscaler.path}: the upscaler was trained on classes {upscaler.class_names}, the generator "
                f"makes {list(class_names or [])}"
            )
    level = float(upscaler.stored["aug_level"]) if stage.aug_level is None else stage.aug_level
    result = upscaler.upscale_seeded(images, masks, seeds, stage.steps, "dpm++", level, bf16=bf16, progress=progress)
    record = {"checkpoint": str(upscaler.path), "factor": upscaler.factor, "steps": stage.steps, "aug_level": level}
    return result, record
