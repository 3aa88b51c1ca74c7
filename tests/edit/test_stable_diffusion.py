"""The Stable Diffusion route: Imagic's three stages on a local diffusers checkpoint (a tiny one built
from configs, since real weights cannot be downloaded here), image and label map on one canvas."""

import json

import pytest
import torch
from tests.text.makers import tiny_stable_diffusion

from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.edit.imagic import ImagicConfig, imagic
from meddiff.edit.stable_diffusion import (
    StableDiffusionEditModel,
    is_stable_diffusion,
    native_size,
    nearest_class,
    noise_config,
)
from meddiff.errors import UserError

FEW = ImagicConfig(
    embed_steps=3,
    embed_lr=1e-3,
    finetune_steps=3,
    finetune_lr=1e-4,
    batch_size=1,
    alphas=[0.0, 1.2],
    seeds=2,
    sampler=SamplerConfig(name="ddim", steps=3, guidance_scale=7.5, clip_sample=False),
)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_a_saved_pipeline_folder_is_recognised_with_its_size_and_schedule(sd_dir):
    assert is_stable_diffusion(sd_dir) and native_size(sd_dir) == 32
    noise = noise_config(sd_dir / "scheduler" / "scheduler_config.json")
    assert (noise.beta_schedule, noise.beta_start, noise.beta_end, noise.prediction_type) == (
        "scaled_linear",
        0.00085,
        0.012,
        "epsilon",
    )


def test_all_three_stages_run_on_image_and_mask(sd_dir):
    model = StableDiffusionEditModel(sd_dir, num_classes=3)
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[:, 8:20, 4:12], mask[:, 20:, 20:] = 1, 2
    x0 = model.encode_input(image, mask)
    assert x0.shape == (1, 4, 16, 32)  # image and mask side by side in latent space
    result = imagic(model, image, mask, "an instrument at the centre", FEW)
    assert len(result.embed_losses) == 3 and len(result.finetune_losses) == 3
    assert set(result.seconds) == {"A_embedding", "B_finetune", "C_sampling"}
    changed = [k for k, v in model.unet.state_dict().items() if not torch.equal(v, weights[k])]
    assert len(changed) > 0  # stage B fine-tuned the UNet
    for alpha in FEW.alphas:
        assert result.images[alpha].shape == (2, 3, 32, 32) and result.images[alpha].abs().max() <= 1
        assert result.masks[alpha].shape == (2, 32, 32) and result.masks[alpha].max() <= 2


def test_a_drawn_mask_decodes_to_its_class_ids_despite_colour_noise(sd_dir):
    colours = StableDiffusionEditModel(sd_dir, num_classes=4).colours
    ids = torch.randint(0, 4, (2, 8, 8))
    drawn = colours[ids].permute(0, 3, 1, 2) + 0.05 * torch.randn(2, 3, 8, 8)
    assert torch.equal(nearest_class(drawn, colours), ids)


def test_unsupported_or_incomplete_checkpoints_are_refused(sd_dir, tmp_path):
    config = json.loads((sd_dir / "scheduler" / "scheduler_config.json").read_text())
    (tmp_path / "s.json").write_text(json.dumps({**config, "prediction_type": "sample"}))
    with pytest.raises(UserError, match="prediction type 'sample'"):
        noise_config(tmp_path / "s.json")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    (tmp_path / "half" / "vae").mkdir()
    with pytest.raises(UserError, match="no text_encoder/"):
        StableDiffusionEditModel(tmp_path / "half")
