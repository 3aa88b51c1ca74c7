"""Classic fusion rules: pixel rules, Haar DWT and Laplacian pyramid fusion at any size."""

import pytest
import torch

from meddiff.fusion.rules import RULES, average, collapse, dwt, laplacian, laplacian_pyramid, pixel_max


def test_pixel_rules():
    a = torch.tensor([[[[0.0, -1.0], [0.5, 1.0]]]])
    b = torch.tensor([[[[1.0, -0.5], [0.0, 0.2]]]])
    torch.testing.assert_close(average(a, b), torch.tensor([[[[0.5, -0.75], [0.25, 0.6]]]]))
    torch.testing.assert_close(pixel_max(a, b), torch.tensor([[[[1.0, -0.5], [0.5, 1.0]]]]))
    assert set(RULES) == {"average", "max", "dwt", "laplacian"}


@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_keeps_odd_sizes_and_fusing_an_image_with_itself_returns_it(name):
    a = torch.rand(2, 1, 25, 31, dtype=torch.float64) * 2 - 1
    out = RULES[name](a, a)
    assert out.shape == a.shape
    torch.testing.assert_close(out, a)


def test_dwt_averages_the_level_3_approximation_and_keeps_the_larger_details():
    """With B constant (no details) every detail comes from A, so the result is A with its 8x8 block means
    moved halfway towards B's value: A + (c - blockmean8(A)) / 2."""
    a = torch.rand(1, 1, 16, 24, dtype=torch.float64)
    c = 0.3
    block_mean = a.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2))
    expected = a + (c - block_mean.repeat_interleave(8, 2).repeat_interleave(8, 3)) / 2
    torch.testing.assert_close(dwt(a, torch.full_like(a, c)), expected)


def test_laplacian_pyramid_has_4_levels_and_collapses_exactly_at_odd_sizes():
    x = torch.rand(1, 1, 250, 301, dtype=torch.float64)
    pyramid = laplacian_pyramid(x, 4)
    assert [p.shape[-2:] for p in pyramid] == [(250, 301), (125, 151), (63, 76), (32, 38), (16, 19)]
    torch.testing.assert_close(collapse(pyramid), x)


def test_laplacian_fusion_keeps_the_stronger_band_and_averages_the_top():
    a = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    a[..., 12:20, 12:20] = 1.0  # a bright square
    fused = laplacian(a, torch.zeros_like(a))
    # The square's edges survive at full contrast (max-abs bands) while a plain average would halve them.
    assert (fused[..., 16, 16] - fused[..., 16, 2]).item() > 0.75
    assert (average(a, torch.zeros_like(a))[..., 16, 16]).item() == 0.5


def test_rules_run_at_250x301():
    a, b = torch.rand(1, 1, 250, 301) * 2 - 1, torch.rand(1, 1, 250, 301) * 2 - 1
    for rule in RULES.values():
        assert rule(a, b).shape == (1, 1, 250, 301)
