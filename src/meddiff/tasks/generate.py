"""Generate images, or image + label-map pairs, from noise (the joint generator).

The joint model diffuses ``[image channels, label-map code]`` together. The code of class k is a vector
in {-1, 1}: one-hot scaled to [-1, 1] (K channels), or for many classes its analog bits (Chen et al. 2023,
ceil(log2 K) channels). A sample is decoded to the class whose code is nearest (largest dot product; for
one-hot that is the argmax channel), so every generated pair has a valid class id at every pixel.
Without labels (or ``joint_mask: false``) the same model is a plain unconditional image generator, which
is also what few-label segmentation extracts features from. With ``conditional: true`` it is conditioned
on the data's image-level attribute (e.g. the axial level of a slice) through the UNet's class embedding,
trained with attribute dropout so that sampling can use classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.writers import write_pair_folder
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import check_new_folder
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.report.grids import image_grid, pairs_grid, save_png
from meddiff.rundir import RunDir
from meddiff.runlock import releases_run_lock
from meddiff.tasks import upscale
from meddiff.tasks.pretrained import TrainParts, check_pretrained_options, new_unet, task_model
from meddiff.tasks.runs import RunHandle, load_trained, run_config, to_uint8
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "generate"


@dataclass
class GenerateConfig:
    """``meddiff train`` config of the generate task (``task: generate``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)  # in/out channels are set from the data
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # for grids during training
    joint_mask: bool = True  # generate the label map with the image (needs labelled data)
    mask_encoding: Literal["onehot", "bits"] = "onehot"  # bits: ceil(log2 K) channels, for many classes
    conditional: bool = False  # condition on the data's image-level attribute
    cond_drop_prob: float = 0.1  # share of training samples whose attribute is dropped (for guidance)
    grid_samples: int = 16
    # a pretrained image-only generate run to start from (its model and noise replace the sections above);
    # the mask channels and attribute embedding start at zero, so step 0 draws the backbone's images
    init_from: str | None = None
    train_parts: TrainParts = "all"  # with init_from: all, or only the new parts (adapters)

    def __post_init__(self):
        check_pretrained_options(self.init_from, self.train_parts)


