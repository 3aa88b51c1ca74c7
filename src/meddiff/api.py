"""``meddiff.load``: a trained run as a Python object, the same one the CLI commands use.

import meddiff
model = meddiff.load("runs/brain")            # the task comes from the checkpoint
pairs = model.sample(4, steps=10, seed=0)      # .images [4, C, H, W] in [-1, 1], .masks [4, H, W]
pairs.save("runs/brain/synthetic")             # the dataset folder `meddiff generate run` writes
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from meddiff.checkpoint import STATE_FILE
from meddiff.errors import UserError
from meddiff.rundir import resolve_checkpoint
from meddiff.tasks.runs import RunHandle


def run_task(path: str | Path) -> str:
    """The task that made a run or checkpoint folder, as its checkpoint records it."""
    path = Path(path)
    state_file = resolve_checkpoint(path) / STATE_FILE
    try:
        task = json.loads(state_file.read_text()).get("config", {}).get("task")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{state_file}: checkpoint state is not valid JSON") from None
    if task is None:
        raise UserError(f"{state_file}: the checkpoint does not record its task")
    return task


def load(path: str | Path, device: str | torch.device = "auto") -> RunHandle:
    """The trained run (or checkpoint) at ``path`` on ``device`` (``auto``: a GPU when one is visible).

    Returns the task's handle: ``GeneratorModel`` (``.sample``), ``Synthesizer`` and ``Pix2Pix``
    (``.synthesize``), ``SegmenterModel`` and ``PixelSegmenter`` (``.segment``), ``FusionModel``
    (``.fuse``), ``TextModel`` (``.sample`` from prompts), ``Upscaler`` (``.upscale``). Every handle has
    ``.config``, ``.device`` and ``.to(device)``, and returns CPU tensors.
    """
    from meddiff.tasks import fuse, generate, pix2pix, segment, segmenter, synthesize, textgen, upscale

    path = Path(path)
    task = run_task(path)
    if task == generate.TASK:
        return generate.GeneratorModel(*generate.load(path, device))
    if task == synthesize.TASK:
        return synthesize.load(path, device)
    if task == pix2pix.TASK:
        return pix2pix.load(path, device)
    if task == segmenter.TASK:
        model, stored = segmenter.load(path, device)
        return segmenter.SegmenterModel(model, stored, resolve_checkpoint(path))
    if task == segment.TASK:
        classifier, stored = segment.load(path, device)
        return segment.PixelSegmenter(classifier, stored, path)
    if task == fuse.TASK:
        return fuse.FusionModel(*fuse.load_model(path, device))
    if task == textgen.TASK:
        return textgen.load(path, device=device)
    if task == upscale.TASK:
        return upscale.load(path, device)
    raise UserError(
        f"{path}: runs of task '{task}' cannot be loaded (known: generate, synthesize, pix2pix, "
        "segmenter, segment, fuse, textgen, upscale)"
    )
