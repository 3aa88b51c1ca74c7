"""Interpolating text embeddings: linear (Imagic's ``alpha * e_tgt + (1 - alpha) * e_opt``) or spherical.

Both work on the last dimension (one token embedding at a time) and accept any ``alpha``, including
extrapolation beyond 1, which is how Imagic pushes an edit further.
"""

from __future__ import annotations

from typing import Literal

import torch

Interp = Literal["linear", "slerp"]
INTERPS = ("linear", "slerp")


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * b + (1 - alpha) * a``: ``a`` at 0, ``b`` at 1."""
    return a + alpha * (b - a)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float, eps: float = 1e-4) -> torch.Tensor:
    """Spherical interpolation of each vector (last dim) from ``a`` (alpha 0) to ``b`` (alpha 1).

    The direction moves along the great circle through both directions at constant angular speed; the
    norm is interpolated linearly (and floored at 0 when extrapolating), so vectors of equal norm keep it
    for every alpha. Where the two directions are (anti-)parallel within ``eps`` radians the great circle
    is undefined and the result is ``lerp``, which then agrees with the definition above.
    """
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a, unit_b = a / norm_a.clamp(min=1e-12), b / norm_b.clamp(min=1e-12)
    theta = torch.arccos((unit_a * unit_b).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    safe = (theta > eps) & (theta < torch.pi - eps)
    sin = torch.where(safe, sin, torch.ones_like(sin))
    direction = (torch.sin((1 - alpha) * theta) * unit_a + torch.sin(alpha * theta) * unit_b) / sin
    norm = (norm_a + alpha * (norm_b - norm_a)).clamp(min=0)
    return torch.where(safe, direction * norm, lerp(a, b, alpha))


def interpolate(a: torch.Tensor, b: torch.Tensor, alpha: float, mode: Interp) -> torch.Tensor:
    """``lerp`` or ``slerp`` by name."""
    if mode == "linear":
        return lerp(a, b, alpha)
    if mode == "slerp":
        return slerp(a, b, alpha)
    raise ValueError(f"unknown interpolation '{mode}'; choose one of {', '.join(INTERPS)}")
