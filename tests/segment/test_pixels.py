"""Held-out pixels, class-balanced sampling with prior-restoring weights, and the pixel-feature store."""

import numpy as np
import pytest
import torch

from meddiff.data.labels import IGNORE_INDEX
from meddiff.segment.calibrate import prior_bias
from meddiff.segment.ensemble import EnsembleConfig, train_ensemble, vote
from meddiff.segment.pixels import PixelConfig, PixelStore, balanced_sample, held_out_pixels


def _masks() -> torch.Tensor:
    """Two 20x20 masks: class 0 everywhere except a 3x3 class-2 square, a 10x10 class-1 block, an ignored row."""
    masks = torch.zeros(2, 20, 20, dtype=torch.long)
    masks[0, :3, :3] = 2
    masks[1, 5:15, 5:15] = 1
    masks[1, 19] = IGNORE_INDEX
    return masks


def test_held_out_pixels_are_a_seeded_share_of_the_labelled_pixels():
    masks = _masks()
    held = held_out_pixels(masks, 0.25, seed=0)
    assert not held[masks == IGNORE_INDEX].any()
    assert 0.18 < held.float().sum() / (masks != IGNORE_INDEX).sum() < 0.32
    assert torch.equal(held, held_out_pixels(masks, 0.25, seed=0))
    assert not torch.equal(held, held_out_pixels(masks, 0.25, seed=1))


def test_balanced_sample_splits_the_budget_over_classes_and_takes_all_of_a_rare_one():
    masks = _masks()
    candidates = masks != IGNORE_INDEX
    sample = balanced_sample(masks, candidates, budget=60, num_classes=3, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample.labels, minlength=3).tolist()
    assert counts == [26, 25, 9]  # all 9 class-2 pixels, the rest of the budget split evenly
    assert torch.equal(sample.flat, sample.flat.sort().values) and len(sample.flat.unique()) == 60
    assert torch.equal(masks.reshape(-1)[sample.flat], sample.labels)
    assert (masks.reshape(-1)[sample.flat] != IGNORE_INDEX).all()
    # weights x sampled counts restore the true class frequencies (671, 100 and 9 labelled pixels)
    true = torch.bincount(masks[candidates], minlength=3).float()
    restored = sample.class_weights * torch.tensor(counts, dtype=torch.float)
    torch.testing.assert_close(restored / restored.sum(), true / true.sum())
    ys, xs = sample.of_image(0)
    assert torch.equal(masks[0, ys, xs], sample.labels[: len(ys)])


def test_without_a_budget_every_candidate_pixel_is_taken_with_equal_weights():
    masks = _masks()
    candidates = (masks != IGNORE_INDEX) & (torch.arange(20)[None, None, :] < 10)
    sample = balanced_sample(masks, candidates, None, 3, torch.Generator())
    assert torch.equal(sample.flat, torch.nonzero(candidates.reshape(-1))[:, 0])
    torch.testing.assert_close(sample.class_weights, torch.ones(3))


@pytest.mark.parametrize("on_disk", [True, False])
def test_store_round_trips_rows_in_any_order(tmp_path, on_disk):
    features = torch.randn(50, 7)
    store = PixelStore(tmp_path / "f.bin" if on_disk else None, 50, 7, torch.arange(50) % 3, fp16=True)
    store.write(0, features[:20])
    store.write(20, features[20:])
    rows = torch.tensor([41, 3, 3, 17, 0])
    got = store.read(rows)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, features[rows].half().float())
    if on_disk:
        assert (tmp_path / "f.bin").stat().st_size == store.nbytes == 50 * 7 * 2
        store.close()
        assert not (tmp_path / "f.bin").exists()


def test_float32_store_is_exact(tmp_path):
    features = torch.randn(8, 3)
    store = PixelStore(tmp_path / "f.bin", 8, 3, torch.zeros(8), fp16=False)
    store.write(0, features)
    assert torch.equal(store.read(np.arange(8)), features)


def _rare_foreground(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pixels, 5 % foreground; one feature separates the classes by 3.5 standard deviations (they
    overlap, so the decision depends on the prior), three are noise."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < 0.05).long()
    features = torch.randn(n, 4, generator=g)
    features[:, 0] += 3.5 * labels
    return features, labels


def test_the_prior_correction_recovers_the_true_foreground_fraction_where_the_balanced_classifier_overshoots():
    features, labels = _rare_foreground(80_000, seed=0)
    masks, first_rows = labels.view(1, 400, 200), torch.zeros(1, 400, 200, dtype=torch.bool)
    first_rows[:, :300] = True  # training pixels; the other rows are held out for early stopping
    generator = torch.Generator().manual_seed(0)
    train = balanced_sample(masks, first_rows, 4000, 2, generator)
    val = balanced_sample(masks, ~first_rows, 1000, 2, generator)
    rows = torch.cat([train.flat, val.flat])
    store = PixelStore(None, len(rows), 4, labels[rows], fp16=False)
    store.write(0, features[rows])
    config = EnsembleConfig(members=3, hidden=[16], eval_every=20, patience=5, max_epochs=10)
    model, _ = train_ensemble(store, len(train), 2, config, seed=0)
    test_features, test_labels = _rare_foreground(40_000, seed=1)
    with torch.no_grad():
        logits = model(test_features)
    true = test_labels.float().mean()
    balanced = vote(logits).labels.float().mean()
    corrected = vote(logits, prior_bias(train)).labels.float().mean()
    # measured: true 0.048, balanced 0.085 (1.75x), corrected 0.041; Bayes' rule on the true densities
    # gives 0.086 and 0.046
    assert balanced > 1.5 * true
    assert abs(corrected - true) < 0.2 * true


def test_the_correction_is_zero_where_every_labelled_pixel_was_trained_on_so_the_prior_does_not_jump_with_labels():
    # Few labels: the budget covers every pixel and the sample has the true prior; more labels: the sample
    # is balanced. Uncorrected, the predicted prior changes between the two; corrected, both predict with it.
    masks = _masks()
    candidates = masks != IGNORE_INDEX
    every_pixel = balanced_sample(masks, candidates, int(candidates.sum()), 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior_bias(every_pixel), torch.zeros(3))
    balanced = balanced_sample(masks, candidates, 30, 3, torch.Generator().manual_seed(0))
    counts = torch.bincount(masks[candidates].long(), minlength=3).float()
    sampled = torch.bincount(balanced.labels.long(), minlength=3).float()
    shift = prior_bias(balanced) - prior_bias(balanced)[0]  # decisions depend on differences only
    torch.testing.assert_close(shift, (counts / sampled).log() - (counts[0] / sampled[0]).log())


def test_reweighting_and_the_prior_correction_are_not_combined():
    with pytest.raises(ValueError, match="choose one"):
        PixelConfig(reweight=True, prior_correction="prior")
