"""Memorisation check on real MRI slices.

Neighbouring slices of one volume are 1 mm apart and nearly identical (RMS difference ~0.03-0.1), so a
slice next to a training slice is itself a near copy. Held-out slices must therefore be well apart from
every training slice, like images of a new patient would be: the split below leaves gaps of 8 slices.
The threshold is calibrated on one held-out block and the "not flagged" claim is checked on a different
block at the same distance from the training set, so the test does not grade the threshold on the very
images it was derived from.
"""

import pytest
import torch

from meddiff.errors import UserError
from meddiff.metrics.memorization import memorization_check, nearest_neighbours


@pytest.fixture(scope="module")
def split(brain_slices):
    # slice index: 0 ... 44 | gap 8 | 53 ... 62 | gap | 87 ... 96 | gap 8 | 105 ... 132
    #              train          calibration       evaluation          train
    train = torch.cat([brain_slices[:45], brain_slices[105:]])
    return train, brain_slices[53:63], brain_slices[87:97]


def _copies(train: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    picked = torch.arange(0, len(train), 7)
    g = torch.Generator().manual_seed(0)
    noise = sigma * torch.randn(train[picked].shape, generator=g)
    return (train[picked] + noise).clamp(-1, 1), picked


def test_exact_and_near_copies_are_flagged_and_point_to_their_source(split):
    train, calibration, evaluation = split
    exact, source = _copies(train, 0.0)
    near, _ = _copies(train, 0.02)  # visually identical: RMS noise below the 1 mm slice-to-slice change
    generated = torch.cat([exact, near, evaluation])
    report = memorization_check(generated, train, heldout=calibration)
    n = len(source)
    assert report.likely_copy[: 2 * n].all()
    assert torch.equal(report.nearest[: 2 * n], torch.cat([source, source]))
    assert report.distances[:n].max() < 1e-5
    assert not report.likely_copy[2 * n :].any()  # unseen real slices are not copies
    assert report.fraction_copies == pytest.approx(2 * n / len(generated))
    assert report.reference == "heldout" and report.space == "pixels-32"


def test_held_out_slices_are_not_flagged_with_margin(split):
    train, calibration, evaluation = split
    report = memorization_check(evaluation, train, heldout=calibration)
    assert report.fraction_copies == 0.0
    assert report.distances.min() > 1.2 * report.threshold


def test_without_held_out_images_the_leave_one_out_threshold_is_conservative(split):
    # Training neighbours 1 mm apart make leave-one-out distances small: exact and near-exact copies
    # are still caught, a looser copy (RMS difference ~0.05, still far closer than any unseen slice) is not,
    # although a held-out calibration flags it.
    train, calibration, evaluation = split
    near, _ = _copies(train, 0.01)
    loose, _ = _copies(train, 0.06)
    loo = memorization_check(torch.cat([near, loose, evaluation]), train)
    n = len(near)
    assert loo.reference == "train-leave-one-out"
    assert loo.likely_copy[:n].all() and not loo.likely_copy[n:].any()
    assert memorization_check(loose, train, heldout=calibration).likely_copy.all()


def test_a_feature_network_can_replace_pixels(split, random_feature_net):
    train, calibration, _ = split
    exact, source = _copies(train, 0.0)
    report = memorization_check(exact, train, heldout=calibration, feature_net=random_feature_net)
    assert report.space == "test-random-cnn"
    assert report.likely_copy.all() and torch.equal(report.nearest, source)


def test_chunked_nearest_neighbours_match_the_full_distance_matrix():
    g = torch.Generator().manual_seed(0)
    query, reference = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = torch.cdist(query.double(), reference.double())
    d, i = nearest_neighbours(query, reference, max_elements=50)  # blocks of 2 rows
    assert torch.equal(i, full.argmin(dim=1))
    assert torch.allclose(d.double(), full.min(dim=1).values, atol=1e-6)
    _d_self, i_self = nearest_neighbours(reference, reference, exclude_self=True, max_elements=50)
    own = torch.cdist(reference.double(), reference.double()).fill_diagonal_(float("inf"))
    assert torch.equal(i_self, own.argmin(dim=1)) and (i_self != torch.arange(23)).all()


def test_bad_arguments_are_user_errors(split):
    train, _calibration, _ = split
    with pytest.raises(UserError, match="percentile"):
        memorization_check(train[:2], train, percentile=0)
    with pytest.raises(UserError, match="'generated' has 3 channels"):
        memorization_check(train[:2].expand(-1, 3, -1, -1), train)
