"""Checkpoints written by older meddiff versions, brought to today's layout when they are read.

Each migration is keyed by the version that changed the layout and runs on every checkpoint that records
an older ``meddiff_version`` (or none: the oldest runs did not record it), in version order, so loaders
only ever see the current layout and need no ad-hoc defaults of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Groups = dict[str, dict[str, torch.Tensor]]
Migration = Callable[[Groups, dict], None]

_UNET_TASKS = ("generate", "synthesize", "textgen")


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (text or "0").split(".")[:3] if part.isdigit())


def _to_0_2(groups: Groups, state: dict) -> None:
    """0.2: one optimiser layout for every run (``optimizers``/``lr_schedulers`` by group name), pix2pix
    trained by the shared engine (one ``model`` group), and UNet configs that always name
    ``context_pooled``."""
    config = state.get("config", {})
    if "optimizer" in state:  # the engine's single optimiser
        state["optimizers"] = {"model": state.pop("optimizer")}
        state["lr_schedulers"] = {"model": state.pop("lr_scheduler")}
        groups["optimizer_model"] = groups.pop("optimizer")
    if config.get("task") == "pix2pix" and "generator" in groups:
        # pix2pix's own 0.1 loop: the weights carry over; its optimiser and RNG layout do not resume
        groups["model"] = {
            f"{net}.{key}": value for net in ("generator", "discriminator") for key, value in groups.pop(net).items()
        }
        for name in ("opt_g", "opt_d", "rng"):
            groups.pop(name, None)
        state.pop("optimizers", None)
    if config.get("task") in _UNET_TASKS and isinstance(config.get("model"), dict):
        config["model"].setdefault("context_pooled", False)  # added in 0.2; older runs had no pooled text path


MIGRATIONS: list[tuple[str, Migration]] = [("0.2.0", _to_0_2)]


def migrate(groups: Groups, state: dict) -> None:
    """Bring a checkpoint's tensor groups and state to the current layout, in place."""
    saved = _version(state.get("meddiff_version"))
    for version, migration in MIGRATIONS:
        if saved < _version(version):
            migration(groups, state)
