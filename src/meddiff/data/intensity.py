"""Intensity normalisation to [0, 1]: percentile stretching and CT-style windowing."""

from __future__ import annotations

import numpy as np


def percentile_normalise(x: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the ``low``-th percentile of ``x`` to 0 and the ``high``-th to 1, clipping outside (float32)."""
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:  # constant image: keep it constant instead of dividing by zero
        return np.zeros(x.shape, np.float32)
    return np.clip((x.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Display window ``center`` / ``width`` (e.g. CT in HU: soft tissue 40/400, lung -600/1500) to [0, 1]."""
    return np.clip((x.astype(np.float32) - (center - width / 2)) / width, 0.0, 1.0)
