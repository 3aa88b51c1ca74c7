"""The UNet: shapes for every conditioning kind, that each condition is used, feature hooks, config, cost."""

import json

import pytest
import torch
import yaml

from meddiff.config import from_dict, to_dict
from meddiff.nets.unet import UNet, UNetConfig

SMALL = dict(base_channels=16, channel_mults=[1, 2, 2], attention_levels=[1], norm_groups=8)
KINDS = {
    "none": {},
    "concat": dict(cond_channels=2),
    "spade": dict(spade_classes=4),
    "cross_attention": dict(context_dim=12),
    "class_embedding": dict(num_classes=3),
    "all": dict(cond_channels=1, spade_classes=4, context_dim=12, num_classes=3),
}


def _perturbed(config: UNetConfig) -> UNet:
    """A UNet whose zero-initialised output layers are nudged, so conditions visibly reach the output."""
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(32, 32), (30, 45)])
def test_output_has_input_shape_for_every_conditioning(kind, size):
    model = UNet(UNetConfig(in_channels=3, out_channels=2, **SMALL, **KINDS[kind]))
    args, kwargs = model.example_inputs(2, *size)
    assert model(*args, **kwargs).shape == (2, 2, *size)


@pytest.mark.parametrize("key", ["cond_image", "label_map", "context", "class_labels"])
def test_each_condition_changes_the_output(key):
    model = _perturbed(UNetConfig(**SMALL, **KINDS["all"]))
    args, kwargs = model.example_inputs(2, 16, 16)
    other = dict(kwargs)
    if key == "class_labels":
        other[key] = (kwargs[key] + 1) % 3
    elif key == "label_map":
        other[key] = kwargs[key].roll(1, dims=1)
    else:
        other[key] = torch.randn_like(kwargs[key])
    with torch.no_grad():
        assert not torch.allclose(model(*args, **kwargs), model(*args, **other), atol=1e-5)


def test_pooled_text_reaches_the_time_embedding_and_ignores_padding_tokens():
    pooled = _perturbed(UNetConfig(**SMALL, context_dim=12))
    assert pooled.context_embed is not None
    assert UNet(UNetConfig(**SMALL, context_dim=12, context_pooled=False)).context_embed is None
    args, kwargs = pooled.example_inputs(2, 16, 16)
    kwargs["context_mask"] = torch.tensor([[True] * 5 + [False] * 3] * 2)
    padded = dict(kwargs, context=kwargs["context"].clone())
    padded["context"][:, 5:] = torch.randn(2, 3, 12)
    emb = pooled.context_embed[0]  # the pooled path alone moves the output
    with torch.no_grad():
        assert torch.allclose(pooled(*args, **kwargs), pooled(*args, **padded), atol=1e-5)
        before = pooled(*args, **kwargs)
        emb.bias.add_(1.0)
        assert not torch.allclose(pooled(*args, **kwargs), before, atol=1e-5)


def test_spade_enters_decoder_only_so_encoder_sees_just_the_image():
    model = UNet(UNetConfig(**SMALL, spade_classes=4))
    assert not any("norm1.shared" in name for name, _ in model.encoder.named_parameters())
    assert all(block.res.spade for block in model.decoder) and all(block.res.spade for block in model.middle)


def test_missing_condition_is_a_clear_error():
    model = UNet(UNetConfig(**SMALL, spade_classes=4))
    args, _ = model.example_inputs(1, 16, 16)
    with pytest.raises(ValueError, match="label_map"):
        model(*args)


def test_decoder_features_match_the_full_forward_and_report_their_shapes():
    model = _perturbed(UNetConfig(**SMALL))
    args, kwargs = model.example_inputs(2, 30, 45)
    blocks = [0, 4, model.num_decoder_blocks - 1]
    hooked = {}
    handles = [model.decoder[b].register_forward_hook(lambda m, i, o, b=b: hooked.__setitem__(b, o)) for b in blocks]
    with torch.no_grad():
        model(*args, **kwargs)
        features = model.decoder_features(*args, blocks=blocks, **kwargs)
    for h in handles:
        h.remove()
    info = model.decoder_block_info()
    for b, feature in zip(blocks, features, strict=True):
        channels, factor = info[b]
        assert feature.shape == (2, channels, -(-30 // factor), -(-45 // factor))
        assert torch.equal(feature, hooked[b][..., : feature.shape[2], : feature.shape[3]])


def test_decoder_block_numbering_follows_guided_diffusion():
    model = UNet(UNetConfig(**SMALL, blocks_per_level=2))  # 3 levels x (2 + 1) output blocks
    assert model.num_decoder_blocks == 9
    assert [factor for _, factor in model.decoder_block_info()] == [4, 4, 2, 2, 2, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="outside"):
        model.decoder_features(*model.example_inputs(1, 16, 16)[0], blocks=[9])


def test_config_round_trips_through_yaml_and_json():
    config = UNetConfig(
        in_channels=5, out_channels=5, spade_classes=4, context_dim=384, channel_mults=[1, 2], attention_levels=[1]
    )
    assert from_dict(UNetConfig, yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config
    assert from_dict(UNetConfig, json.loads(json.dumps(to_dict(config)))) == config


def test_invalid_config_names_the_problem():
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channel_mults=[1, 2], attention_levels=[2])


def test_parameter_count_and_flops():
    model = UNet(UNetConfig(**SMALL))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    small, large = model.flops(32, 32), model.flops(64, 64)
    assert small > 10 * model.num_parameters()  # every weight is used at least at one pixel
    assert 3.5 < large / small < 4.5  # convolutions dominate: cost grows with the pixel count
