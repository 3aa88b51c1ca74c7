"""A U-Net segmenter trained from scratch on labelled images (``task: segmenter``).

It is the baseline that few-label segmentation from diffusion features is measured against, and the
segmentation network that scores synthetic image + mask pairs. It trains with the data config's
augmentations (flips, random crops) on meddiff's ``Trainer`` and stops early on held-out pixels: the same
``held_out_pixels(masks, val_fraction, seed)`` that the diffusion-feature classifier holds out, so both
methods stop on the same evidence. The best validation checkpoint is ``checkpoints/best``.

Public API: ``SegmenterConfig``, ``fit`` (from a config), ``fit_dataset`` (from an in-memory
``ArrayDataset``), ``load`` and ``predict`` (masks for a batch of images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.checkpoint import load_checkpoint
from meddiff.config import from_dict, to_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.labels import IGNORE_INDEX
from meddiff.devices import model_device, resolve_device
from meddiff.errors import UserError
from meddiff.nets.backbone import BackboneSegNet
from meddiff.nets.segnet import SegNet, SegNetConfig
from meddiff.nets.unet import UNetConfig
from meddiff.rundir import RunDir, resolve_checkpoint
from meddiff.runlock import releases_run_lock
from meddiff.segment.pixels import held_out_pixels
from meddiff.tasks import generate
from meddiff.tasks.runs import RunHandle, check_task, run_config
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "segmenter"


def _default_train() -> TrainConfig:
    return TrainConfig(
        steps=4000,
        batch_size=8,
        lr=1e-3,
        warmup_steps=50,
        ema_decay=0.99,
        log_every=25,
        checkpoint_every=1000,
        keep_checkpoints=1,
        eval_every=50,
        patience=10,
    )


@dataclass
class SelfTraining:
    """Self-training on unlabelled images (``meddiff segment self-train``, ``meddiff.tasks.selftrain``).

    classifier:  run folder of a ``segment fit`` run at the same working size: the first teacher
    unlabelled:  the unlabelled images (any image kind; masks, if any, are not read); images also named in
                 the labelled set are left out
    max_unlabelled: at most this many of them, evenly spaced through the set (None: all)
    keep:        per class, the share of the teacher's pixels kept as labels, most confident first
    max_disagreement: the classifier's pixels where more than this share of its members is outvoted are
                 never kept
    rounds:      1: the segmenter learns from the classifier; 2: a second segmenter learns from the first
    """

    classifier: Path | None = None
    unlabelled: DataConfig = field(default_factory=DataConfig)
    max_unlabelled: int | None = 512
    keep: float = 0.8
    max_disagreement: float = 0.0
    rounds: int = 1

    def __post_init__(self):
        if self.classifier is None:
            raise ValueError("'classifier' is required: the run folder of a `meddiff segment fit` run")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if not 0 <= self.max_disagreement <= 1:
            raise ValueError(f"max_disagreement must be in [0, 1], got {self.max_disagreement}")
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds must be 1 or 2, got {self.rounds}")
        if self.max_unlabelled is not None and self.max_unlabelled < 1:
            raise ValueError(f"max_unlabelled must be >= 1, got {self.max_unlabelled}")


@dataclass
class SegmenterConfig:
    """``meddiff train`` config of the segmenter (``task: segmenter``).

    images:       names of the labelled images to train on (default: every image of ``data``)
    val_fraction: share of each image's labelled pixels held out for early stopping (never trained on)
    self_training: also learn from a teacher's confident labels of unlabelled images (None: labelled only)
    backbone:     an image-only ``generate`` run: fine-tune its UNet end to end as the segmenter (the image
                  enters at diffusion step ``backbone_step``) instead of training ``model`` from scratch
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: SegNetConfig = field(default_factory=SegNetConfig)  # in_channels / num_classes come from the data
    train: TrainConfig = field(default_factory=_default_train)
    images: list[str] | None = None
    val_fraction: float = 0.1
    self_training: SelfTraining | None = None
    backbone: Path | None = None
    backbone_step: int = 50

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.backbone_step < 0:
            raise ValueError(f"backbone_step must be >= 0, got {self.backbone_step}")


