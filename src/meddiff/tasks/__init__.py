"""Tasks: each module has a ``Config`` dataclass, ``fit(config, run_dir, resume)`` and ``run(...)``."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from meddiff.config import from_dict, read_yaml
from meddiff.errors import UserError

# task name in a config's `task:` key -> (module, config class name)
TASKS = {
    "generate": ("meddiff.tasks.generate", "GenerateConfig"),
    "synthesize": ("meddiff.tasks.synthesize", "SynthesizeConfig"),
    "pix2pix": ("meddiff.tasks.pix2pix", "Pix2PixConfig"),
    "segment": ("meddiff.tasks.segment", "SegmentConfig"),
    "segmenter": ("meddiff.tasks.segmenter", "SegmenterConfig"),
    "textgen": ("meddiff.tasks.textgen", "TextGenConfig"),
    "fuse": ("meddiff.tasks.fuse", "FuseConfig"),
    "upscale": ("meddiff.tasks.upscale", "UpscaleConfig"),
}


def load_task_config(path: Path) -> tuple[ModuleType, Any]:
    """Read a task config YAML: its ``task`` key (default ``generate``) selects the module and dataclass."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    data = dict(data)
    name = data.pop("task", "generate")
    if name not in TASKS:
        raise UserError(f"{path}: unknown task '{name}' (known: {', '.join(TASKS)})")
    module_name, class_name = TASKS[name]
    module = importlib.import_module(module_name)
    try:
        return module, from_dict(getattr(module, class_name), data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