@dataclass(frozen=True)
class PairCodec:
    """Packs an image and its label map into the channels the model diffuses, and unpacks samples.

    Ignored mask pixels (255) are coded as all -1 (one-hot: "no class") or all 0 (bits: between codes).
    """

    image_channels: int
    num_classes: int  # 0: images only
    mask_encoding: Literal["onehot", "bits"] = "onehot"

    @cached_property
    def codes(self) -> torch.Tensor:
        """``[K, D]`` code of each class, entries in {-1, 1}."""
        k = self.num_classes
        if self.mask_encoding == "onehot":
            return torch.eye(k) * 2 - 1
        bits = max(1, math.ceil(math.log2(k))) if k else 0
        return ((torch.arange(k)[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1

    @property
    def channels(self) -> int:
        return self.image_channels + self.codes.shape[1]

    def encode(self, batch: dict) -> torch.Tensor:
        if not self.num_classes:
            return batch["image"]
        mask = batch["mask"]
        valid = mask != IGNORE_INDEX
        code = self.codes.to(batch["image"].device)[torch.where(valid, mask, 0)].permute(0, 3, 1, 2)
        ignored = -1.0 if self.mask_encoding == "onehot" else 0.0
        return torch.cat([batch["image"], torch.where(valid[:, None], code, ignored)], dim=1)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = x[:, : self.image_channels].clamp(-1, 1)
        if not self.num_classes:
            return images, None
        scores = torch.einsum("bdhw,kd->bkhw", x[:, self.image_channels :].float(), self.codes.to(x.device))
        return images, scores.argmax(dim=1)


def attribute_conditioning(attributes: torch.Tensor | None, num_attributes: int) -> Conditioning | None:
    """Class-embedding conditioning for attribute ids (index ``num_attributes`` is "no attribute")."""
    if not num_attributes or attributes is None:
        return None
    return Conditioning(class_labels=attributes, null_class=num_attributes)


def spread_attributes(n: int, num_attributes: int) -> torch.Tensor | None:
    """Attributes for ``n`` samples in equal, sorted shares (sample i gets ``i * A // n``)."""
    return torch.arange(n) * num_attributes // n if num_attributes else None


def _codec(config: GenerateConfig, image_channels: int, num_classes: int) -> PairCodec:
    if config.joint_mask and not num_classes:
        raise UserError("joint_mask is true but the data has no masks; set joint_mask: false to generate images only")
    return PairCodec(image_channels, num_classes if config.joint_mask else 0, config.mask_encoding)


@releases_run_lock
def fit(config: GenerateConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the generator on ``config.data``; everything goes under ``run_dir``."""
    dataset = build_dataset(config.data)
    size = tuple(dataset[0]["image"].shape[-2:])
    codec = _codec(config, dataset.in_channels, dataset.num_classes)
    num_attributes = dataset.num_attributes if config.conditional else 0
    if config.conditional and not num_attributes:
        raise UserError("conditional is true but the data has no attributes (e.g. data.levels for brain_mri)")
    model_config, noise, backbone = task_model(
        config.init_from,
        dataset.in_channels,
        config.model,
        config.noise,
        in_channels=codec.channels,
        out_channels=codec.channels,
        num_classes=num_attributes,
    )
    config = replace(config, model=model_config, noise=noise)
    RunDir(run_dir).prepare(config, resume)
    seed_everything(config.train.seed)
    model, trained = new_unet(config.model, backbone, config.train_parts)
    diffusion = Diffusion(config.noise)
    stored = run_config(TASK, config)
    stored["codec"] = {
        "image_channels": codec.image_channels,
        "num_classes": codec.num_classes,
        "mask_encoding": codec.mask_encoding,
        "class_names": dataset.class_names,
        "attribute_names": dataset.attribute_names if num_attributes else None,
    }

    def loss_fn(net, batch, generator):
        cond = attribute_conditioning(batch.get("attribute"), num_attributes)
        return diffusion.loss(net, codec.encode(batch), cond, generator, cond_drop_prob=config.cond_drop_prob)

    def sample_fn(net, path):
        images, masks = generate(
            net,
            diffusion,
            codec,
            config.sampler,
            config.grid_samples,
            seed=config.train.seed,
            size=size,
            attributes=spread_attributes(config.grid_samples, num_attributes),
            num_attributes=num_attributes,
        )
        save_png(_grid(images, masks, codec), path)

    trainer = Trainer(
        run_dir, model, dataset, config.train, loss_fn, stored, sample_fn, progress, param_groups={"model": trained}
    )
    return trainer.fit(resume=resume)


def _grid(images: torch.Tensor, masks: torch.Tensor | None, codec: PairCodec) -> np.ndarray:
    scale = max(1, 128 // images.shape[-1])
    if masks is None:
        return image_grid(images, nrow=8, scale=scale)
    return pairs_grid(images, masks, codec.num_classes, ncol=4, scale=scale)


def generate(
    model: UNet,
    diffusion: Diffusion,
    codec: PairCodec,
    sampler: SamplerConfig,
    n: int,
    seed: int,
    size: tuple[int, int],
    batch_size: int = 16,
    progress: bool = False,
    autocast_bf16: bool = False,
    attributes: torch.Tensor | None = None,
    num_attributes: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` samples (with attribute ``attributes[i]`` for a conditional model); sample ``i`` is drawn with
    seed ``seed + i`` so each is reproducible on its own."""
    images, masks = [], []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        cond = attribute_conditioning(
            attributes[start : start + count] if attributes is not None else None, num_attributes
        )
        x = sample(
            model,
            diffusion,
            sampler,
            (count, codec.channels, *size),
            cond,
            generator=generators,
            autocast_bf16=autocast_bf16,
            progress=progress,
        )
        image, mask = codec.decode(x)
        images.append(image.cpu())
        masks.append(mask.cpu() if mask is not None else None)
    return torch.cat(images), (torch.cat(masks) if codec.num_classes else None)


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> tuple[UNet, Diffusion, PairCodec, dict, Path]:
    """A trained generator: EMA model (on ``device``), its diffusion process, codec, stored config, checkpoint
    path."""
    from meddiff.config import from_dict

    model, stored, path = load_trained(run_or_checkpoint, device=device, task=TASK)
    codec_info = stored["codec"]
    codec = PairCodec(
        codec_info["image_channels"], codec_info["num_classes"], codec_info.get("mask_encoding", "onehot")
    )
    return model, Diffusion(from_dict(NoiseConfig, stored["noise"], "noise.")), codec, stored, path


def _attributes_for(attribute: str | None, n: int, names: list[str] | None) -> torch.Tensor | None:
    if not names:
        if attribute is not None:
            raise UserError("--attribute given, but this model is not conditional")
        return None
    if attribute is None:
        return spread_attributes(n, len(names))
    if attribute in names:
        return torch.full((n,), names.index(attribute))
    if attribute.isdigit() and int(attribute) < len(names):
        return torch.full((n,), int(attribute))
    raise UserError(f"--attribute '{attribute}' is not one of: {', '.join(names)} (or 0..{len(names) - 1})")


@dataclass
class Samples:
    """Generated pairs: ``images`` ``[N, C, H, W]`` float in [-1, 1] and ``masks`` ``[N, H, W]`` int64 (None
    for an image-only model), on the CPU; ``records`` hold each sample's seed and settings."""

    images: torch.Tensor
    masks: torch.Tensor | None
    names: list[str]
    records: list[dict]
    model: dict  # checkpoint, task, class names
    codec: PairCodec

    def save(self, folder: Path) -> Path:
        """Write the dataset folder that ``meddiff generate run`` writes (images/, masks/, manifest.json,
        grid.png), atomically; ``folder`` must not exist yet."""
        check_new_folder(folder)
        arrays = to_uint8(self.images).permute(0, 2, 3, 1).numpy()
        arrays = arrays[..., 0] if arrays.shape[-1] == 1 else arrays
        files = [
            {"image": f"images/{name}.png", **({"mask": f"masks/{name}.png"} if self.masks is not None else {}), **r}
            for name, r in zip(self.names, self.records, strict=True)
        ]
        masks = self.masks.numpy() if self.masks is not None else None
        grid_masks = self.masks[:32] if self.masks is not None else None
        grid = _grid(self.images[:32], grid_masks, self.codec)
        manifest = {"model": self.model, "files": files}
        return write_pair_folder(
            folder, arrays, masks, self.names, manifest, extra=lambda tmp: save_png(grid, tmp / "grid.png")
        )


@dataclass(repr=False)
class GeneratorModel(RunHandle):
    """A trained generator (EMA weights) ready to sample: ``meddiff.load(run).sample(16)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = GenerateConfig
    model: UNet
    diffusion: Diffusion
    codec: PairCodec
    stored: dict
    path: Path

    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def class_names(self) -> list[str] | None:
        return self.stored["codec"]["class_names"] if self.codec.num_classes else None

    @property
    def attribute_names(self) -> list[str] | None:
        return self.stored["codec"].get("attribute_names")

    def sample(
        self,
        n: int,
        steps: int = 20,
        sampler: str = "dpm++",
        guidance: float = 1.0,
        eta: float = 0.0,
        seed: int = 0,
        attributes: str | int | None = None,
        size: int | None = None,
        batch_size: int = 16,
        bf16: bool = False,
        progress: bool = False,
    ) -> Samples:
        """``n`` samples (sample ``i`` from seed ``seed + i``) with a diffusers sampler; a conditional model
        draws attribute ``attributes`` (name or index), or every attribute in equal shares when None."""
        settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance, eta=eta)
        side = size or self.stored["data"].get("size")
        if side is None:
            raise UserError("pass a size: the run's data config does not fix an image size")
        names = self.attribute_names
        chosen = _attributes_for(None if attributes is None else str(attributes), n, names)
        images, masks = generate(
            self.model,
            self.diffusion,
            self.codec,
            settings,
            n,
            seed,
            (side, side),
            batch_size,
            progress,
            bf16,
            chosen,
            len(names or []),
        )
        common = {"model": str(self.path), "sampler": sampler, "steps": steps, "guidance": guidance, "eta": eta}
        records = [
            {**common, "seed": seed + i, **({"attribute": names[chosen[i]]} if chosen is not None and names else {})}
            for i in range(n)
        ]
        model = {"checkpoint": str(self.path), "task": TASK, "class_names": self.stored["codec"]["class_names"]}
        return Samples(images, masks, [f"sample_{seed + i:06d}" for i in range(n)], records, model, self.codec)


def run(
    run_or_checkpoint: Path,
    n: int,
    out_dir: Path,
    sampler: SamplerConfig,
    seed: int = 0,
    size: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    autocast_bf16: bool = False,
    attribute: str | None = None,
    device: str = "cpu",
    cascade: upscale.Cascade | None = None,
) -> Path:
    """``meddiff generate run`` / ``meddiff sample``: ``n`` samples into the dataset folder ``out_dir``; with
    ``cascade``, upscaled by its super-resolution run (the manifest records both stages)."""
    check_new_folder(out_dir)
    handle = GeneratorModel(*load(run_or_checkpoint, device))
    upscaler = upscale.load(cascade.run, device) if cascade is not None else None  # checked before sampling
    samples = handle.sample(
        n,
        sampler.steps,
        sampler.name,
        sampler.guidance_scale,
        sampler.eta,
        seed,
        attribute,
        size,
        batch_size,
        autocast_bf16,
        progress,
    )
    if upscaler is not None and cascade is not None:  # both or neither; mypy needs to see it
        seeds = [r["seed"] for r in samples.records]
        result, stage = upscale.cascade(
            upscaler, cascade, samples.images, samples.masks, handle.class_names, seeds, autocast_bf16, progress
        )
        samples = replace(
            samples,
            images=result.images,
            masks=result.masks,
            records=[{**r, "upscale": stage} for r in samples.records],
            model={**samples.model, "upscaler": stage["checkpoint"]},
        )
    return samples.save(out_dir)
