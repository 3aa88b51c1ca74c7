"""Write generated data as a dataset folder that meddiff's image+mask loader reads directly."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meddiff.files import atomic_folder


def write_pair_folder(
    out_dir: Path,
    images: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None,
    names: list[str],
    manifest: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``images/`` (uint8 ``[H, W]`` gray or ``[H, W, 3]`` RGB PNGs, one per name: an array or a list of
    arrays of any sizes), ``masks/`` (uint8 class-id PNGs), ``manifest.json`` and whatever ``extra(folder)``
    adds (a grid, figures, metrics). All files go to a temporary sibling folder renamed into place at the
    end, so a failure or a kill never leaves a half-written dataset."""
    with atomic_folder(out_dir) as tmp:
        (tmp / "images").mkdir()
        if masks is not None:
            (tmp / "masks").mkdir()
        for i, name in enumerate(names):
            Image.fromarray(images[i]).save(tmp / "images" / f"{name}.png")
            if masks is not None:
                Image.fromarray(masks[i].astype(np.uint8)).save(tmp / "masks" / f"{name}.png")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if extra is not None:
            extra(tmp)
    return Path(out_dir)
