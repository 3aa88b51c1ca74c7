"""The domain feature network: self-supervised training that learns, a name that pins data + settings,
a round trip through the checkpoint format, and input handling for any channel count and size."""

import json

import pytest
import torch

from meddiff.checkpoint import STATE_FILE
from meddiff.errors import UserError
from meddiff.metrics.domain_net import (
    DomainCNN,
    DomainNetConfig,
    DomainTrainConfig,
    augment,
    load_domain_net,
    save_domain_net,
    train_domain_net,
)
from meddiff.metrics.features import extract_features

TINY = DomainNetConfig(image_size=32, widths=(8, 16, 32, 64), projection_dim=32)


def _train(images, steps, seed=0):
    return train_domain_net(images, TINY, DomainTrainConfig(steps=steps, batch_size=16, seed=seed))


def test_contrastive_loss_decreases_within_a_few_steps(brain_slices):
    _, losses = _train(brain_slices, steps=40)
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.3, (first, last)


def test_training_is_seeded_and_the_name_pins_data_and_seed(brain_slices):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, losses_a = _train(brain_slices, steps=3)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    b, losses_b = _train(brain_slices, steps=3)
    other_seed, _ = _train(brain_slices, steps=3, seed=1)
    other_data, _ = _train(brain_slices[1:], steps=3)
    assert a.name == b.name and losses_a == losses_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.name.startswith("domain-cnn-") and len({a.name, other_seed.name, other_data.name}) == 3


def test_save_load_round_trip_gives_identical_features(brain_slices, tmp_path):
    net, _ = _train(brain_slices, steps=2)
    save_domain_net(net, tmp_path / "net")
    assert (tmp_path / "net" / "model.safetensors").is_file()
    record = json.loads((tmp_path / "net" / STATE_FILE).read_text())
    assert record["name"] == net.name and record["training"]["steps"] == 2
    loaded = load_domain_net(tmp_path / "net")
    assert loaded.name == net.name
    assert torch.equal(extract_features(brain_slices, loaded), extract_features(brain_slices, net))


def test_loading_reports_the_missing_or_broken_file(tmp_path, random_feature_net):
    with pytest.raises(UserError, match=str(tmp_path / "absent")):
        load_domain_net(tmp_path / "absent")
    save_domain_net(random_feature_net, tmp_path / "net")
    state = tmp_path / "net" / STATE_FILE
    record = json.loads(state.read_text())
    state.write_text("{not json")
    with pytest.raises(UserError, match=STATE_FILE):
        load_domain_net(tmp_path / "net")
    state.write_text(json.dumps({**record, "kind": "aligner"}))
    with pytest.raises(UserError, match="not a domain feature network"):
        load_domain_net(tmp_path / "net")
    state.write_text(json.dumps({**record, "config": {**record["config"], "widths": [4, 8]}}))
    with pytest.raises(UserError, match="weights do not fit"):
        load_domain_net(tmp_path / "net")


def test_any_channel_count_and_size_is_accepted(random_feature_net):
    grey = torch.rand(3, 1, 40, 56) * 2 - 1
    features = random_feature_net(grey)
    assert features.shape == (3, random_feature_net.num_features)
    # An RGB image whose channels are all the grey image is the grey image to a grey network.
    assert torch.allclose(random_feature_net(grey.expand(-1, 3, -1, -1)), features, atol=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rgb_net = DomainCNN(DomainNetConfig(in_channels=3, image_size=32, widths=(8, 16, 32, 64)))
    assert torch.allclose(rgb_net(grey), rgb_net(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(UserError, match="channels"):
        rgb_net(torch.zeros(1, 2, 32, 32))


def test_augmented_views_are_seeded_in_range_and_differ_from_the_input(brain_slices):
    x = brain_slices[:8]
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.02
    # Geometric views keep the intensity histogram roughly; intensity jitter (off by default) changes it.
    jittered = augment(x, torch.Generator().manual_seed(0), intensity_jitter=1.0)
    assert jittered.min() >= -1 and jittered.max() <= 1
    assert (jittered.mean(dim=(1, 2, 3)) - a.mean(dim=(1, 2, 3))).abs().max() > 0.02
