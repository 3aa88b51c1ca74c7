"""Reading 2D image and mask files (PNG, JPEG, TIFF, BMP) into arrays, with one clear error per bad file.

Images become float32 ``[C, H, W]`` in [0, 1]: C = 1 for grey content (including RGB files whose three
channels are equal, e.g. grey MRI saved as RGB) and C = 3 for colour. Bit depth:

- 8-bit: divided by 255.
- 16-bit grey (PNG/TIFF mode ``I;16``) and 32-bit integer: ``intensity="range"`` (default) divides by the
  dtype's full range (65535 for uint16), which keeps relative brightness between images;
  ``intensity="percentile"`` stretches each image's 0.5-99.5th percentiles to [0, 1] instead. Use it for
  12-bit data stored in 16-bit files, which would otherwise look almost black.
- 16-bit colour: Pillow keeps the high byte, i.e. the dtype range is used.
- float (mode ``F``): kept when already in [0, 1], otherwise percentile-stretched.

Alpha: an all-opaque alpha channel is dropped; real transparency is rejected, because any background we
picked would be a guess. Palette (``P``) images are expanded to their colours; palette *masks* are read as
their indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from meddiff.data.intensity import percentile_normalise
from meddiff.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
Intensity = Literal["range", "percentile"]
Colour = tuple[int, int, int]

_MODE_DTYPES = {"1": "bool", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}
_ID_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of the supported image extensions."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def describe(im: Image.Image) -> str:
    """Mode and sample type of an opened image, e.g. ``"RGB uint8"`` or ``"I;16 uint16"``."""
    return f"{im.mode} {_MODE_DTYPES.get(im.mode, 'uint8')}"


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn Pillow's errors while reading ``path`` into one UserError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise UserError(
            f"{path}: declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, refused as a possible "
            "decompression bomb (raise PIL.Image.MAX_IMAGE_PIXELS if the image is real)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "the file is truncated" if "truncated" in str(exc) else f"it cannot be decoded ({exc})"
        raise UserError(f"{path}: unreadable image, {reason}") from None


def header_size(path: Path) -> tuple[int, int]:
    """Height and width of the image file ``path`` from its header, without decoding the pixels."""
    with _reading(path), Image.open(path) as im:
        return im.height, im.width


def open_image(path: Path, draft: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` (so truncation is caught now, not mid-training).

    ``draft``: for JPEG, let the decoder downscale by a power of two while keeping both sides >= ``draft``
    pixels, which makes large frames several times faster to read when they are resized anyway.
    """
    with _reading(path):
        im = Image.open(path)
        if draft and im.format == "JPEG":
            im.draft(im.mode, (draft, draft))
        im.load()
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise UserError(
            f"{path}: has {frames} frames/pages, but a 2D image is expected (use kind 'nifti' or 'dicom' for volumes)"
        )
    return im


def _drop_opaque_alpha(im: Image.Image, path: Path) -> Image.Image:
    """RGBA/LA with alpha 255 everywhere -> RGB/L; any transparent pixel -> UserError."""
    if im.mode not in ("RGBA", "LA"):
        return im
    transparent = int(np.count_nonzero(np.asarray(im.getchannel("A")) < 255))
    if transparent:
        raise UserError(
            f"{path}: {im.mode} image with {transparent} transparent pixels (alpha < 255); "
            "flatten it onto a background or remove the alpha channel first"
        )
    return im.convert(im.mode[:-1])


def image_array(im: Image.Image, path: Path, intensity: Intensity = "range") -> np.ndarray:
    """Decoded image -> float32 ``[C, H, W]`` in [0, 1], C = 1 (grey content) or 3 (colour)."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    im = _drop_opaque_alpha(im, path)
    if im.mode not in ("L", "RGB", "I;16", "I;16B", "I;16L", "I", "F"):
        im = im.convert("RGB" if len(im.getbands()) >= 3 else "L")  # 1-bit, CMYK, YCbCr, LAB, HSV
    arr = np.asarray(im)
    arr = arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr
    if arr.ndim == 3:
        grey = np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
        arr = arr[None, ..., 0] if grey else arr.transpose(2, 0, 1)
    else:
        arr = arr[None]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise UserError(f"{path}: {bad} pixels are NaN or infinite; replace them (e.g. with 0) first")
        inside = arr.min() >= 0 and arr.max() <= 1
        return arr.astype(np.float32) if inside else percentile_normalise(arr)
    if intensity == "percentile" or arr.min() < 0:
        return percentile_normalise(arr)
    top = 65535 if arr.max() <= 65535 else np.iinfo(arr.dtype).max  # 16-bit PNGs may decode as int32
    return arr.astype(np.float32) / top


def read_image(path: Path, intensity: Intensity = "range", draft: int | None = None) -> np.ndarray:
    """Read an image file as float32 ``[C, H, W]`` in [0, 1] (see the module docstring for bit depths)."""
    return image_array(open_image(path, draft), path, intensity)


def mask_array(im: Image.Image, path: Path, colours: Mapping[Colour, int] | None = None) -> np.ndarray:
    """Decoded mask -> integer ``[H, W]`` of stored class ids.

    Grey / 16-bit / palette (indices) masks are ids as stored; mode ``1`` gives 0/1; RGB masks with equal
    channels use one channel; other RGB masks are decoded through ``colours`` (colour -> id).
    """
    im = _drop_opaque_alpha(im, path)
    if im.mode == "1":
        return np.asarray(im).astype(np.uint8)
    if im.mode in _ID_MODES:
        arr = np.asarray(im)
        arr = arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr
        if arr.min() < 0:
            raise UserError(f"{path}: mask has negative values, but class ids must be >= 0")
        return arr
    if im.mode != "RGB":
        raise UserError(f"{path}: a mask must be a grey, palette or RGB image of class ids, got mode {im.mode}")
    rgb = np.asarray(im)
    if colours:
        return decode_colours(rgb, colours, path)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0]
    raise UserError(
        f"{path}: colour-coded RGB mask, but no class map with a colour per class was given (set data.class_map)"
    )


def read_mask(path: Path, colours: Mapping[Colour, int] | None = None) -> np.ndarray:
    """Read a mask file as integer ``[H, W]`` stored class ids (see ``mask_array``)."""
    return mask_array(open_image(path), path, colours)


def decode_colours(rgb: np.ndarray, colours: Mapping[Colour, int], path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 colour-coded mask -> uint8 ids; a colour missing from ``colours`` is an error."""
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: class_id for (r, g, b), class_id in colours.items()}
    found, inverse = np.unique(keys, return_inverse=True)
    unknown = [int(k) for k in found if int(k) not in table]
    if unknown:
        k = unknown[0]
        raise UserError(
            f"{path}: colour {(k >> 16, (k >> 8) & 255, k & 255)} is not in the class map "
            f"({len(unknown)} unknown colour(s) in this mask)"
        )
    ids = np.array([table[int(k)] for k in found], dtype=np.uint8)  # loop over distinct colours only
    return ids[inverse].reshape(keys.shape)
