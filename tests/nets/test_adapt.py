"""Adapting a pretrained unconditional UNet: before training the adapted model predicts what the backbone
predicts, whatever the condition, and its new parts still learn."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from meddiff.errors import UserError
from meddiff.nets.adapt import adapt_unet
from meddiff.nets.unet import UNet, UNetConfig

BACKBONE = UNetConfig(base_channels=16, channel_mults=[1, 2], blocks_per_level=1, attention_levels=[1], norm_groups=8)


def trained_looking(config: UNetConfig = BACKBONE) -> UNet:
    """A backbone whose every weight is non-trivial (a fresh UNet's zero-initialised output convolution
    would make any two models agree)."""
    torch.manual_seed(0)
    model = UNet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(batch=2, size=16):
    torch.manual_seed(1)
    return torch.randn(batch, 1, size, size), torch.tensor([10, 700])


def one_hot_map(classes=3, batch=2, size=16):
    ids = torch.randint(0, classes, (batch, size, size))
    return F.one_hot(ids, classes).permute(0, 3, 1, 2).float()


def test_a_spade_model_started_from_a_backbone_predicts_what_it_predicts_for_any_label_map():
    backbone = trained_looking()
    adapted, _ = adapt_unet(backbone, dataclasses.replace(BACKBONE, spade_classes=3))
    x, t = inputs()
    with torch.no_grad():
        expected = backbone(x, t)
        assert expected.abs().mean() > 0.01
        for label_map in (one_hot_map(), torch.zeros(2, 3, 16, 16)):  # a mask, and the dropped mask
            assert torch.allclose(adapted(x, t, label_map=label_map), expected, atol=1e-5)


def test_concatenated_conditions_and_extra_output_channels_start_silent():
    backbone = trained_looking()
    config = dataclasses.replace(BACKBONE, in_channels=3, out_channels=3, cond_channels=2)  # a joint model's code
    adapted, adapters = adapt_unet(backbone, config)
    x, t = inputs()
    joint = torch.cat([x, torch.randn(2, 2, 16, 16)], dim=1)
    with torch.no_grad():
        out = adapted(joint, t, cond_image=torch.randn(2, 2, 16, 16))
    assert torch.allclose(out[:, :1], backbone(x, t), atol=1e-5)
    assert torch.equal(out[:, 1:], torch.zeros_like(out[:, 1:]))
    assert {"input_conv.weight", "out.2.weight", "out.2.bias"} <= adapters


def test_text_and_class_conditioning_start_silent():
    backbone = trained_looking()
    adapted, _ = adapt_unet(backbone, dataclasses.replace(BACKBONE, context_dim=8, num_classes=4))
    x, t = inputs()
    with torch.no_grad():
        out = adapted(x, t, context=torch.randn(2, 5, 8), class_labels=torch.tensor([1, 4]))
    assert torch.allclose(out, backbone(x, t), atol=1e-5)


def test_the_adapters_are_exactly_the_new_parts_and_they_receive_gradients_at_step_zero():
    adapted, adapters = adapt_unet(trained_looking(), dataclasses.replace(BACKBONE, spade_classes=3))
    assert adapters and all(".norm" in name and name.split(".")[-2] in ("0", "gamma", "beta") for name in adapters)
    x, t = inputs()
    adapted(x, t, label_map=one_hot_map()).square().mean().backward()
    gamma = dict(adapted.named_parameters())["decoder.0.res.norm1.gamma.weight"]
    assert gamma.grad.abs().sum() > 0  # zero-initialised, yet it learns from the first step


def test_a_different_architecture_is_refused_naming_the_field():
    with pytest.raises(UserError, match=r"model\.base_channels"):
        adapt_unet(trained_looking(), dataclasses.replace(BACKBONE, base_channels=32, spade_classes=3))


def test_a_conditioned_backbone_is_refused():
    conditioned = trained_looking(dataclasses.replace(BACKBONE, num_classes=2))
    with pytest.raises(UserError, match="unconditional"):
        adapt_unet(conditioned, dataclasses.replace(BACKBONE, num_classes=2, spade_classes=3))
