"""The orthonormal Haar DWT layers: known coefficients, exact inversion, energy preservation, padding."""

import pytest
import torch

from meddiff.nets.wavelets import HaarDWT, HaarIDWT, haar_dwt, haar_idwt, pad_for_levels


def test_one_block_gives_the_haar_sums_and_differences():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # top-left a=1, top-right b=2, bottom-left c=3, bottom-right d=4
    bands = haar_dwt(x).flatten().tolist()
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    assert bands == pytest.approx([(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])


def test_bands_are_band_major_over_channels():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    bands = haar_dwt(x)
    assert bands.shape == (2, 12, 4, 3)
    low = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)) / 2  # 2x2 block sums / 2 per channel
    torch.testing.assert_close(bands[:, :3], low)


def test_inverse_restores_the_input_exactly_and_energy_is_kept():
    x = torch.randn(3, 2, 16, 10, dtype=torch.float64)
    y = HaarDWT()(x)
    torch.testing.assert_close(HaarIDWT()(y), x, rtol=0, atol=1e-12)
    torch.testing.assert_close((y**2).sum(), (x**2).sum())
    z = torch.randn(1, 8, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(haar_dwt(haar_idwt(z)), z, rtol=0, atol=1e-12)


def test_odd_sizes_are_refused_and_padding_makes_levels_possible():
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        haar_idwt(torch.zeros(1, 6, 4, 4))
    x = torch.randn(1, 1, 250, 301)
    padded = pad_for_levels(x, 3)
    assert padded.shape[-2:] == (256, 304)
    torch.testing.assert_close(padded[..., :250, :301], x)
    assert torch.equal(padded[..., 255, :301], x[..., 249, :])  # replicated edge
    torch.testing.assert_close(haar_idwt(haar_dwt(padded))[..., :250, :301], x)
