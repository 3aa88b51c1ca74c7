"""Restormer blocks and the fusion denoiser: shapes at any size, conditioning, both sources used."""

import pytest
import torch

from meddiff.nets.restormer import (
    ChannelAttention,
    FusionDenoiser,
    FusionNetConfig,
    ModalityCrossAttention,
    RestormerBlock,
)

TINY = dict(channels=[4, 8, 8], heads=[2, 2], blocks=[1, 1], emb_dim=8)


def test_channel_attention_is_a_softmax_over_channels_and_works_at_any_size():
    attn = ChannelAttention(8, heads=2)
    for h, w in [(5, 7), (33, 18)]:
        assert attn(torch.randn(2, 8, h, w)).shape == (2, 8, h, w)
    cross = ChannelAttention(8, heads=2, cross=True)
    x, context = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    assert not torch.allclose(cross(x, context), cross(x, context + 1))  # keys and values come from context
    with pytest.raises(ValueError, match="context"):
        cross(x)
    with pytest.raises(ValueError, match="divisible"):
        ChannelAttention(6, heads=4)


def test_time_modulated_block_starts_as_the_plain_block():
    torch.manual_seed(0)
    block = RestormerBlock(8, heads=2, emb_dim=4)
    x, emb = torch.randn(2, 8, 6, 5), torch.randn(2, 4)
    plain = block.modulation
    out = block(x, emb)
    block.modulation = None
    torch.testing.assert_close(out, block(x))
    block.modulation = plain
    torch.nn.init.normal_(plain.weight)
    assert not torch.allclose(block(x, emb), out)


def test_modality_cross_attention_merges_both_modalities():
    cross = ModalityCrossAttention(8, heads=2)
    a, b = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    out = cross(a, b)
    assert out.shape == a.shape
    assert not torch.allclose(cross(a, b + 1), out)


def test_denoiser_keeps_any_input_size_and_uses_time_and_both_sources():
    torch.manual_seed(0)
    net = FusionDenoiser(FusionNetConfig(**TINY))
    for p in net.parameters():  # leave the zero-initialised start, so every path matters
        torch.nn.init.normal_(p, std=0.2)
    x, cond, t = torch.randn(2, 1, 25, 30), torch.randn(2, 2, 25, 30), torch.tensor([10, 500])
    out = net(x, t, cond_image=cond)
    assert out.shape == (2, 1, 25, 30)
    assert not torch.allclose(net(x, t + 100, cond_image=cond), out)
    for channel in (0, 1):
        changed = cond.clone()
        changed[:, channel] += 1
        assert not torch.allclose(net(x, t, cond_image=changed), out)
    with pytest.raises(ValueError, match="cond_image"):
        net(x, t)
    assert net.flops(16, 16) > 0 and net.num_parameters() > 0


def test_config_is_checked():
    with pytest.raises(ValueError, match="3 entries"):
        FusionNetConfig(channels=[4, 8])
    with pytest.raises(ValueError, match="divisible"):
        FusionNetConfig(channels=[4, 6, 8], heads=[4, 2])
    with pytest.raises(ValueError, match="two source"):
        FusionNetConfig(cond_channels=3)
