"""Text alignment: CLIP score from a local CLIP folder, and the domain network trained on captions."""

import pytest
import torch
from tests.text.makers import tiny_clip

from meddiff.errors import UserError
from meddiff.metrics.text_alignment import (
    AlignmentTrainConfig,
    ClipScore,
    DomainAlignmentScore,
    load_aligner,
    save_aligner,
    train_aligner,
)

QUICK = AlignmentTrainConfig(steps=60, batch_size=16, image_size=16, embed_dim=16)


def _captioned_squares(n: int = 24):
    """Images with a bright square on the left or on the right, captioned accordingly; the 'text' pooled
    embeddings are two fixed random unit vectors."""
    images = torch.full((n, 1, 16, 16), -1.0)
    left = torch.arange(n) % 2 == 0
    images[left, :, 4:12, 1:7] = 1.0
    images[~left, :, 4:12, 9:15] = 1.0
    images += 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    captions = ["square at left" if is_left else "square at right" for is_left in left]
    vectors = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    return images, vectors[(~left).long()], captions, vectors


class _FixedText:
    """A stand-in text encoder mapping the two captions to their vectors."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, prompts):
        from meddiff.text.encoders import TextEncoding

        pooled = torch.stack([self.vectors[int(p.endswith("right"))] for p in prompts])
        return TextEncoding(torch.zeros(len(prompts), 1, 1), torch.ones(len(prompts), 1, dtype=torch.bool), pooled)


@pytest.fixture(scope="module")
def squares_aligner():
    images, pooled, captions, vectors = _captioned_squares()
    net, losses = train_aligner(images, pooled, captions, QUICK)
    return net, losses, images, vectors


def test_domain_network_learns_which_caption_fits_an_image(squares_aligner):
    net, losses, images, vectors = squares_aligner
    assert losses[-1] < losses[0]
    score = DomainAlignmentScore(net, _FixedText(vectors))
    left, right = images[0::2], images[1::2]
    assert (score(left, "square at left") > score(left, "square at right")).all()
    assert (score(right, "square at right") > score(right, "square at left")).all()
    assert net.record["train_top1"] == 1.0 and "not a CLIP score" in score.measure


def test_domain_network_is_named_by_its_data_and_round_trips(squares_aligner, tmp_path):
    net, _, images, vectors = squares_aligner
    assert net.name.startswith("domain-text-")
    loaded = load_aligner(save_aligner(net, tmp_path / "aligner"))
    assert loaded.name == net.name and loaded.record["train_top1"] == net.record["train_top1"]
    assert torch.allclose(loaded.score(images, vectors[:1]), net.score(images, vectors[:1]))


def test_scores_are_clip_scores_form_of_the_embeddings_cosine(squares_aligner):
    net, _, images, vectors = squares_aligner
    tower = net.image_net
    with torch.no_grad():
        image = tower.projection(tower.encode(tower.prepare(images)))  # unnormalised embeddings
        text = net.text_proj(vectors[1:])
    cosine = torch.nn.functional.cosine_similarity(image, text.expand_as(image), dim=-1)
    assert torch.allclose(net.score(images, vectors[1:]), (100 * cosine).clamp(min=0), atol=1e-4)
    assert torch.allclose(net.similarity(images, vectors[1:]), 100 * cosine, atol=1e-4)  # the unclamped one


def test_domain_network_needs_two_different_captions():
    with pytest.raises(UserError, match="2 different captions"):
        train_aligner(torch.zeros(3, 1, 8, 8), torch.zeros(3, 4), ["same"] * 3, QUICK)


def test_clip_score_from_a_local_clip_folder(tmp_path):
    score = ClipScore(tiny_clip(tmp_path / "clip"))
    images = torch.rand(3, 1, 40, 40) * 2 - 1  # grey, any size: replicated to RGB, resized by the processor
    values = score(images, "an instrument at the centre")
    # transformers' own logits are logit_scale * cos: CLIP score is max(100 * cos, 0) of the same pair
    rgb = ((images + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
    inputs = score.processor(text=["an instrument at the centre"], images=list(rgb), return_tensors="pt")
    with torch.no_grad():
        out = score.model(**inputs)
    expected = (100 * out.logits_per_image[:, 0] / score.model.logit_scale.exp()).clamp(min=0)
    assert values.shape == (3,) and torch.allclose(values, expected, atol=1e-4)
    assert torch.allclose(values, score(images, "an instrument at the centre"))
    assert score.measure == "CLIP score (clip)"


def test_clip_score_refuses_a_folder_without_clip(tmp_path):
    with pytest.raises(UserError, match="no CLIP model"):
        ClipScore(tmp_path)
