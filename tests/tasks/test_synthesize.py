"""Mask-to-image synthesis: SPADE / concat conditioning, guidance, mask sources and the exported folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import tiny_generate_config

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.mask_sources import MaskAugment
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.errors import UserError
from meddiff.nets.unet import UNet
from meddiff.tasks import generate, synthesize

BRAIN = ["background", "other brain tissue", "grey matter", "white matter"]
DDIM = SamplerConfig(name="ddim", steps=4)


def tiny_synth_config(steps: int = 30, **changes) -> synthesize.SynthesizeConfig:
    """A SPADE mask-to-image model on the 32 px brain slices that trains in seconds."""
    data = {
        "data": {"kind": "brain_mri", "size": 32},
        "model": {
            "base_channels": 16,
            "channel_mults": [1, 2],
            "blocks_per_level": 1,
            "attention_levels": [1],
            "norm_groups": 8,
            "spade_hidden": 16,
        },
        "train": {
            "steps": steps,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 5,
            "ema_decay": 0.8,
            "log_every": 5,
            "sample_every": 10_000,
            "checkpoint_every": 10_000,
        },
        "sampler": {"name": "ddim", "steps": 4, "guidance_scale": 1.5},
        "grid_samples": 2,
    }
    data.update(changes)
    return from_dict(synthesize.SynthesizeConfig, data)


@pytest.fixture(scope="module")
def brain():
    return build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("synth") / "run"
    synthesize.fit(tiny_synth_config(), run, progress=False)
    return run


@pytest.fixture
def mask_folder(tmp_path, brain):
    folder = tmp_path / "masks"
    folder.mkdir()
    for i in (30, 70):
        Image.fromarray(brain.masks[i].numpy().astype(np.uint8)).save(folder / f"slice{i}.png")
    return folder


@pytest.mark.parametrize("mode, spade, concat", [("spade", 4, 0), ("concat", 0, 4), ("spade+concat", 4, 4)])
def test_mask_enters_through_spade_in_middle_and_decoder_or_at_the_input(mode, spade, concat):
    config, _ = synthesize.with_backbone(tiny_synth_config(mask_conditioning=mode), image_channels=1, num_classes=4)
    config = config.model
    assert (config.spade_classes, config.cond_channels, config.in_channels) == (spade, concat, 1)
    model = UNet(config)
    assert not any(block.res.spade for block in model.encoder if hasattr(block, "res"))
    for block in [*model.middle, *model.decoder]:
        assert block.res.spade == bool(spade)
        if spade:  # gamma/beta of each SPADE map the 4 label channels to the block's own channel count
            assert block.res.norm1.shared[0].in_channels == 4
            assert block.res.norm2.gamma.out_channels == block.res.conv1.out_channels
    masks = torch.randint(0, 4, (2, 32, 32))
    cond = synthesize.conditioning(masks, 4, mode)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([10, 900]), **cond.model_kwargs())
    assert out.shape == (2, 1, 32, 32)
    null = cond.null()  # guidance drops the whole map, whichever way it enters
    assert all(v is None or not v.any() for v in (null.label_map, null.cond_image))


def test_the_trained_model_follows_the_map(synth_run, brain):
    synth = synthesize.load(synth_run)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([500, 500])
    masks = brain.masks[[40, 40]].long()
    other = brain.masks[[90, 90]].long()
    with torch.no_grad():
        a = synth.model(x, t, **synthesize.conditioning(masks, 4, "spade").model_kwargs())
        b = synth.model(x, t, **synthesize.conditioning(other, 4, "spade").model_kwargs())
    assert (a - b).abs().mean() > 1e-3


def test_guidance_scale_zero_ignores_the_map_one_uses_it_and_above_one_extrapolates(synth_run, brain):
    synth = synthesize.load(synth_run)
    masks = brain.masks[[20, 100]].long()

    def draw(scale):
        settings = SamplerConfig(name="ddim", steps=4, guidance_scale=scale)
        return synthesize.synthesize(synth, masks, settings, seeds=[5, 5])

    unconditional, conditional, guided = draw(0.0), draw(1.0), draw(3.0)
    torch.testing.assert_close(unconditional[0], unconditional[1])  # same seed, map dropped: same image
    assert (conditional[0] - conditional[1]).abs().mean() > 0.05  # the map decides the image
    assert (guided - unconditional).abs().mean() > (conditional - unconditional).abs().mean()


def test_run_exports_a_folder_the_loader_reads_with_a_manifest_per_file(synth_run, mask_folder, tmp_path, brain):
    out = synthesize.run(
        synth_run,
        mask_folder,
        tmp_path / "out",
        SamplerConfig(name="dpm++", steps=3, guidance_scale=2.0),
        n_per_mask=2,
        seed=7,
        progress=False,
    )
    loaded = build_dataset(
        from_dict(DataConfig, {"kind": "image_mask_folder", "root": str(out), "size": 32, "class_names": BRAIN})
    )
    assert len(loaded) == 4 and loaded.names == ["slice30_0", "slice30_1", "slice70_0", "slice70_1"]
    assert torch.equal(loaded.masks[0].long(), brain.masks[30].long())  # the input mask is the pair's label
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["class_names"] == BRAIN and manifest["model"]["mask_conditioning"] == "spade"
    first = manifest["files"][0]
    assert {k: first[k] for k in ("sampler", "steps", "guidance", "seed")} == {
        "sampler": "dpm++",
        "steps": 3,
        "guidance": 2.0,
        "seed": 7,
    }
    assert first["model"].endswith("step_0000030") and first["source_mask"].endswith("slice30.png")
    assert [f["seed"] for f in manifest["files"]] == [7, 8, 9, 10]
    assert (out / "grid.png").is_file()


def test_each_output_is_reproducible_from_its_seed(synth_run, brain):
    synth = synthesize.load(synth_run)
    masks = brain.masks[[30, 60, 90]].long()
    together = synthesize.synthesize(synth, masks, DDIM, seeds=[1, 2, 3], batch_size=3)
    alone = synthesize.synthesize(synth, masks[2:], DDIM, seeds=[3])
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=1e-4)


def test_augmented_masks_are_recorded_in_the_manifest(synth_run, mask_folder, tmp_path):
    augment = MaskAugment(rotate=20, elastic=2, paste_classes=[3])
    out = synthesize.run(synth_run, mask_folder, tmp_path / "out", DDIM, augment=augment, progress=False)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files[0]["augment"]["paste_from"] == "slice70" and abs(files[0]["augment"]["rotate"]) <= 20
    masks = np.stack([np.array(Image.open(out / f["mask"])) for f in files])
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255}


def test_masks_sampled_by_the_joint_generator_are_a_mask_source(synth_run, tmp_path):
    generator_run = tmp_path / "joint"
    generate.fit(tiny_generate_config(steps=1), generator_run, progress=False)  # any generator of these classes
    out = synthesize.run(synth_run, generator_run, tmp_path / "out", DDIM, n_masks=2, seed=4, progress=False)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert [f["image"] for f in files] == ["images/generated_000004_0.png", "images/generated_000005_0.png"]
    assert "seed 4" in files[0]["source_mask"]


def test_bad_masks_are_refused_before_anything_is_written(synth_run, mask_folder, tmp_path):
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(mask_folder / "zz_bad.png")
    with pytest.raises(UserError, match=r"zz_bad\.png: mask contains class id"):
        synthesize.run(synth_run, mask_folder, tmp_path / "out", DDIM, progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty"):
        synthesize.run(synth_run, mask_folder, tmp_path / "taken", DDIM, progress=False)


def test_concat_and_spade_variant_trains_and_samples(tmp_path, brain):
    run = tmp_path / "both"
    synthesize.fit(tiny_synth_config(steps=2, mask_conditioning="spade+concat"), run, progress=False)
    synth = synthesize.load(run)
    assert synth.model.config.cond_channels == 4 and synth.model.config.spade_classes == 4
    images = synthesize.synthesize(
        synth, brain.masks[:2].long(), SamplerConfig(steps=2, guidance_scale=2.0), seeds=[0, 1]
    )
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1


def test_training_needs_images_with_masks(tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "a.png")
    config = tiny_synth_config(data={"kind": "image_folder", "root": str(folder), "size": 32})
    with pytest.raises(UserError, match="needs data with masks"):
        synthesize.fit(config, tmp_path / "run", progress=False)


def test_a_generator_run_is_not_a_synthesis_model(tmp_path):
    run = tmp_path / "joint"
    generate.fit(tiny_generate_config(steps=1), run, progress=False)
    with pytest.raises(UserError, match="not 'synthesize'"):
        synthesize.load(run)
