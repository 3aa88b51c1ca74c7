"""Inception-v3 from a local weights file only. The real weights cannot be downloaded here, so the loading
path is exercised with a random state dict of the same architecture saved to disk."""

import pytest
import torch
from torch import nn

from meddiff.errors import UserError
from meddiff.metrics.inception import InceptionV3Features, load_inception, resize_like_tf1

# torchvision publishes 27,161,264 parameters for inception_v3 (with AuxLogits and a 1000-way fc).
# AuxLogits: 768*128 + 256 (conv0 + BN) + 128*768*25 + 1536 (conv1 + BN) + 768*1000 + 1000 (fc) = 3,326,696;
# fc: 2048*1000 + 1000 = 2,049,000. What is left is the feature trunk.
TRUNK_PARAMETERS = 27_161_264 - 3_326_696 - 2_049_000


@pytest.fixture(scope="module")
def random_fid_state():
    """A state dict shaped like pt_inception-2015-12-05 (1008-way fc), with activations that do not vanish."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = InceptionV3Features("fid")
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        state = dict(net.state_dict())
        state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048), torch.randn(1008)
    return net, state


def test_the_trunk_has_torchvisions_parameter_count():
    assert sum(p.numel() for p in InceptionV3Features("torchvision").parameters()) == TRUNK_PARAMETERS
    assert sum(p.numel() for p in InceptionV3Features("fid").parameters()) == TRUNK_PARAMETERS


def test_a_missing_weights_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(UserError, match=str(path)):
        load_inception(path)


@torch.no_grad()
def test_a_local_fid_state_dict_loads_and_gives_the_same_features(random_fid_state, tmp_path):
    net, state = random_fid_state
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    loaded = load_inception(path)
    assert loaded.variant == "fid" and loaded.name.startswith("inception-v3-fid-")
    grey = torch.rand(2, 1, 32, 32) * 2 - 1
    features = loaded(grey)
    assert features.shape == (2, 2048) and features.std() > 1e-3
    assert torch.equal(features, net(grey))
    assert torch.equal(features, loaded(grey.expand(-1, 3, -1, -1)))  # grey is replicated to RGB


def test_a_torchvision_style_state_dict_is_recognised(random_fid_state, tmp_path):
    _, state = random_fid_state
    state = dict(state)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # auxiliary head weights are skipped
    path = tmp_path / "inception_v3_google.pth"
    torch.save(state, path)
    assert load_inception(path).variant == "torchvision"


def test_a_foreign_state_dict_is_a_user_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match="not an Inception-v3 state dict"):
        load_inception(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_inception(path)


def test_tf1_bilinear_resize_has_no_half_pixel_offset():
    # TF1 maps output pixel i to source i * in / out: upsampling [0, 1] to 4 samples at 0, 0.5, 1, 1.5.
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    assert resize_like_tf1(x, 4)[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.0]
