"""The fusion prior: per pair, the rule with the best 2 SSIM + VIF + 3 Qabf is the training target."""

import numpy as np
import pytest
import torch

from meddiff.fusion.prior import fusion_prior, levels
from meddiff.fusion.rules import RULES
from meddiff.metrics.fusion import prior_score, to_uint8


def _pairs():
    g = torch.Generator().manual_seed(0)
    y_a = torch.rand(3, 1, 24, 20, generator=g) * 2 - 1
    y_b = torch.zeros(3, 1, 24, 20) - 1
    y_b[:, :, 6:18, 5:15] = torch.rand(3, 1, 12, 10, generator=g)  # a bright blob on black
    return y_a, y_b


def test_each_pair_gets_its_best_scoring_rule_output():
    y_a, y_b = _pairs()
    prior = fusion_prior(y_a, y_b, batch_size=2)
    assert prior.targets.shape == y_a.shape and len(prior.chosen) == 3
    for i, (rule, scores) in enumerate(zip(prior.chosen, prior.scores, strict=True)):
        assert set(scores) == set(RULES)
        assert scores[rule] == max(scores.values())
        out = RULES[rule](y_a[i : i + 1], y_b[i : i + 1]).clamp(-1, 1)
        torch.testing.assert_close(prior.targets[i], out[0])
        fused = to_uint8(levels(out[0]), "clip").astype(np.float64)
        assert scores[rule] == pytest.approx(prior_score(fused, levels(y_a[i]), levels(y_b[i])))
    assert sum(prior.counts().values()) == 3


def test_a_single_candidate_is_always_chosen_and_unknown_rules_are_refused():
    y_a, y_b = _pairs()
    assert fusion_prior(y_a, y_b, ["average"]).chosen == ["average"] * 3
    with pytest.raises(ValueError, match="unknown fusion rule 'median'"):
        fusion_prior(y_a, y_b, ["max", "median"])


def test_levels_maps_unit_range_to_rounded_grey_levels():
    np.testing.assert_array_equal(levels(torch.tensor([[-1.0, 0.0], [0.5, 1.0]])), [[0, 128], [191, 255]])
