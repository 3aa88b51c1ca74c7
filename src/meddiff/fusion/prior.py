"""The fusion prior: for each source pair, the classic rule whose output scores best, as a training target.

Fusion has no ground truth. Following Diff-IF (Yi et al. 2024), each pair gets as target the output of the
best of several classic rules under 2 SSIM + VIF + 3 Qabf (``metrics.fusion.prior_score``, computed with
the published protocol on 8-bit grey levels, rule outputs clipped). The choice is per pair, so a model
trained on these targets learns when each rule is the better one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from meddiff.fusion.rules import RULES
from meddiff.metrics.fusion import gray_levels, prior_score, to_uint8


@dataclass
class Prior:
    """Targets ``[N, 1, H, W]`` in [-1, 1] and, per pair, the chosen rule and every rule's score."""

    targets: torch.Tensor
    chosen: list[str]
    scores: list[dict[str, float]]

    def counts(self) -> dict[str, int]:
        """How many pairs each rule won."""
        return {name: self.chosen.count(name) for name in self.scores[0]}


def levels(y: torch.Tensor) -> np.ndarray:
    """One Y image ``[1, H, W]`` or ``[H, W]`` in [-1, 1] -> float64 grey levels 0..255, rounded."""
    return gray_levels(((y.reshape(y.shape[-2:]).double() + 1) * 127.5).numpy())


def fusion_prior(
    y_a: torch.Tensor, y_b: torch.Tensor, rules: Sequence[str] = tuple(RULES), batch_size: int = 16
) -> Prior:
    """Best-scoring rule output per pair for sources ``[N, 1, H, W]`` in [-1, 1] (rules run ``batch_size``
    pairs at a time; scoring is per pair)."""
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise ValueError(f"unknown fusion rule {unknown[0] if unknown else None!r} (known: {', '.join(RULES)})")
    targets, chosen, scores = [], [], []
    for start in range(0, y_a.shape[0], batch_size):
        a, b = y_a[start : start + batch_size], y_b[start : start + batch_size]
        outputs = {name: RULES[name](a, b).clamp(-1, 1) for name in rules}
        for i in range(a.shape[0]):
            la, lb = levels(a[i]), levels(b[i])
            pair = {
                name: prior_score(to_uint8(levels(out[i]), "clip").astype(np.float64), la, lb)
                for name, out in outputs.items()
            }
            best = max(pair, key=pair.get)
            targets.append(outputs[best][i])
            chosen.append(best)
            scores.append(pair)
    return Prior(torch.stack(targets), chosen, scores)
