"""Imagic's three stages on meddiff's text-conditioned model (the briefly trained 32 px brain run)."""

from dataclasses import replace

import pytest
import torch

from meddiff.data.samples import brain_mri
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.edit.imagic import ImagicConfig, imagic, optimise_embedding, reconstruction_loss, sample_edits
from meddiff.edit.meddiff_model import MeddiffEditModel
from meddiff.metrics.image import psnr

PROMPT = "T1-weighted brain MRI, axial slice, axial level 3/4, large white matter at centre"
FAST = SamplerConfig(name="ddim", steps=10, guidance_scale=1.0)


@pytest.fixture(scope="module")
def brain_slice():
    data = brain_mri(32, levels=4)
    return data.images[60:61], data.masks[60:61].long()


def test_stage_a_lowers_the_reconstruction_loss_and_leaves_the_model_alone(trained_textgen, brain_slice):
    model = MeddiffEditModel.load(trained_textgen)
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    x0 = model.encode_input(*brain_slice)
    target = model.encode_prompt(PROMPT)
    e_opt, losses = optimise_embedding(
        model, x0, target, ImagicConfig(embed_steps=15, embed_lr=5e-2), torch.Generator().manual_seed(0)
    )
    assert len(losses) == 15 and e_opt.shape == target.tokens.shape
    assert reconstruction_loss(model, x0, e_opt, target.mask) < reconstruction_loss(
        model, x0, target.tokens, target.mask
    )
    assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())


def test_alpha_zero_after_fine_tuning_reconstructs_the_input(trained_textgen, brain_slice):
    image, mask = brain_slice
    fidelity = {}
    for steps in (0, 100):  # without and with stage B
        model = MeddiffEditModel.load(trained_textgen)
        config = ImagicConfig(
            embed_steps=5, finetune_steps=steps, finetune_lr=3e-3, alphas=[0.0], seeds=2, sampler=FAST
        )
        result = imagic(model, image, mask, PROMPT, config)
        fidelity[steps] = psnr(result.images[0.0], image.expand(2, -1, -1, -1)).item()
    # about 9 -> 16 dB for this barely trained 32 px model; benchmarks/editing.py measures the real one
    assert fidelity[100] > fidelity[0] + 5


def test_editing_an_image_and_mask_gives_images_and_valid_class_ids(trained_textgen, brain_slice):
    image, mask = brain_slice
    model = MeddiffEditModel.load(trained_textgen)
    config = ImagicConfig(embed_steps=2, finetune_steps=2, alphas=[0.8, 1.6], seeds=2, interp="slerp", sampler=FAST)
    result = imagic(model, image, mask, PROMPT, config)
    assert set(result.seconds) == {"A_embedding", "B_finetune", "C_sampling"}
    for alpha in config.alphas:
        assert result.images[alpha].shape == (2, 1, 32, 32) and result.images[alpha].abs().max() <= 1
        masks = result.masks[alpha]
        assert masks.shape == (2, 32, 32) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(result.images[0.8], result.images[1.6])  # same seeds, other embedding


def test_stage_c_batches_alphas_without_changing_the_samples(trained_textgen, brain_slice):
    model = MeddiffEditModel.load(trained_textgen)
    target = model.encode_prompt(PROMPT)
    e_opt = target.tokens + 0.1 * torch.randn_like(target.tokens)
    config = ImagicConfig(alphas=[0.0, 1.0, 1.5], seeds=2, sampler=SamplerConfig(name="ddim", steps=3))
    one_alpha_per_call = sample_edits(model, e_opt, target, (5, 32, 32), replace(config, sample_batch=2))
    all_in_one_call = sample_edits(model, e_opt, target, (5, 32, 32), config)
    for alpha in config.alphas:
        assert torch.allclose(one_alpha_per_call[alpha], all_in_one_call[alpha], atol=1e-4)
