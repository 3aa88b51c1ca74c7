"""Write generated data as a dataset folder that meddiff's image+mask loader reads directly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meddiff.errors import UserError


def write_pair_folder(out_dir: Path, images: np.ndarray, masks: np.ndarray | None, names: list[str],
                      manifest: dict[str, Any]) -> Path:
    """Write ``images/`` (uint8 ``[N, H, W]`` gray or ``[N, H, W, 3]`` RGB PNGs), ``masks/`` (uint8 class-id
    PNGs) and ``manifest.json``. All files go to a temporary sibling folder renamed into place at the end,
    so a failure never leaves a half-written dataset."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: output folder exists and is not empty; choose another --out")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    if masks is not None:
        (tmp / "masks").mkdir()
    try:
        for i, name in enumerate(names):
            Image.fromarray(images[i]).save(tmp / "images" / f"{name}.png")
            if masks is not None:
                Image.fromarray(masks[i].astype(np.uint8)).save(tmp / "masks" / f"{name}.png")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
