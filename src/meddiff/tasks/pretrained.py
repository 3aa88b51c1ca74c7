"""Pretrain once, adapt to every task: ``init_from`` a pretrained image-only generate run.

The backbone is an unconditional image model trained on every image a user has, labelled or not (``meddiff
train`` with ``joint_mask: false``). A task that starts from it keeps its architecture and noise process,
adds its conditioning as zero-initialised parts (``meddiff.nets.adapt``, ``meddiff.nets.controlnet``) and
trains either everything (``train_parts: all``) or only those new parts over the frozen backbone
(``adapters``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from torch import nn

from meddiff.config import from_dict
from meddiff.diffusion.schedulers import NoiseConfig
from meddiff.errors import UserError
from meddiff.nets.adapt import adapt_unet
from meddiff.nets.unet import UNet, UNetConfig

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


def task_model(
    init_from: str | None, image_channels: int, model: UNetConfig, noise: NoiseConfig, **conditioning
) -> tuple[UNetConfig, NoiseConfig, Backbone | None]:
    """A task's model and noise configs with its ``conditioning`` fields (``UNetConfig`` fields: channels,
    SPADE classes, ...): its own, or with ``init_from`` the backbone's architecture and noise process, and the
    backbone (None without ``init_from``)."""
    if not init_from:
        return replace(model, **conditioning), noise, None
    backbone = load_backbone(init_from, image_channels)
    return replace(backbone.model.config, **conditioning), from_dict(NoiseConfig, backbone.noise, "noise."), backbone


def new_unet(config: UNetConfig, backbone: Backbone | None, parts: TrainParts) -> tuple[UNet, list[nn.Parameter]]:
    """The untrained UNet of ``config`` (adapted from ``backbone`` if given) and the parameters to train."""
    if backbone is None:
        model = UNet(config)
        return model, list(model.parameters())
    model, adapters = adapt_unet(backbone.model, config)
    return model, trainable_parameters(model, adapters, parts)


def check_pretrained_options(init_from: str | None, train_parts: TrainParts | None) -> None:
    """Config validation shared by the tasks that can start from a backbone."""
    if train_parts not in (None, "all") and not init_from:
        raise ValueError("train_parts chooses what trains of a pretrained model: set init_from")


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
