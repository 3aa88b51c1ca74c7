"""The from-scratch U-Net segmenter: logits for any image size, trainable, configurable."""

import pytest
import torch
import torch.nn.functional as F

from meddiff.nets.segnet import SegNet, SegNetConfig


@pytest.mark.parametrize("height, width", [(32, 32), (27, 45), (8, 8)])
def test_logits_have_one_channel_per_class_at_the_input_size(height, width):
    model = SegNet(SegNetConfig(in_channels=3, num_classes=5, base_channels=8, depth=3)).eval()
    assert model(torch.randn(2, 3, height, width)).shape == (2, 5, height, width)


def test_it_learns_a_simple_segmentation():
    torch.manual_seed(0)
    model = SegNet(SegNetConfig(num_classes=2, base_channels=8, depth=2, dropout=0.0))
    images = torch.rand(4, 1, 12, 12) * 2 - 1
    masks = (images[:, 0] > 0.2).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (model.eval()(images).argmax(1) == masks).float().mean()
    assert accuracy > 0.95


def test_depth_sets_the_number_of_resolution_levels():
    shallow = SegNet(SegNetConfig(base_channels=8, depth=2))
    deep = SegNet(SegNetConfig(base_channels=8, depth=4))
    assert len(shallow.encoder) == 2 and len(deep.encoder) == 4 and len(deep.decoder) == 3
    assert deep.num_parameters() > shallow.num_parameters()


def test_invalid_config_names_the_problem():
    with pytest.raises(ValueError, match="num_classes"):
        SegNetConfig(num_classes=1)
    with pytest.raises(ValueError, match="dropout"):
        SegNetConfig(dropout=1.0)
