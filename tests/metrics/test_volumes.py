"""Per-case 3D Dice and HD95 of label volumes."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from meddiff.metrics.volumes import hd95, volume_scores


def _blob(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2) > 0.5


def _brute_force_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """Every surface voxel to every other: the definition, without distance transforms."""
    sa = np.argwhere(a & ~ndimage.binary_erosion(a, border_value=0)).astype(float)
    sb = np.argwhere(b & ~ndimage.binary_erosion(b, border_value=0)).astype(float)
    d = torch.cdist(torch.from_numpy(sa), torch.from_numpy(sb)).numpy()
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def test_identical_volumes_score_dice_1_and_hd95_0():
    truth = np.zeros((4, 16, 16), np.int64)
    truth[1:3, 4:10, 4:10] = 1
    truth[1:3, 10:14, 4:10] = 2
    scores = volume_scores(truth, truth, num_classes=3)
    assert scores.dice.tolist() == [1.0, 1.0] and scores.hd95.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_the_definition_on_random_blobs(seed):
    a, b = _blob((6, 24, 24), seed), _blob((6, 24, 24), seed + 10)
    assert hd95(a, b) == pytest.approx(_brute_force_hd95(a, b))


def test_a_square_shifted_by_three_pixels():
    truth = np.zeros((32, 32), bool)
    truth[8:20, 8:20] = True
    pred = np.roll(truth, 3, axis=1)
    scores = volume_scores(pred.astype(int), truth.astype(int), num_classes=2)
    assert scores.dice[0] == pytest.approx(2 * 12 * 9 / (2 * 144))
    assert scores.hd95[0] == pytest.approx(3.0)  # the two vertical edges 3 px apart dominate the top 5%


def test_spacing_scales_distances_along_its_axis():
    truth = np.zeros((32, 32), bool)
    truth[8:20, 8:20] = True
    pred = np.roll(truth, 3, axis=1)
    assert hd95(pred, truth, spacing=(1.0, 2.0)) == pytest.approx(6.0)


def test_a_missed_structure_has_dice_0_and_no_hd95():
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    scores = volume_scores(np.zeros_like(truth), truth, num_classes=3)
    assert scores.dice[0] == 0.0 and math.isnan(scores.hd95[0])
    assert scores.dice[1] == 1.0 and math.isnan(scores.hd95[1])  # class 2 absent from both: nothing wrong


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        volume_scores(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), num_classes=2)
    with pytest.raises(ValueError, match="spacing"):
        volume_scores(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), num_classes=2, spacing=(1, 1))
