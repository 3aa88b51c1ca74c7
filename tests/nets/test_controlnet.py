"""A ControlNet over meddiff's UNet: the controlled model starts as the pretrained UNet and its zero
convolutions learn from the first step."""

import torch
from tests.nets.test_adapt import BACKBONE, inputs, one_hot_map, trained_looking

from meddiff.nets.controlnet import ControlledUNet


def test_a_controlled_unet_predicts_what_its_backbone_predicts_before_training():
    backbone = trained_looking()
    controlled = ControlledUNet.from_backbone(backbone, hint_channels=3).eval()
    x, t = inputs()
    with torch.no_grad():
        assert torch.allclose(controlled(x, t, label_map=one_hot_map()), backbone(x, t), atol=1e-5)


def test_the_trainable_copy_starts_from_the_backbones_encoder():
    backbone = trained_looking()
    controlled = ControlledUNet.from_backbone(backbone, hint_channels=3)
    assert torch.equal(controlled.control.trunk.encoder[0].res.conv1.weight, backbone.encoder[0].res.conv1.weight)
    assert torch.equal(controlled.base.decoder[0].res.conv1.weight, backbone.decoder[0].res.conv1.weight)


def test_the_zero_convolutions_receive_gradients_at_step_zero_on_an_odd_sized_image():
    controlled = ControlledUNet.from_backbone(trained_looking(), hint_channels=3)
    x, t = inputs(size=15)
    out = controlled(x, t, label_map=one_hot_map(size=15))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in controlled.control.skip_convs)
    assert controlled.control.middle_conv.weight.grad.abs().sum() > 0


def test_the_control_branch_has_the_configs_skips():
    controlled = ControlledUNet(BACKBONE, hint_channels=2)
    assert len(controlled.control.skip_convs) == len(controlled.base.skip_channels)
    assert len(controlled.control.trunk.decoder) == 0
