"""FID/KID through torchmetrics with a pluggable feature network, including small-set handling."""

import warnings

import pytest
import torch

from meddiff.errors import UserError
from meddiff.metrics import domain_net
from meddiff.metrics.domain_net import DomainNetConfig, DomainTrainConfig
from meddiff.metrics.generative import generative_scores, scores_from_features, select_feature_net


@pytest.fixture(autouse=True)
def _quiet_small_set_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FID on")
        yield


def _noisy(images: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(-1, 1)


def test_identical_sets_score_near_zero_and_shifted_sets_clearly_higher(brain_slices, random_feature_net):
    same = generative_scores(brain_slices, brain_slices, random_feature_net, kid_subsets=10)
    noisy = generative_scores(brain_slices, _noisy(brain_slices, 0.3), random_feature_net, kid_subsets=10)
    inverted = generative_scores(brain_slices, -brain_slices, random_feature_net, kid_subsets=10)
    assert abs(same["fid"]) < 1e-6
    # With the same images on both sides the unbiased MMD estimator is slightly negative
    # (-(2/m) * (mean self-similarity - mean cross-similarity)): near zero, not exactly zero.
    assert abs(same["kid_mean"]) < 0.005
    for shifted in (noisy, inverted):
        assert shifted["fid"] > 1.0
        assert shifted["kid_mean"] > 2 * abs(same["kid_mean"]) and shifted["kid_mean"] > 0.005
    assert inverted["fid"] > noisy["fid"]  # the bigger change scores worse


def test_a_different_anatomy_is_detected_by_both_metrics(brain_slices, random_feature_net):
    lower, upper = brain_slices[:66], brain_slices[67:]
    interleaved = generative_scores(brain_slices[0::2], brain_slices[1::2], random_feature_net, kid_subsets=10)
    split = generative_scores(lower, upper, random_feature_net, kid_subsets=10)
    assert split["fid"] > 10 * interleaved["fid"]
    assert split["kid_mean"] > 0.01 > interleaved["kid_mean"]


def test_output_names_the_feature_net_and_caps_the_kid_subset(brain_slices, random_feature_net):
    scores = generative_scores(
        brain_slices[:40], brain_slices[40:70], random_feature_net, kid_subset_size=1000, kid_subsets=5
    )
    assert scores["feature_net"] == "test-random-cnn"
    assert scores["kid_subset_size"] == 30
    assert (scores["n_real"], scores["n_fake"]) == (40, 30)


def test_batches_from_an_iterable_give_the_same_scores(brain_slices, random_feature_net):
    real, fake = brain_slices[:60], _noisy(brain_slices[60:120], 0.1)
    whole = generative_scores(real, fake, random_feature_net, kid_subsets=5)
    streamed = generative_scores(iter(real.split(7)), iter(fake.split(11)), random_feature_net, kid_subsets=5)
    assert streamed["fid"] == pytest.approx(whole["fid"], rel=1e-4)
    assert streamed["kid_mean"] == pytest.approx(whole["kid_mean"], rel=1e-4, abs=1e-7)


def test_kid_subsets_are_seeded_and_leave_the_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g) + 0.5
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = scores_from_features(real, fake, "f", kid_subset_size=20, kid_subsets=10, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = scores_from_features(real, fake, "f", kid_subset_size=20, kid_subsets=10, seed=7)
    c = scores_from_features(real, fake, "f", kid_subset_size=20, kid_subsets=10, seed=8)
    assert a["kid_mean"] == b["kid_mean"] and a["kid_mean"] != c["kid_mean"]


def test_small_sets_warn_about_fid_bias_and_single_images_are_refused():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    with pytest.warns(UserWarning, match="biased"):
        scores_from_features(real, fake, "f", kid_subsets=2)
    with pytest.raises(UserError, match="'fake' has 1 image"):
        scores_from_features(real, fake[:1], "f")
    with pytest.raises(UserError, match="kid_subset_size"):
        scores_from_features(real, fake, "f", kid_subset_size=1)


def test_without_inception_weights_the_domain_net_is_trained_once_and_then_reused(brain_slices, tmp_path, monkeypatch):
    tiny = DomainNetConfig(image_size=32, widths=(8, 16, 32, 64), projection_dim=32)
    settings = DomainTrainConfig(steps=2, batch_size=8)
    first = select_feature_net(brain_slices, cache_dir=tmp_path, net_config=tiny, train_config=settings)
    assert first.name == domain_net.domain_net_name(brain_slices, tiny, settings)
    assert (tmp_path / first.name).is_dir()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network should have been loaded")

    monkeypatch.setattr(domain_net, "train_domain_net", no_training)
    again = select_feature_net(brain_slices, cache_dir=tmp_path, net_config=tiny, train_config=settings)
    assert again.name == first.name
    assert torch.equal(again(brain_slices[:4]), first(brain_slices[:4]))


def test_named_inception_weights_that_are_absent_are_a_user_error(brain_slices, tmp_path):
    with pytest.raises(UserError, match=r"pt_inception\.pth"):
        select_feature_net(brain_slices, inception_weights=tmp_path / "pt_inception.pth")