def select_images(dataset: ArrayDataset, names: Sequence[str] | None) -> ArrayDataset:
    """The samples of ``dataset`` named in ``names`` (in that order), or all of them if None."""
    if names is None:
        return dataset
    index = {name: i for i, name in enumerate(dataset.names)}
    missing = [name for name in names if name not in index]
    if missing:
        raise UserError(
            f"'images': '{missing[0]}' is not an image of the dataset ({len(missing)} missing; "
            f"names are file names without extension, e.g. '{dataset.names[0]}')"
        )
    if len(set(names)) != len(names):
        raise UserError("'images' names an image twice")
    rows = torch.tensor([index[name] for name in names])
    pick = lambda t: t[rows] if t is not None else None  # noqa: E731
    return ArrayDataset(
        pick(dataset.images),
        pick(dataset.masks),
        list(names),
        dataset.class_names,
        dataset.hflip,
        vflip=dataset.vflip,
        mirror=dataset.mirror,
        images_b=pick(dataset.images_b),
        crop=dataset.crop,
        rotate=dataset.rotate,
        attributes=pick(dataset.attributes),
        attribute_names=dataset.attribute_names,
    )


def split_pixels(dataset: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, torch.Tensor]:
    """The training set with ``held_out_pixels(masks, fraction, seed)`` set to ignore, and the labels of
    just those pixels (``[N, H, W]``, 255 elsewhere) for early stopping."""
    masks = dataset.masks.long()
    held = held_out_pixels(masks, fraction, seed)
    ignore = torch.full_like(masks, IGNORE_INDEX)
    train_set = dataset.with_samples(dataset.images, torch.where(held, ignore, masks).to(torch.uint8), dataset.names)
    return train_set, torch.where(held, masks, ignore)


