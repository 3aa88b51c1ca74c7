"""The joint generator: pair encoding, sampled folders that the image+mask loader reads back."""

import dataclasses
import json

import pytest
import torch
from tests.conftest import tiny_generate_config

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.errors import UserError
from meddiff.tasks import generate


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A generator conditioned on the axial level of the brain slices (3 levels), trained a few steps."""
    config = dataclasses.replace(
        tiny_generate_config(steps=4),
        conditional=True,
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32, "levels": 3}),
    )
    run = tmp_path_factory.mktemp("conditional") / "run"
    generate.fit(config, run, progress=False)
    return run


def test_codec_round_trips_image_and_mask():
    codec = generate.PairCodec(image_channels=1, num_classes=4)
    batch = {"image": torch.rand(2, 1, 8, 8) * 2 - 1, "mask": torch.randint(0, 4, (2, 8, 8))}
    x = codec.encode(batch)
    assert x.shape == (2, 5, 8, 8) and x[:, 1:].min() == -1 and x[:, 1:].max() == 1
    images, masks = codec.decode(x)
    assert torch.equal(images, batch["image"]) and torch.equal(masks, batch["mask"])


def test_one_hot_decodes_any_sample_to_a_valid_class_id():
    codec = generate.PairCodec(image_channels=1, num_classes=4)
    mask = torch.randint(0, 4, (2, 8, 8))
    x = codec.encode({"image": torch.zeros(2, 1, 8, 8), "mask": mask})
    _, decoded = codec.decode(x + 0.5 * torch.randn_like(x))  # argmax survives moderate noise
    assert (decoded == mask).float().mean() > 0.95
    _, from_noise = codec.decode(torch.randn(4, 5, 16, 16) * 3)  # pure noise: still only ids 0..3
    assert set(from_noise.unique().tolist()) == {0, 1, 2, 3}


def test_analog_bits_code_many_classes_in_few_channels_and_decode_only_valid_ids():
    codec = generate.PairCodec(image_channels=3, num_classes=5, mask_encoding="bits")
    assert codec.channels == 3 + 3  # ceil(log2 5) bits
    mask = torch.randint(0, 5, (2, 8, 8))
    mask[0, 0, 0] = 255
    x = codec.encode({"image": torch.zeros(2, 3, 8, 8), "mask": mask})
    assert set(x[:, 3:].unique().tolist()) == {-1.0, 0.0, 1.0}  # 0 only at the ignored pixel
    _, decoded = codec.decode(x + 0.3 * torch.randn_like(x))
    assert torch.equal(decoded[mask != 255], mask[mask != 255])
    _, from_noise = codec.decode(torch.randn(4, 6, 16, 16) * 3)  # codes 5..7 exist as bit patterns, never as ids
    assert set(from_noise.unique().tolist()) == {0, 1, 2, 3, 4}


def test_a_bits_generator_trains_and_samples_valid_masks(tmp_path):
    config = dataclasses.replace(tiny_generate_config(steps=2), mask_encoding="bits")
    run = tmp_path / "run"
    generate.fit(config, run, progress=False)
    model, _, codec, _, _ = generate.load(run)
    assert codec.mask_encoding == "bits" and model.config.in_channels == 1 + 2
    out = generate.run(run, 2, tmp_path / "pairs", SamplerConfig(name="ddim", steps=2), progress=False)
    loaded = build_dataset(
        from_dict(
            DataConfig,
            {
                "kind": "image_mask_folder",
                "root": str(out),
                "size": 32,
                "class_names": ["bg", "other", "grey", "white"],
            },
        )
    )
    assert set(loaded.masks.unique().tolist()) <= {0, 1, 2, 3}


def test_joint_mask_needs_labelled_data(tmp_path):
    (tmp_path / "img").mkdir()
    config = generate.GenerateConfig(data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    with pytest.raises(UserError, match="joint_mask"):
        generate._codec(config, image_channels=1, num_classes=0)


def test_sampled_pairs_form_a_dataset_folder_the_loader_reads(trained_generator, tmp_path):
    run, _ = trained_generator
    out = generate.run(run, 5, tmp_path / "synthetic", SamplerConfig(name="ddim", steps=5), seed=3, progress=False)
    loaded = build_dataset(
        from_dict(
            DataConfig,
            {
                "kind": "image_mask_folder",
                "root": str(out),
                "size": 32,
                "class_names": ["bg", "other", "grey", "white"],
            },
        )
    )
    assert len(loaded) == 5 and loaded.num_classes == 4
    assert set(loaded.masks.unique().tolist()) <= {0, 1, 2, 3}  # argmax decoding: only valid class ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["seed"] for f in manifest["files"]] == [3, 4, 5, 6, 7]
    first = manifest["files"][0]
    assert (first["sampler"], first["steps"], first["guidance"]) == ("ddim", 5, 1.0)
    assert first["model"] == manifest["model"]["checkpoint"] and first["model"].endswith("step_0000120")
    assert (out / "grid.png").is_file()


def test_each_sample_is_reproducible_from_its_seed(trained_generator, tmp_path):
    run, _ = trained_generator
    settings = SamplerConfig(name="ddpm", steps=5)
    first = generate.run(run, 3, tmp_path / "a", settings, seed=10, progress=False)
    again = generate.run(run, 1, tmp_path / "b", settings, seed=12, progress=False)
    assert (first / "images/sample_000012.png").read_bytes() == (again / "images/sample_000012.png").read_bytes()


def test_output_folder_is_never_overwritten_and_is_checked_before_sampling(trained_generator, tmp_path, monkeypatch):
    run, _ = trained_generator
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    monkeypatch.setattr(generate, "generate", lambda *a, **k: pytest.fail("sampled before checking --out"))
    with pytest.raises(UserError, match="not empty"):
        generate.run(run, 1, tmp_path / "taken", SamplerConfig(steps=2), progress=False)


def _attributes(folder):
    return [f["attribute"] for f in json.loads((folder / "manifest.json").read_text())["files"]]


def test_conditional_model_samples_every_attribute_or_the_one_asked_for(conditional_run, tmp_path):
    guided = SamplerConfig(name="dpm++", steps=2, guidance_scale=2.0)
    every = generate.run(conditional_run, 6, tmp_path / "every", guided, progress=False)
    assert _attributes(every) == [f"axial level {i}/3" for i in (1, 1, 2, 2, 3, 3)]
    one = generate.run(conditional_run, 2, tmp_path / "one", guided, attribute="axial level 2/3", progress=False)
    assert _attributes(one) == ["axial level 2/3"] * 2
    assert _attributes(generate.run(conditional_run, 1, tmp_path / "index", guided, attribute="2", progress=False)) == [
        "axial level 3/3"
    ]
    with pytest.raises(UserError, match="--attribute 'frontal'"):
        generate.run(conditional_run, 1, tmp_path / "bad", guided, attribute="frontal", progress=False)


def test_attributes_need_a_conditional_model_and_data_with_attributes(trained_generator, tmp_path):
    run, _ = trained_generator
    with pytest.raises(UserError, match="not conditional"):
        generate.run(run, 1, tmp_path / "s", SamplerConfig(steps=2), attribute="1", progress=False)
    config = dataclasses.replace(tiny_generate_config(steps=1), conditional=True)
    with pytest.raises(UserError, match="no attributes"):
        generate.fit(config, tmp_path / "run", progress=False)
