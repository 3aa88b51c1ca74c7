"""SPADE: parameter-free GroupNorm, then a per-pixel scale and shift computed from the label map."""

import pytest
import torch
import torch.nn.functional as F

from meddiff.nets.spade import SPADE


def _one_hot(ids: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(ids, k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("channels, size", [(32, 8), (24, 16), (48, 32)])
def test_output_has_the_feature_shape_whatever_the_label_map_resolution(channels, size):
    spade = SPADE(channels, label_channels=4, hidden=16)
    label_map = _one_hot(torch.randint(0, 4, (2, 32, 32)), 4)  # resized to the features by nearest neighbour
    assert spade(torch.randn(2, channels, size, size), label_map).shape == (2, channels, size, size)


def test_the_label_map_decides_the_scale_and_shift():
    torch.manual_seed(0)
    spade = SPADE(16, label_channels=3, hidden=8)
    x = torch.randn(1, 16, 16, 16)
    left = torch.zeros(1, 16, 16, dtype=torch.long)
    right = left.clone()
    right[:, :, 8:] = 2
    with torch.no_grad():
        a, b = spade(x, _one_hot(left, 3)), spade(x, _one_hot(right, 3))
    changed = (a - b).abs().amax(dim=1)[0]
    assert changed[:, :6].max() < 1e-6  # away from the changed half (beyond the two 3x3 convs) nothing moves
    assert changed[:, 8:].min() > 1e-4  # where the class changed, every pixel is modulated differently


def test_without_modulation_it_is_groupnorm_without_learned_affine():
    spade = SPADE(16, label_channels=3, hidden=8, groups=4)
    assert not any("norm" in name for name, _ in spade.named_parameters())
    with torch.no_grad():
        for conv in (spade.gamma, spade.beta):
            conv.weight.zero_()
            conv.bias.zero_()
        x = 3 + 5 * torch.randn(2, 16, 8, 8)
        out = spade(x, _one_hot(torch.randint(0, 3, (2, 8, 8)), 3))
    torch.testing.assert_close(out, F.group_norm(x, 4), atol=1e-5, rtol=1e-5)
    groups = out.view(2, 4, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(groups.std(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


def test_scale_and_shift_follow_x_times_one_plus_gamma_plus_beta():
    torch.manual_seed(1)
    spade = SPADE(8, label_channels=2, hidden=4, groups=2)
    x, m = torch.randn(1, 8, 8, 8), _one_hot(torch.randint(0, 2, (1, 8, 8)), 2)
    with torch.no_grad():
        h = spade.shared(m)
        expected = F.group_norm(x, 2) * (1 + spade.gamma(h)) + spade.beta(h)
        torch.testing.assert_close(spade(x, m), expected)


def test_a_missing_label_map_is_a_clear_error():
    with pytest.raises(ValueError, match="label_map"):
        SPADE(8, label_channels=2)(torch.randn(1, 8, 4, 4), None)
