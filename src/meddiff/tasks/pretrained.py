"""Pretrain once, adapt to every task: ``init_from`` a pretrained image-only generate run.

The backbone is an unconditional image model trained on every image a user has, labelled or not (``meddiff
train`` with ``joint_mask: false``). A task that starts from it keeps its architecture and noise process,
adds its conditioning as zero-initialised parts (``meddiff.nets.adapt``, ``meddiff.nets.controlnet``) and
trains either everything (``train_parts: all``) or only those new parts over the frozen backbone
(``adapters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from meddiff.errors import UserError
from meddiff.nets.unet import UNet

TrainParts = Literal["all", "adapters"]


@dataclass(frozen=True)
class Backbone:
    """A pretrained image model: its EMA UNet (CPU, frozen), stored noise config and checkpoint."""

    model: UNet
    noise: dict
    path: Path


def load_backbone(run: str | Path, image_channels: int) -> Backbone:
    """The image-only generate run ``run``, checked to model images of ``image_channels`` channels with no
    conditioning."""
    from meddiff.tasks import generate

    run = Path(run)
    if not run.exists():
        raise UserError(f"init_from: {run} does not exist (a run folder or checkpoint of `meddiff train`)")
    model, _, codec, stored, path = generate.load(run)
    if codec.num_classes:
        raise UserError(
            f"init_from: {path} is a joint image+mask generator; pretrain an image-only model "
            "(joint_mask: false), which every task can adapt"
        )
    if model.config.num_classes:
        raise UserError(f"init_from: {path} is conditioned on attributes; pretrain with conditional: false")
    if codec.image_channels != image_channels:
        raise UserError(
            f"init_from: {path} models {codec.image_channels}-channel images, the data has {image_channels}"
        )
    return Backbone(model, stored["noise"], path)


def trainable_parameters(model: nn.Module, adapters: set[str], parts: TrainParts) -> list[nn.Parameter]:
    """The parameters the optimiser updates: all, or only ``adapters`` (the rest frozen)."""
    if parts == "all":
        return list(model.parameters())
    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in adapters)
        if name in adapters:
            chosen.append(parameter)
    if not chosen:
        raise UserError("train_parts: adapters, but the adapted model has no new parts to train")
    return chosen
