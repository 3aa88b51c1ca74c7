"""The MLP ensemble: majority vote and uncertainty on hand-made logits, independent members trained in one
batch, early stopping that keeps each member's best weights, tile-by-tile prediction."""

import math

import torch

from meddiff.segment.ensemble import (
    EnsembleConfig,
    GroupedLinear,
    MLPEnsemble,
    _val_loss,
    predict_maps,
    train_ensemble,
    vote,
)
from meddiff.segment.features import FeatureConfig, FeatureExtractor
from meddiff.segment.pixels import PixelStore

BIG = 10.0


def _confident(classes: list[int], num_classes: int = 3) -> torch.Tensor:
    """Logits [1, C] of a member sure of ``classes[i]``, stacked to [M, 1, C]."""
    return torch.stack([torch.nn.functional.one_hot(torch.tensor([c]), num_classes).float() * BIG for c in classes])


def test_majority_vote_and_disagreement_on_hand_made_logits():
    logits = torch.cat([_confident([2, 2, 1, 2]), _confident([0, 1, 1, 1]), _confident([0, 0, 0, 0])], dim=1)
    result = vote(logits)
    assert result.labels.tolist() == [2, 1, 0]
    torch.testing.assert_close(result.disagreement, torch.tensor([0.25, 0.25, 0.0]))
    assert result.entropy[2] < 1e-3 < result.entropy[0]


def test_a_tied_vote_goes_to_the_class_with_the_higher_mean_probability():
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # one vote each; member 0 is surer
    result = vote(logits)
    assert result.labels.tolist() == [0] and result.disagreement.tolist() == [0.5]


def test_entropy_is_one_for_uniform_predictions_and_zero_for_unanimous_certainty():
    uniform = vote(torch.zeros(3, 1, 4))
    torch.testing.assert_close(uniform.entropy, torch.ones(1))
    # members sure of different classes: the mean is uniform over two of four classes -> log 2 / log 4
    split = vote(torch.tensor([[[50.0, 0, 0, 0]], [[0, 50.0, 0, 0]]]))
    torch.testing.assert_close(split.entropy, torch.tensor([math.log(2) / math.log(4)]))


def test_grouped_layers_keep_members_independent_and_accept_a_shared_input():
    layer = GroupedLinear(3, 5, 2)
    x = torch.randn(4, 5)
    shared = layer(x)
    per_member = layer(x.expand(3, 4, 5))
    torch.testing.assert_close(shared, per_member)
    per_member[0].sum().backward()
    assert layer.weight.grad[1:].abs().sum() == 0 and layer.weight.grad[0].abs().sum() > 0


def _separable_store(n: int, dims: int = 6, seed: int = 0) -> PixelStore:
    """Three classes whose mean feature differs along the first dimension."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    features = torch.randn(n, dims, generator=g) * 0.3
    features[:, 0] += labels.float() * 2
    store = PixelStore(None, n, dims, labels, fp16=False)
    store.write(0, features)
    return store


def test_training_learns_and_returns_each_members_best_held_out_weights():
    store = _separable_store(1200)
    config = EnsembleConfig(members=3, hidden=[16, 8], eval_every=10, patience=3, max_epochs=20)
    model, report = train_ensemble(store, 1000, 3, config, seed=0)
    held_out = torch.arange(1000, 1200)
    accuracy = (vote(model(store.read(held_out))).labels == store.labels[held_out]).float().mean()
    assert accuracy > 0.95
    assert report.train_pixels == 1000 and report.val_pixels == 200 and len(report.best_val_loss) == 3
    recomputed = _val_loss(model, store, held_out.numpy(), None, 64)
    torch.testing.assert_close(recomputed, torch.tensor(report.best_val_loss, dtype=torch.float64))


def test_the_same_seed_trains_the_same_ensemble():
    store = _separable_store(300)
    config = EnsembleConfig(members=2, hidden=[8], eval_every=5, max_epochs=2)
    a, _ = train_ensemble(store, 250, 3, config, seed=4)
    b, _ = train_ensemble(store, 250, 3, config, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_tile_by_tile_prediction_equals_one_tile(tiny_unet, diffusion):
    extractor = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[3, 8], timesteps=[50]))
    maps = extractor.maps(torch.rand(1, 1, 24, 16) * 2 - 1)
    model = MLPEnsemble(3, extractor.dims, [8], 4).eval()
    whole = predict_maps(model, maps, 0, tile_mb=64)
    three_rows = 3 * 16 * extractor.dims * 4 / 2**20  # float32 features of 3 rows of 16 pixels
    tiled = predict_maps(model, maps, 0, tile_mb=three_rows)  # 8 bands of 3 rows
    assert whole.labels.shape == (24, 16)
    for name in ("labels", "disagreement", "entropy"):
        torch.testing.assert_close(getattr(tiled, name), getattr(whole, name))
