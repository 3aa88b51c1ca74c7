"""Label-map conventions: int64 class ids, ignore index 255, one-hot only at the model boundary."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

# Fixed, colour-blind-aware palette (Okabe-Ito first, then tab20 tones) so class k always has the same
# colour in every grid, overlay and report. Index 0 (background) is black.
_BASE_COLOURS = [
    (0, 0, 0),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
    (31, 119, 180),
    (174, 199, 232),
    (255, 127, 14),
    (255, 187, 120),
    (44, 160, 44),
    (152, 223, 138),
    (214, 39, 40),
    (255, 152, 150),
    (148, 103, 189),
    (197, 176, 213),
    (140, 86, 75),
    (196, 156, 148),
    (227, 119, 194),
    (247, 182, 210),
    (127, 127, 127),
    (199, 199, 199),
    (188, 189, 34),
    (219, 219, 141),
    (23, 190, 207),
    (158, 218, 229),
    (57, 59, 121),
    (82, 84, 163),
    (107, 110, 207),
    (156, 158, 222),
    (99, 121, 57),
    (140, 162, 82),
    (181, 207, 107),
]


def palette(num_classes: int) -> np.ndarray:
    """RGB uint8 colours ``[256, 3]`` for class ids; ids beyond the fixed list get seeded random colours,
    and the ignore index is grey."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    fixed = np.array(_BASE_COLOURS, dtype=np.uint8)
    n = min(num_classes, len(fixed))
    colours[:n] = fixed[:n]
    if num_classes > n:
        colours[n:num_classes] = np.random.default_rng(0).integers(0, 256, (num_classes - n, 3))
    colours[IGNORE_INDEX] = (128, 128, 128)
    return colours


def one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, H, W]`` int class ids -> ``[B, K, H, W]`` float one-hot; ignored pixels are all zeros."""
    valid = mask != IGNORE_INDEX
    encoded = F.one_hot(torch.where(valid, mask, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    return encoded * valid.unsqueeze(1)
