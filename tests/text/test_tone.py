"""Tone words: dark / bright / low / high contrast variants of training images, named in their captions."""

import pytest
import torch

from meddiff.text.tone import TONE_WORDS, ToneConfig, all_variants, apply_tone, tone_variants

CONFIG = ToneConfig(prob=0.5)


def _ramp() -> torch.Tensor:
    """Two 1-channel images: a ramp from black to white, and its mirror image."""
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 1, 8, 16)
    return torch.cat([ramp, ramp.flip(-1)])


def test_dark_and_bright_move_the_mean_and_keep_black_and_white():
    images = _ramp()
    dark, bright = apply_tone(images, "dark", CONFIG), apply_tone(images, "bright", CONFIG)
    assert dark.mean() < images.mean() < bright.mean()
    for out in (dark, bright):
        assert torch.allclose(out[..., 0][0], images[..., 0][0]) and torch.allclose(out[..., -1][0], images[..., -1][0])


def test_contrast_words_scale_the_spread_around_each_images_mean():
    images = 0.5 * _ramp()
    low, high = apply_tone(images, "low contrast", CONFIG), apply_tone(images, "high contrast", CONFIG)
    assert torch.allclose(low.std(), images.std() / CONFIG.contrast, atol=1e-5)
    assert torch.allclose(high.std(), images.std() * CONFIG.contrast, atol=1e-5)
    assert torch.allclose(low.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-6)


def test_an_unknown_word_or_a_gamma_below_one_is_refused():
    with pytest.raises(ValueError, match="unknown tone word"):
        apply_tone(_ramp(), "sharp", CONFIG)
    with pytest.raises(ValueError, match="gamma"):
        ToneConfig(gamma=0.8)


def test_variants_name_the_change_in_the_caption_and_change_nothing_else():
    images, captions = _ramp().repeat(8, 1, 1, 1), [f"ramp {i}" for i in range(16)]
    out, out_captions = tone_variants(images, captions, ToneConfig(prob=1.0), torch.Generator().manual_seed(0))
    for i, caption in enumerate(out_captions):
        word = caption.removeprefix(f"ramp {i}, ")
        assert word in TONE_WORDS
        assert torch.equal(out[i : i + 1], apply_tone(images[i : i + 1], word, CONFIG))
    assert len({c.split(", ")[1] for c in out_captions}) > 1
    same, same_captions = tone_variants(images, captions, ToneConfig(prob=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(same, images) and same_captions == captions


def test_all_variants_follow_the_originals():
    images, captions = _ramp(), ["a", "b"]
    out, out_captions = all_variants(images, captions, CONFIG)
    assert out.shape == (10, 1, 8, 16) and torch.equal(out[:2], images)
    assert out_captions == [
        "a",
        "b",
        "a, dark",
        "b, dark",
        "a, bright",
        "b, bright",
        "a, low contrast",
        "b, low contrast",
        "a, high contrast",
        "b, high contrast",
    ]
