"""Pretrain once, adapt to every task: mask-to-image, joint and text-conditioned models started from an
image-only generate run."""

import dataclasses

import pytest
import torch
import yaml
from tests.conftest import tiny_generate_config, tiny_image_generator_config, tiny_textgen_config
from tests.tasks.test_synthesize import tiny_synth_config

from meddiff.checkpoint import load_checkpoint
from meddiff.errors import UserError
from meddiff.nets.controlnet import ControlledUNet
from meddiff.rundir import resolve_checkpoint
from meddiff.tasks import generate, synthesize, textgen
from meddiff.tasks.pretrained import new_unet, task_model

CLASSES = 4  # the brain slices' classes


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    """An image-only generator of the 32-px brain slices: the pretrained backbone."""
    run = tmp_path_factory.mktemp("pretrained") / "backbone"
    generate.fit(tiny_image_generator_config(steps=20, size=32), run, progress=False)
    return run


def adapted_config(backbone_run, mode="spade", **changes):
    return tiny_synth_config(steps=3, init_from=str(backbone_run), mask_conditioning=mode, **changes)


def step_zero_model(config):
    config, backbone = synthesize.with_backbone(config, 1, CLASSES)
    model, _ = synthesize.new_model(config, CLASSES, backbone)
    return model.eval(), backbone.model


@pytest.mark.parametrize("mode", ["spade", "spade+concat", "controlnet"])
def test_at_step_zero_the_adapted_model_predicts_what_its_backbone_predicts(backbone_run, mode):
    model, backbone = step_zero_model(adapted_config(backbone_run, mode))
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([50, 600])
    masks = torch.randint(0, CLASSES, (2, 32, 32))
    cond = synthesize.conditioning(masks, CLASSES, mode)
    with torch.no_grad():
        expected = backbone(x, t)
        assert expected.abs().mean() > 0.01
        assert torch.allclose(model(x, t, **cond.model_kwargs()), expected, atol=1e-5)


def test_the_backbone_sets_the_architecture_and_noise_process(backbone_run):
    config, _ = synthesize.with_backbone(adapted_config(backbone_run), 1, CLASSES)
    pretrained = generate.load(backbone_run)[3]
    assert config.model.channel_mults == pretrained["model"]["channel_mults"] == [1, 2, 2]
    assert config.model.spade_classes == CLASSES
    assert dataclasses.asdict(config.noise) == pretrained["noise"]


def trained_weights(run):
    groups, _ = load_checkpoint(resolve_checkpoint(run))
    return groups["model"]


def test_adapters_only_training_leaves_the_backbone_untouched(backbone_run, tmp_path):
    synthesize.fit(adapted_config(backbone_run, train_parts="adapters"), tmp_path / "run", progress=False)
    weights = trained_weights(tmp_path / "run")
    backbone = generate.load(backbone_run)[0].state_dict()
    assert torch.equal(weights["encoder.0.res.conv1.weight"], backbone["encoder.0.res.conv1.weight"])
    assert weights["decoder.0.res.norm1.gamma.weight"].abs().sum() > 0  # zero at the start, trained since


def test_fine_tuning_all_moves_the_backbone_too(backbone_run, tmp_path):
    synthesize.fit(adapted_config(backbone_run), tmp_path / "run", progress=False)
    weights = trained_weights(tmp_path / "run")
    backbone = generate.load(backbone_run)[0].state_dict()
    assert not torch.equal(weights["encoder.0.res.conv1.weight"], backbone["encoder.0.res.conv1.weight"])


def test_a_controlnet_synthesizer_trains_over_its_frozen_backbone_then_loads_and_samples(backbone_run, tmp_path):
    run = tmp_path / "run"
    synthesize.fit(adapted_config(backbone_run, "controlnet"), run, progress=False)
    weights = trained_weights(run)
    backbone = generate.load(backbone_run)[0].state_dict()
    assert all(torch.equal(weights[f"base.{name}"], value) for name, value in backbone.items())
    synth = synthesize.load(run)
    assert isinstance(synth.model, ControlledUNet)
    images = synth.synthesize(torch.randint(0, CLASSES, (2, 32, 32)), steps=2, sampler="ddim")
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1


def test_init_from_refuses_a_joint_generator_a_missing_run_and_other_image_channels(backbone_run, tmp_path):
    joint = tmp_path / "joint"
    generate.fit(tiny_generate_config(steps=1), joint, progress=False)
    with pytest.raises(UserError, match="image-only"):
        synthesize.fit(adapted_config(joint), tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="does not exist"):
        synthesize.fit(adapted_config(tmp_path / "nowhere"), tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="1-channel images, the data has 3"):
        synthesize.with_backbone(adapted_config(backbone_run), 3, CLASSES)


def test_controlnet_and_train_parts_need_a_backbone():
    with pytest.raises(UserError, match="init_from"):
        tiny_synth_config(mask_conditioning="controlnet")
    with pytest.raises(UserError, match="init_from"):
        tiny_synth_config(train_parts="adapters")


def test_a_joint_generator_adapted_from_the_backbone_starts_with_its_images_and_silent_mask_channels(
    backbone_run, tmp_path
):
    config = dataclasses.replace(tiny_generate_config(steps=2), init_from=str(backbone_run))
    channels = 1 + CLASSES
    model_config, _, backbone = task_model(
        config.init_from, 1, config.model, config.noise, in_channels=channels, out_channels=channels
    )
    model, _ = new_unet(model_config, backbone, "all")
    torch.manual_seed(0)
    x, t = torch.randn(2, channels, 32, 32), torch.tensor([50, 600])
    with torch.no_grad():
        out = model(x, t)
        assert torch.allclose(out[:, :1], backbone.model(x[:, :1], t), atol=1e-5)
        assert not out[:, 1:].any()
    generate.fit(config, tmp_path / "run", progress=False)
    _, _, codec, stored, _ = generate.load(tmp_path / "run")
    assert codec.num_classes == CLASSES and stored["init_from"] == str(backbone_run)


def test_a_text_model_adapted_from_the_backbone_keeps_its_architecture_and_trains(backbone_run, tmp_path):
    config = tiny_textgen_config(steps=2, init_from=str(backbone_run), alignment={"steps": 0})
    textgen.fit(config, tmp_path / "run", progress=False)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["model"]["attention_levels"] == [2] and stored["model"]["context_dim"] == 384
    handle = textgen.load(tmp_path / "run")
    assert handle.unet.config.context_dim == 384 and handle.unet.config.attention_levels == [2]


def test_a_controlnet_run_over_a_frozen_backbone_resumes_exactly(backbone_run, tmp_path):
    def config(steps, checkpoint_every):
        base = adapted_config(backbone_run, "controlnet")
        train = dataclasses.replace(base.train, steps=steps, checkpoint_every=checkpoint_every, log_every=1)
        return dataclasses.replace(base, train=train)

    straight = synthesize.fit(config(4, 2), tmp_path / "a", progress=False)
    synthesize.fit(config(2, 2), tmp_path / "b", progress=False)
    resumed = synthesize.fit(config(4, 2), tmp_path / "b", resume=True, progress=False)
    assert list(resumed.losses) == [3, 4]
    assert [resumed.losses[s] for s in (3, 4)] == pytest.approx([straight.losses[s] for s in (3, 4)], rel=1e-5)
