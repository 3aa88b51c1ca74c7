"""Intensity words a text model can learn: random dark / bright / low-contrast / high-contrast variants of the
training images, with the word added to their caption.

The brightness and contrast of real training images rarely vary enough, or consistently enough with their
captions, for a small model to learn what "bright" or "high contrast" means, so these edits could not be
asked for. With ``tone.prob > 0`` a text model sees each training image now and then as one of four
variants and its caption ends in the matching word, e.g. "T1-weighted brain MRI, axial slice, ..., high
contrast". Prompts may then end in any of ``TONE_WORDS``. Label maps are not changed.

On the [0, 1] intensity scale: ``dark`` = u ** gamma, ``bright`` = u ** (1 / gamma) (black and white stay
black and white, as windowing a scan would); ``low contrast`` / ``high contrast`` scale each image's
deviations from its own mean by 1 / contrast and contrast (clipped to [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TONE_WORDS = ("dark", "bright", "low contrast", "high contrast")


@dataclass
class ToneConfig:
    """The ``tone:`` section of a textgen config.

    prob:     share of training samples turned into one of the four variants (0: off)
    gamma:    the dark / bright gamma (> 1)
    contrast: the high-contrast factor on deviations from the image mean (> 1; low contrast: its inverse)
    """

    prob: float = 0.0
    gamma: float = 1.8
    contrast: float = 1.6

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"tone.prob must be in [0, 1], got {self.prob}")
        if self.gamma <= 1.0 or self.contrast <= 1.0:
            raise ValueError(f"tone.gamma and tone.contrast must be > 1, got {self.gamma} and {self.contrast}")


def apply_tone(images: torch.Tensor, word: str, config: ToneConfig) -> torch.Tensor:
    """The ``word`` variant (one of ``TONE_WORDS``) of ``[N, C, H, W]`` images in [-1, 1]."""
    unit = ((images.float() + 1) / 2).clamp(0, 1)
    if word == "dark":
        out = unit**config.gamma
    elif word == "bright":
        out = unit ** (1 / config.gamma)
    elif word in ("low contrast", "high contrast"):
        factor = config.contrast if word == "high contrast" else 1 / config.contrast
        mean = unit.mean(dim=(1, 2, 3), keepdim=True)
        out = (mean + (unit - mean) * factor).clamp(0, 1)
    else:
        raise ValueError(f"unknown tone word {word!r}; expected one of {', '.join(TONE_WORDS)}")
    return (out * 2 - 1).to(images.dtype)


def tone_variants(
    images: torch.Tensor, captions: Sequence[str], config: ToneConfig, generator: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """A training batch with ``config.prob`` of its samples (drawn by ``generator``) turned into a random
    variant and their captions extended by ``", <word>"``; the rest unchanged."""
    chosen = torch.rand(len(captions), generator=generator) < config.prob
    words = torch.randint(len(TONE_WORDS), (len(captions),), generator=generator)
    images, captions = images.clone(), list(captions)
    for k, word in enumerate(TONE_WORDS):
        rows = torch.nonzero(chosen & (words == k))[:, 0]
        if len(rows):
            images[rows] = apply_tone(images[rows], word, config)
            for i in rows.tolist():
                captions[i] = f"{captions[i]}, {word}"
    return images, captions


def all_variants(images: torch.Tensor, captions: Sequence[str], config: ToneConfig) -> tuple[torch.Tensor, list[str]]:
    """The images and captions followed by every variant of each (5x as many), e.g. to train the
    text-alignment network on the tone words too."""
    out_images, out_captions = [images], list(captions)
    for word in TONE_WORDS:
        out_images.append(apply_tone(images, word, config))
        out_captions += [f"{c}, {word}" for c in captions]
    return torch.cat(out_images), out_captions
