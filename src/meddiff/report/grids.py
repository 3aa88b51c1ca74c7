"""Sample grids, coloured label maps and overlays as uint8 RGB arrays, and atomic PNG writing.

Inputs follow the package conventions: images are float ``[N, C, H, W]`` (or one ``[C, H, W]``) in
[-1, 1] with C = 1 (grey) or 3 (RGB); masks are integer ``[N, H, W]`` (or ``[H, W]``) class ids with
255 = ignore. Torch tensors and numpy arrays are both accepted. Outputs are numpy ``uint8`` ``[..., 3]``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from meddiff.data.labels import IGNORE_INDEX, palette
from meddiff.files import atomic_write

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_rgb(images: ArrayLike) -> np.ndarray:
    """Float images ``[N, C, H, W]`` (or ``[C, H, W]``) in [-1, 1] -> uint8 ``[N, H, W, 3]`` (or
    ``[H, W, 3]``); -1 maps to 0 and 1 to 255, grey is replicated to RGB, NaN shows as black."""
    x = _numpy(images).astype(np.float32)
    single = x.ndim == 3
    x = x[None] if single else x
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] or [C, H, W] with C = 1 or 3, got shape {x.shape}")
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    rgb = np.rint(np.clip((x + 1.0) * 127.5, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
    return rgb[0] if single else rgb


def _upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlarge the ``H, W`` axes of ``[..., H, W, 3]`` by an integer factor."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return rgb if scale == 1 else rgb.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _tile(tiles: np.ndarray, ncol: int, pad: int, pad_value: int) -> np.ndarray:
    """Lay out ``[N, h, w, 3]`` tiles row by row, ``ncol`` per row, with ``pad`` pixels around each."""
    n, h, w, _ = tiles.shape
    if n == 0:
        raise ValueError("cannot make a grid of zero images")
    if ncol < 1:
        raise ValueError(f"images per row must be at least 1, got {ncol}")
    ncol = min(ncol, n)
    nrows = -(-n // ncol)
    # Blank tiles complete the last row; every tile gets its right and bottom margin, then the
    # [rows, cols, h, w] blocks are interleaved into one image and the top and left margins added.
    blank = np.full((nrows * ncol - n, h, w, 3), pad_value, dtype=np.uint8)
    cells = np.concatenate([tiles, blank])
    cells = np.pad(cells, ((0, 0), (0, pad), (0, pad), (0, 0)), constant_values=pad_value)
    grid = cells.reshape(nrows, ncol, h + pad, w + pad, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(nrows * (h + pad), ncol * (w + pad), 3)
    return np.pad(grid, ((pad, 0), (pad, 0), (0, 0)), constant_values=pad_value)


def image_grid(images: ArrayLike, nrow: int = 8, pad: int = 2, scale: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in [-1, 1] into one uint8 RGB image, ``nrow`` images per row (as in
    torchvision's ``make_grid``).

    Each image is first enlarged ``scale`` times (nearest neighbour, so 64-px samples stay crisp), then
    framed by ``pad`` pixels of ``pad_value`` (white by default, which separates dark scans). With
    ``cols = min(nrow, N)`` and ``rows = ceil(N / cols)`` the result is
    ``[rows * H * scale + (rows + 1) * pad, cols * W * scale + (cols + 1) * pad, 3]``.
    """
    return _tile(_upscale(to_rgb(images), scale), nrow, pad, pad_value)


def colorize_mask(mask: ArrayLike, num_classes: int) -> np.ndarray:
    """Integer class ids ``[..., H, W]`` -> uint8 RGB ``[..., H, W, 3]`` in the fixed ``palette``
    (class 0 black, ignore 255 grey); raises ``ValueError`` on an id outside the classes."""
    m = _numpy(mask)
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask must hold integer class ids, got dtype {m.dtype}")
    bad = (m < 0) | ((m >= num_classes) & (m != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"mask holds class id {int(m[bad][0])} but num_classes is {num_classes}")
    return palette(num_classes)[m]


def overlay(
    image: ArrayLike, mask: ArrayLike, num_classes: int, alpha: float = 0.45, show_background: bool = False
) -> np.ndarray:
    """Blend class colours over an image: ``(1 - alpha) * image + alpha * palette[class]``, rounded.

    Takes one ``[C, H, W]`` image with an ``[H, W]`` mask, or a batch ``[N, C, H, W]`` with ``[N, H, W]``.
    Ignored pixels (255) are never covered; background (class 0) is covered only if ``show_background``,
    so anatomy outside the labelled structures stays readable. Returns uint8 ``[(N,) H, W, 3]``.
    """
    rgb = to_rgb(image)
    m = _numpy(mask)
    if rgb.shape[:-1] != m.shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {rgb.shape[:-1]}")
    covered = m != IGNORE_INDEX
    if not show_background:
        covered &= m != 0
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colorize_mask(m, num_classes)
    return np.where(covered[..., None], np.rint(blended).astype(np.uint8), rgb)


def pairs_grid(
    images: ArrayLike,
    masks: ArrayLike,
    num_classes: int,
    ncol: int = 4,
    pad: int = 2,
    scale: int = 1,
    alpha: float = 0.45,
    show_background: bool = False,
    pad_value: int = 255,
) -> np.ndarray:
    """Grid of labelled samples, each shown as ``image | overlay``, ``ncol`` pairs per row.

    The two tiles of a pair are ``pad`` pixels apart and pairs ``3 * pad`` apart, so pairs read as
    units. With ``cols = min(ncol, N)``, ``rows = ceil(N / cols)`` and ``h, w = H * scale, W * scale``
    the result is ``[rows * h + (rows + 1) * 3 * pad, cols * (2 * w + pad) + (cols + 1) * 3 * pad, 3]``.
    """
    rgb = _upscale(to_rgb(images), scale)
    if rgb.ndim != 4:
        raise ValueError("pairs_grid needs a batch of images [N, C, H, W]")
    over = _upscale(overlay(images, masks, num_classes, alpha, show_background), scale)
    gap = np.full((*rgb.shape[:2], pad, 3), pad_value, dtype=np.uint8)
    return _tile(np.concatenate([rgb, gap, over], axis=2), ncol, 3 * pad, pad_value)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``[H, W]`` grey, ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA array."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected a uint8 [H, W], [H, W, 3] or [H, W, 4] array, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` (see ``encode_png``) as a PNG file atomically; returns ``path``."""
    return atomic_write(path, encode_png(array))
