"""The logit shifts a pixel classifier predicts with: the prior correction and the held-out-fitted shift."""

import torch

from meddiff.segment.calibrate import fit_bias, weighted_miou


def test_weighted_miou_counts_each_pixel_with_its_true_class_weight():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    # unweighted: IoU 1/2 (class 0) and 2/3 (class 1)
    assert abs(weighted_miou(pred, target, torch.ones(2)) - (1 / 2 + 2 / 3) / 2) < 1e-9
    # class 0 pixels count 3x: confusion [[3, 3], [0, 2]] -> IoU 3/6 and 2/5
    assert abs(weighted_miou(pred, target, torch.tensor([3.0, 1.0])) - (3 / 6 + 2 / 5) / 2) < 1e-9


def test_the_fitted_shift_moves_an_overconfident_classifier_to_the_best_held_out_miou():
    # Held-out pixels 10 % foreground; the "classifier" scores foreground by a noisy feature at twice the
    # calibrated scale, so the prior shift (log 0.1/0.5 each way) under-corrects.
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(20_000, generator=g) < 0.1).long()
    score = 2.0 * (labels.float() * 2.0 - 1.0 + torch.randn(20_000, generator=g))
    logits = torch.stack([torch.zeros_like(score), score], dim=-1)[None]  # one member, [1, P, 2]
    weights = torch.ones(2)
    start = torch.tensor([0.0, 0.0])
    fitted = fit_bias(logits, labels, weights, start)
    assert fitted[0] == 0.0
    best_by_scan = max(
        torch.linspace(-4, 4, 33).tolist(),
        key=lambda v: weighted_miou((score + v > 0).long(), labels, weights),
    )
    assert abs(fitted[1].item() - best_by_scan) < 1e-6
    assert weighted_miou((score + fitted[1] > 0).long(), labels, weights) > weighted_miou(
        (score > 0).long(), labels, weights
    )


def test_with_nothing_to_gain_the_fitted_shift_stays_at_the_start():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.nn.functional.one_hot(labels, 3).float()[None] * 10  # perfect at any small shift
    start = torch.tensor([0.0, 0.3, -0.2])
    torch.testing.assert_close(fit_bias(logits, labels, torch.ones(3), start), start)
