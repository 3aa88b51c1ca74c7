"""SR3 super-resolution: the conditioning it learns from, training, any-size upscaling, label-aware runs."""

import dataclasses

import pytest
import torch

import meddiff
from meddiff.config import from_dict
from meddiff.data.build import DataConfig
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.nets.unet import UNetConfig
from meddiff.tasks import upscale
from meddiff.train.engine import TrainConfig

TRAIN = dict(batch_size=4, lr=2e-3, warmup_steps=5, ema_decay=0.9, log_every=1, sample_every=10_000)


def tiny_upscale_config(steps: int = 30, **changes) -> upscale.UpscaleConfig:
    """A 2x model on 32-px brain slices small enough to train in seconds."""
    config = upscale.UpscaleConfig(
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32}),
        factor=2,
        model=UNetConfig(
            base_channels=16, channel_mults=[1, 2], blocks_per_level=1, attention_levels=[], norm_groups=8
        ),
        train=TrainConfig(steps=steps, checkpoint_every=steps, **TRAIN),
        sampler=SamplerConfig(name="ddim", steps=4),
        grid_samples=2,
    )
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def label_aware_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "upscale"
    upscale.fit(tiny_upscale_config(), run, progress=False)
    return run


def test_downsampling_then_bicubic_keeps_the_size_and_a_smooth_image_close():
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    smooth = (0.8 * torch.sin(2 * x) * torch.cos(y))[None, None]
    low = upscale.downsample(smooth, 4)
    assert low.shape[-2:] == (8, 8)
    restored = upscale.bicubic(low, (32, 32))
    assert restored.shape == smooth.shape
    assert (restored - smooth).abs().mean() < 0.02


def test_conditioning_is_clean_at_level_zero_and_noised_above_it_with_the_level_as_a_channel():
    diffusion = Diffusion(NoiseConfig(time_input="noise_level"))
    image = torch.full((2, 1, 8, 8), 0.5)
    noise = torch.randn(2, 1, 8, 8)
    cond = upscale.conditioning(image, torch.tensor([0.0, 0.5]), noise, diffusion, None)
    assert cond.cond_image.shape == (2, 2, 8, 8)
    assert torch.equal(cond.cond_image[0, 0], image[0, 0])  # level 0: the bicubic image itself
    alpha_bar = diffusion.alphas_cumprod[round(0.5 * 999)]
    expected = alpha_bar.sqrt() * 0.5 + (1 - alpha_bar).sqrt() * noise[1, 0]
    assert torch.allclose(cond.cond_image[1, 0], expected, atol=1e-6)
    assert torch.equal(cond.cond_image[:, 1, 0, 0], torch.tensor([0.0, 0.5]))


def test_masks_are_enlarged_by_nearest_neighbour():
    masks = torch.tensor([[[0, 1], [2, 255]]])
    big = upscale.enlarge_masks(masks, (4, 4))
    assert big.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]]


def test_label_aware_training_sees_the_blocky_map_that_upscaling_gets(tmp_path, monkeypatch):
    seen = []
    record = upscale.conditioning

    def recording(upsampled, levels, noise, diffusion, label_map):
        seen.append(label_map)
        return record(upsampled, levels, noise, diffusion, label_map)

    monkeypatch.setattr(upscale, "conditioning", recording)
    upscale.fit(tiny_upscale_config(steps=2), tmp_path / "run", progress=False)
    maps = [m for m in seen if m is not None]
    assert maps
    for label_map in maps:  # one-hot [B, K, 32, 32], constant over every 2x2 block of the 16-px map
        blocky = label_map[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        assert torch.equal(label_map, blocky)


def test_the_factor_must_divide_the_training_crop():
    with pytest.raises(ValueError, match="multiple of factor"):
        tiny_upscale_config(factor=3)


def test_a_trained_model_upscales_closer_to_the_truth_than_its_untrained_start(tmp_path):
    from meddiff.data.build import build_dataset

    run = tmp_path / "run"
    upscale.fit(tiny_upscale_config(steps=150, label_aware=False), run, progress=False)
    model = meddiff.load(run)
    assert isinstance(model, upscale.Upscaler) and model.factor == 2 and model.class_names is None
    truth = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32})).images[40:100:10]
    low = upscale.downsample(truth, 2)
    out = model.upscale(low, steps=10, seed=0)
    assert out.images.shape == truth.shape and out.masks is None
    error = (out.images - truth).abs().mean()
    bicubic_error = (upscale.bicubic(low, (32, 32)) - truth).abs().mean()
    assert error < 2 * bicubic_error  # an untrained model outputs noise: error ~ 0.8, bicubic ~ 0.05
    again = model.upscale(low[2:3], steps=10, seed=2)
    assert torch.allclose(again.images[0], out.images[2], atol=1e-5)  # image i depends on seed + i only


