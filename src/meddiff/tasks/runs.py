"""Run folders and trained models: what every task does the same way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import torch
from torch import nn

from meddiff.checkpoint import load_checkpoint
from meddiff.config import to_dict
from meddiff.devices import model_device, resolve_device
from meddiff.errors import UserError
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.rundir import resolve_checkpoint

T = TypeVar("T")


def run_config(task: str, config: Any) -> dict:
    """The plain-data config stored in every checkpoint, tagged with the task that made it."""
    return {"task": task, **to_dict(config)}


def check_task(stored: dict, task: str, path: Path) -> None:
    """Refuse, naming it, the checkpoint ``path`` of a task other than ``task``."""
    if stored.get("task") != task:
        raise UserError(f"{path}: checkpoint of task '{stored.get('task')}', not '{task}'")


def load_trained(
    run_or_checkpoint: Path,
    ema: bool = True,
    build: Callable[[dict], nn.Module] | None = None,
    device: str | torch.device = "cpu",
    task: str | None = None,
) -> tuple[nn.Module, dict, Path]:
    """The network of a run (a UNet unless ``build`` says otherwise; EMA weights by default) on ``device``
    (see ``meddiff.devices.resolve_device``), its stored config and the checkpoint path.

    ``build`` makes the network from the stored config, for tasks whose network is not a plain UNet.
    ``task``: refuse a checkpoint of another task before building anything.
    """
    from meddiff.config import from_dict

    path = resolve_checkpoint(Path(run_or_checkpoint))
    groups, state = load_checkpoint(path)
    config = state.get("config", {})
    if task is not None:
        check_task(config, task, path)
    if "model" not in config:
        raise UserError(f"{path}: checkpoint has no model config")
    model = build(config) if build else UNet(from_dict(UNetConfig, config["model"], "model."))
    weights = groups["ema"] if ema and "ema" in groups else groups["model"]
    missing = set(model.state_dict()) - set(weights)
    if missing:
        raise UserError(f"{path}: checkpoint weights do not match its model config (missing {sorted(missing)[0]})")
    model.load_state_dict(weights, strict=False)
    model.eval().requires_grad_(False).to(resolve_device(device))
    return model, config, path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats -> ``[0, 255]`` uint8 with rounding."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def typed_config(config_class: type[T], stored: dict) -> T:
    """The task config dataclass of a stored run config (keys that are not its fields, such as ``task`` or
    a task's own records, are left out)."""
    from meddiff.config import from_dict

    names = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    return from_dict(config_class, {k: v for k, v in stored.items() if k in names})


class RunHandle:
    """What every trained run loaded for use has: ``.config`` (typed), ``.stored`` (the plain config the
    checkpoint records), ``.path`` (the checkpoint), ``.device`` and ``.to(device)``.

    Each task's handle adds its call (``sample``, ``synthesize``, ``segment``, ``fuse``) returning CPU
    tensors; ``meddiff.load`` picks the handle from the task the checkpoint records.
    """

    task: ClassVar[str]
    config_class: ClassVar[type]
    stored: dict
    path: Path

    def networks(self) -> list[nn.Module]:
        """The networks that ``to`` moves."""
        raise NotImplementedError

    @property
    def config(self) -> Any:
        return typed_config(self.config_class, self.stored)

    @property
    def device(self) -> torch.device:
        return model_device(self.networks()[0])

    def to(self, device: str | torch.device) -> Self:
        """Move every network to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); returns the handle."""
        target = resolve_device(device)
        for net in self.networks():
            net.to(target)
        return self

    def __repr__(self) -> str:
        return f"<meddiff {self.task} run {self.path} on {self.device}>"
