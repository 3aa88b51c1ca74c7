"""The island filter: specks of one class inside another take the class around them; regions at or above
the set size, and every pixel when the filter is off, stay as predicted."""

import numpy as np
import torch

from meddiff.data.samples import brain_mri
from meddiff.segment.islands import fill_islands, label_min_island, scaled_min_size, small_regions


def _speckled(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean 3-class map (left background, right tissue, a 6x6 lesion) and a copy with specks of 1-4
    pixels of a wrong class, as a pixel classifier leaves them: one on every 6-pixel grid point whose
    surroundings are of one class (a speck on a boundary has no single class around it)."""
    clean = torch.zeros(48, 48, dtype=torch.int64)
    clean[:, 24:] = 1
    clean[30:36, 30:36] = 2
    noisy = clean.clone()
    rng = np.random.default_rng(seed)
    for y in range(3, 46, 6):
        for x in range(3, 46, 6):
            if len(clean[y - 2 : y + 4, x - 2 : x + 4].unique()) == 1:
                h, w = rng.integers(1, 3, size=2)
                noisy[y : y + h, x : x + w] = (clean[y, x] + rng.integers(1, 3)) % 3
    return clean, noisy


def test_specks_take_the_class_around_them():
    clean, noisy = _speckled()
    assert (noisy != clean).sum() > 60
    filled = fill_islands(noisy, min_size=8)
    assert torch.equal(filled, clean)
    assert not small_regions(filled.numpy(), 8).any()


def test_regions_of_the_set_size_and_everything_when_off_stay():
    _, noisy = _speckled()
    assert torch.equal(fill_islands(noisy, min_size=0), noisy)
    lesion = torch.zeros(20, 20, dtype=torch.int64)
    lesion[5:8, 5:8] = 3  # 9 pixels
    assert torch.equal(fill_islands(lesion, min_size=9), lesion)
    assert (fill_islands(lesion, min_size=10) == 0).all()


def test_a_map_made_only_of_small_regions_is_left_alone():
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2
    assert torch.equal(fill_islands(checker, min_size=4), checker)


def test_the_size_scales_with_the_image_area():
    assert scaled_min_size(8, 64, (64, 64)) == 8
    assert scaled_min_size(8, 64, (3, 128, 256)) == 64
    assert scaled_min_size(0, 64, (128, 128)) == 0


def test_the_default_size_is_the_largest_the_labelled_masks_themselves_keep():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    smooth = ((yy - 32) ** 2 + (xx - 30) ** 2 < 400).long() + ((yy - 30) ** 2 + (xx - 34) ** 2 < 100).long()
    smooth[:4] = 255  # ignored rows (padding) do not count
    assert label_min_island(smooth[None].repeat(3, 1, 1)) == 32
    brain = brain_mri(64).masks[40:100:10]  # thresholded tissue maps: single-pixel regions are anatomy here
    assert label_min_island(brain) == 0
