"""Small image files and folders written into tmp_path by the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` as an image file (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def grey(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 grey image ``[h, w]``."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 colour image ``[h, w, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def label(h: int = 24, w: int = 32, classes: int = 3, seed: int = 0) -> np.ndarray:
    """Random uint8 class-id map ``[h, w]`` with ids ``0..classes-1``."""
    return np.random.default_rng(seed).integers(0, classes, (h, w), dtype=np.uint8)


def image_mask_folder(root: Path, count: int = 3, h: int = 24, w: int = 32, classes: int = 3) -> Path:
    """``root/images/case{i}.png`` (RGB) with ``root/masks/case{i}.png`` (grey class ids)."""
    for i in range(count):
        write_image(root / "images" / f"case{i}.png", rgb(h, w, i))
        write_image(root / "masks" / f"case{i}.png", label(h, w, classes, i))
    return root
