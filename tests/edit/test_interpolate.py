"""Embedding interpolation: linear and spherical, including extrapolation (alpha > 1)."""

import math

import pytest
import torch

from meddiff.edit.interpolate import interpolate, lerp, slerp

ALPHAS = [0.0, 0.3, 1.0, 1.4, 1.6]


def test_both_start_at_a_and_end_at_b():
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for mode in ("linear", "slerp"):
        assert torch.allclose(interpolate(a, b, 0.0, mode), a, atol=1e-5)
        assert torch.allclose(interpolate(a, b, 1.0, mode), b, atol=1e-5)


def test_lerp_is_imagics_formula():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(lerp(a, b, 1.4), 1.4 * b + (1 - 1.4) * a)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_slerp_matches_lerp_for_parallel_vectors(alpha):
    a = torch.randn(4, 16)
    b = a * torch.rand(4, 1) * 3  # same directions, other norms
    assert torch.allclose(slerp(a, b, alpha), lerp(a, b, alpha), atol=1e-5)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_slerp_keeps_the_norm_of_vectors_of_equal_norm(alpha):
    a, b = torch.randn(6, 32), torch.randn(6, 32)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)
    assert torch.allclose(slerp(a, b, alpha).norm(dim=-1), a.norm(dim=-1), rtol=1e-5)
    if alpha not in (0.0, 1.0):
        assert lerp(a, b, alpha).norm(dim=-1).sub(a.norm(dim=-1)).abs().max() > 1e-2  # lerp does not


def test_slerp_moves_at_constant_angular_speed_on_each_token():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # both tokens turn by 90 degrees
    half = slerp(a, b, 0.5)
    r = 1 / math.sqrt(2)
    assert torch.allclose(half, torch.tensor([[r, r], [2 * r, 2 * r]]), atol=1e-6)
    beyond = slerp(a, b, 1.5)  # extrapolation keeps turning: 135 degrees from a
    assert torch.allclose(beyond[0], torch.tensor([-1.0, 1.0]) / math.sqrt(2), atol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="slerp"):
        interpolate(torch.zeros(1), torch.zeros(1), 1.0, "cubic")