def test_a_label_aware_model_needs_masks_and_returns_them_enlarged(label_aware_run):
    model = meddiff.load(label_aware_run)
    assert model.class_names and len(model.class_names) == 4
    low = torch.zeros(2, 1, 12, 20)  # any size, not the training crop
    with pytest.raises(UserError, match="label-aware"):
        model.upscale(low, steps=2)
    masks = torch.randint(0, 4, (2, 12, 20))
    out = model.upscale(low, masks, steps=2)
    assert out.images.shape == (2, 1, 24, 40)
    assert torch.equal(out.masks, upscale.enlarge_masks(masks, (24, 40)))
    with pytest.raises(UserError, match="outside this model's classes"):
        model.upscale(low, torch.full((2, 12, 20), 7), steps=2)
    with pytest.raises(UserError, match="outside the levels this model was trained on"):
        model.upscale(low, masks, steps=2, aug_level=0.5)  # trained with max_aug_level 0.2


def test_run_reads_a_dataset_folder_of_mixed_sizes_and_writes_one(label_aware_run, tmp_path):
    import numpy as np
    from PIL import Image

    source = tmp_path / "pairs"
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
    for name, (h, w) in {"a": (16, 16), "b": (10, 14), "c": (16, 16)}.items():
        Image.fromarray(np.full((h, w), 100, np.uint8)).save(source / "images" / f"{name}.png")
        Image.fromarray(np.full((h, w), 2, np.uint8)).save(source / "masks" / f"{name}.png")
    out = upscale.run(label_aware_run, source, tmp_path / "big", SamplerConfig(name="ddim", steps=2), progress=False)
    assert Image.open(out / "images" / "b.png").size == (28, 20)
    assert np.all(np.array(Image.open(out / "masks" / "b.png")) == 2)
    manifest = (out / "manifest.json").read_text()
    assert '"source": "b"' in manifest and '"factor": 2' in manifest
    assert (out / "grid.png").is_file()


def test_run_refuses_a_mask_of_another_size_before_writing_anything(label_aware_run, tmp_path):
    import numpy as np
    from PIL import Image

    source = tmp_path / "pairs"
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(source / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(source / "masks" / "a.png")
    with pytest.raises(UserError, match=r"a\.png: mask is"):
        upscale.run(label_aware_run, source, tmp_path / "big", SamplerConfig(steps=2), progress=False)
    assert not (tmp_path / "big").exists()


def test_the_cascade_upscales_a_joint_generators_pairs_and_records_both_stages(label_aware_run, tmp_path):
    import json

    import numpy as np
    from PIL import Image
    from tests.conftest import tiny_generate_config

    from meddiff.tasks import generate

    generator = tmp_path / "generator"
    generate.fit(tiny_generate_config(steps=2), generator, progress=False)
    stages = upscale.Cascade(label_aware_run, steps=2, aug_level=0.1)
    sampler = SamplerConfig(name="ddim", steps=2)
    out = generate.run(generator, 3, tmp_path / "pairs", sampler, seed=4, progress=False, cascade=stages)
    plain = generate.run(generator, 3, tmp_path / "plain", sampler, seed=4, progress=False)
    assert Image.open(out / "images" / "sample_000004.png").size == (64, 64)
    big_mask = np.array(Image.open(out / "masks" / "sample_000004.png"))
    assert np.array_equal(big_mask[::2, ::2], np.array(Image.open(plain / "masks" / "sample_000004.png")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["upscaler"] == manifest["files"][0]["upscale"]["checkpoint"]
    assert manifest["files"][0]["upscale"] | {"checkpoint": None} == {
        "checkpoint": None,
        "factor": 2,
        "steps": 2,
        "aug_level": 0.1,
    }


def test_the_cascade_refuses_a_label_aware_upscaler_of_other_classes(label_aware_run, tmp_path):
    model = meddiff.load(label_aware_run)
    stage = upscale.Cascade(label_aware_run, steps=2)
    with pytest.raises(UserError, match="trained on classes"):
        upscale.cascade(model, stage, torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8).long(), ["a", "b"], [0])
    with pytest.raises(UserError, match="makes no label maps"):
        upscale.cascade(model, stage, torch.zeros(1, 1, 8, 8), None, None, [0])