def fit(config: SegmenterConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train on ``config.data`` (restricted to ``config.images``), and with ``config.self_training`` on a
    teacher's labels of unlabelled images too (``meddiff.tasks.selftrain``); everything goes under ``run_dir``."""
    dataset = select_images(build_dataset(config.data), config.images)
    if config.self_training is not None:
        from meddiff.tasks.selftrain import self_train

        return self_train(config, run_dir, dataset, resume=resume, progress=progress)
    return fit_dataset(config, run_dir, dataset, resume=resume, progress=progress)


def with_pseudo_labels(labelled: ArrayDataset, pseudo: ArrayDataset) -> ArrayDataset:
    """``labelled`` repeated to at least the size of ``pseudo``, then ``pseudo``: a shuffled batch holds
    as many labelled as pseudo-labelled images on average, so the few true labels are not drowned."""
    repeats = max(1, -(-len(pseudo) // len(labelled)))
    return labelled.with_samples(
        torch.cat([labelled.images.repeat(repeats, 1, 1, 1), pseudo.images]),
        torch.cat([labelled.masks.repeat(repeats, 1, 1), pseudo.masks.to(labelled.masks.dtype)]),
        list(labelled.names) * repeats + list(pseudo.names),
    )


@releases_run_lock
def fit_dataset(
    config: SegmenterConfig,
    run_dir: Path,
    dataset: ArrayDataset,
    resume: bool = False,
    progress: bool = True,
    pseudo: ArrayDataset | None = None,
) -> TrainResult:
    """Train on an in-memory labelled dataset (its flips and crop are the augmentations), plus ``pseudo``:
    pseudo-labelled images (``IGNORE_INDEX`` where no label is kept) at the same size, trained on beside the
    labelled ones (``with_pseudo_labels``) but never used for early stopping.

    ``config.data`` is only recorded; ``config.model`` gets the dataset's channels and classes.
    """
    if dataset.masks is None or dataset.images is None or dataset.num_classes < 2:
        raise UserError("the segmenter needs images with masks of at least 2 classes")
    train_set, val_labels = split_pixels(dataset, config.val_fraction, config.train.seed)
    if pseudo is not None:
        train_set = with_pseudo_labels(train_set, pseudo)
    config = replace(
        config, model=replace(config.model, in_channels=dataset.in_channels, num_classes=dataset.num_classes)
    )
    RunDir(run_dir).prepare(config, resume)
    seed_everything(config.train.seed)
    stored = {**run_config(TASK, config), "class_names": dataset.class_names}
    if config.backbone is None:
        model: nn.Module = SegNet(config.model)
    else:
        model, stored["backbone_unet"], stored["backbone_time"] = pretrained_backbone(
            config.backbone, config.backbone_step, dataset.in_channels, dataset.num_classes
        )
    val_images = dataset.images

    def loss_fn(net, batch, generator):
        return F.cross_entropy(net(batch["image"]).float(), batch["mask"], ignore_index=IGNORE_INDEX)

    def eval_fn(net) -> float:
        total, count = 0.0, 0
        for first in range(0, len(val_images), config.train.batch_size):
            labels = val_labels[first : first + config.train.batch_size]
            logits = net(val_images[first : first + config.train.batch_size]).float()
            total += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
        return total / max(count, 1)

    trainer = Trainer(run_dir, model, train_set, config.train, loss_fn, stored, None, progress, eval_fn)
    return trainer.fit(resume=resume)


def pretrained_backbone(run: Path, step: int, in_channels: int, num_classes: int) -> tuple[BackboneSegNet, dict, float]:
    """The EMA UNet of an image-only ``generate`` run as a segmenter (``nets.backbone``), its UNet config
    and the model time of ``step``, checked against the labelled images' channels."""
    unet, diffusion, codec, _, path = generate.load(run)
    if codec.num_classes or codec.image_channels != in_channels:
        raise UserError(
            f"{path}: the backbone must be an image-only generator (joint_mask: false) on {in_channels}-channel "
            f"images; this one has {codec.image_channels} image and {codec.num_classes} label channels"
        )
    if step >= diffusion.config.num_train_timesteps:
        raise UserError(f"backbone_step {step} is past the model's {diffusion.config.num_train_timesteps} steps")
    time = float(diffusion.model_time(torch.tensor([step]))[0])
    model = BackboneSegNet(unet.config, num_classes, time)
    model.load_pretrained(unet.state_dict())
    return model, to_dict(unet.config), time


def load(run_or_checkpoint: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained segmenter (EMA weights of ``checkpoints/best`` when the run has one, on ``device``) and its
    stored config."""
    path = Path(run_or_checkpoint)
    best = RunDir(path).best
    groups, state = load_checkpoint(best if best.is_dir() else resolve_checkpoint(path))
    stored = state.get("config", {})
    check_task(stored, TASK, path)
    if "backbone_unet" in stored:
        unet = from_dict(UNetConfig, stored["backbone_unet"], "backbone_unet.")
        model: nn.Module = BackboneSegNet(unet, len(stored["class_names"]), stored["backbone_time"])
    else:
        model = SegNet(from_dict(SegNetConfig, stored["model"], "model."))
    model.load_state_dict(groups["ema"] if "ema" in groups else groups["model"])
    return model.eval().requires_grad_(False).to(resolve_device(device)), stored


@dataclass(repr=False)
class SegmenterModel(RunHandle):
    """A trained U-Net segmenter: ``meddiff.load(run).segment(images)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = SegmenterConfig
    model: nn.Module
    stored: dict
    path: Path

    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def segment(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Class-id masks ``[N, H, W]`` (int64, CPU) for images ``[N, C, H, W]`` in [-1, 1] of any size."""
        return predict(self.model, images, batch_size)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Class-id masks ``[N, H, W]`` (int64, on the CPU) for images ``[N, C, H, W]`` in [-1, 1], of any size."""
    model.eval()
    device = model_device(model)
    return torch.cat(
        [
            model(images[first : first + batch_size].float().to(device)).argmax(dim=1).cpu()
            for first in range(0, len(images), batch_size)
        ]
    )
