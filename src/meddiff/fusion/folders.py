"""Two folders of registered sources (and a folder of fused images): matching, checking, reading, writing.

Files are matched by name without extension (``A/x.png`` with ``B/x.jpg``), as the paired-folder loader
does. Every pair is checked (names, sizes) from the file headers before anything is fused, and fused
images are written into a hidden sibling folder renamed into place at the end, so bad input or a failure
never leaves a partial output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from meddiff.data.imagefiles import header_size, read_image
from meddiff.data.validate import check_same_size, list_images, pair_files, require_dir
from meddiff.errors import UserError
from meddiff.files import atomic_folder, check_new_folder

Pair = tuple[str, Path, Path]
LUMA_DIR = "y"  # sub-folder of a fused folder with the fused Y of its colour images


def list_pairs(dir_a: Path, dir_b: Path) -> list[Pair]:
    """``(name, file in dir_a, file in dir_b)`` for every name in both folders; a file without partner,
    a duplicate name or two sizes in one pair is a UserError naming the file."""
    dir_a, dir_b = require_dir(Path(dir_a), "folder of source A"), require_dir(Path(dir_b), "folder of source B")
    pairs, problems = pair_files(list_images(dir_a), dir_a, list_images(dir_b), dir_b, "source A", "source B")
    if problems:
        more = f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    for _, path_a, path_b in pairs:
        check_same_size(path_a, header_size(path_a), path_b, header_size(path_b))
    return pairs


def match_fused(pairs: list[Pair], fused_dir: Path) -> list[Path]:
    """The fused image of every pair in ``fused_dir`` (same name, any extension), checked for size.

    Where ``fused_dir/y/`` holds an image of that name (``FusedFolder`` writes the fused Y of colour
    outputs there), that one is returned: fusion is scored on Y, and the grey of a colour PNG differs from
    the fused Y wherever a colour had to be clipped to the RGB gamut.
    """
    fused_dir = require_dir(Path(fused_dir), "folder of fused images")
    table = {path.stem: path for path in list_images(fused_dir)}
    if (fused_dir / LUMA_DIR).is_dir():
        table.update({path.stem: path for path in list_images(fused_dir / LUMA_DIR)})
    missing = [name for name, _, _ in pairs if name not in table]
    if missing:
        raise UserError(
            f"{fused_dir}: no fused image named '{missing[0]}.*' ({len(missing)} of {len(pairs)} pairs have none)"
        )
    for name, path_a, _ in pairs:
        check_same_size(path_a, header_size(path_a), table[name], header_size(table[name]))
    return [table[name] for name, _, _ in pairs]


def read_source(path: Path) -> torch.Tensor:
    """A source image as ``[1, C, H, W]`` in [-1, 1]: C = 1 for grey (also RGB files with equal channels),
    3 for colour."""
    return torch.from_numpy(read_image(Path(path)))[None] * 2 - 1


class FusedFolder:
    """Context manager writing ``<name>.png`` files (and ``y/<name>.png``) and ``manifest.json`` to ``out_dir``
    atomically.

    ``out_dir`` must not exist or be empty; it appears, complete, only when the block ends without error.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        check_new_folder(self.out_dir)
        self._writing = atomic_folder(self.out_dir)

    def __enter__(self) -> FusedFolder:
        self.tmp = self._writing.__enter__()
        return self

    def write(self, name: str, image: np.ndarray, luma: np.ndarray | None = None) -> None:
        """Save uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) as ``<name>.png``, and the fused Y of a colour
        image (uint8 ``[H, W]``) as ``y/<name>.png``."""
        Image.fromarray(image).save(self.tmp / f"{name}.png")
        if luma is not None:
            (self.tmp / LUMA_DIR).mkdir(exist_ok=True)
            Image.fromarray(luma).save(self.tmp / LUMA_DIR / f"{name}.png")

    def manifest(self, data: dict[str, Any]) -> None:
        (self.tmp / "manifest.json").write_text(json.dumps(data, indent=1))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool | None:
        return self._writing.__exit__(kind, error, trace)
