"""The U-Net baseline segmenter: early stopping on held-out pixels it never trains on, the best
checkpoint, masks for images of any size, and the config-driven entry point."""

import dataclasses

import pytest
import torch
import yaml
from tests.conftest import tiny_generate_config, tiny_image_generator_config

import meddiff
from meddiff.config import from_dict, to_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError
from meddiff.nets.backbone import BackboneSegNet
from meddiff.nets.segnet import SegNetConfig
from meddiff.tasks import generate, load_task_config, segmenter
from meddiff.train.engine import TrainConfig

DATA = {"kind": "brain_mri", "size": 24, "hflip": True}


def _config(**train) -> segmenter.SegmenterConfig:
    settings = dict(
        steps=12,
        batch_size=4,
        lr=3e-3,
        warmup_steps=0,
        ema_decay=0.5,
        log_every=4,
        checkpoint_every=100,
        eval_every=3,
        patience=2,
    )
    settings.update(train)
    return segmenter.SegmenterConfig(
        data=from_dict(DataConfig, DATA), model=SegNetConfig(base_channels=8, depth=3), train=TrainConfig(**settings)
    )


@pytest.fixture(scope="module")
def brain():
    return segmenter.select_images(
        build_dataset(from_dict(DataConfig, DATA)), [f"mni152_axial_z{z:03d}" for z in (40, 70, 100)]
    )


def test_held_out_pixels_are_ignored_in_training_and_are_all_validation_sees(brain):
    train_set, val_labels = segmenter.split_pixels(brain, 0.2, seed=0)
    held = val_labels != IGNORE_INDEX
    assert 0.1 < held.float().mean() < 0.3
    assert (train_set.masks[held] == IGNORE_INDEX).all()
    assert torch.equal(train_set.masks[~held].long(), brain.masks[~held].long())
    assert torch.equal(val_labels[held], brain.masks[held].long())
    assert train_set.hflip  # the data's augmentations are kept


def test_fit_keeps_the_best_checkpoint_and_predicts_on_another_size(brain, tmp_path):
    result = segmenter.fit_dataset(_config(), tmp_path / "run", brain, progress=False)
    assert result.best_step is not None and (tmp_path / "run" / "checkpoints" / "best").is_dir()
    model, stored = segmenter.load(tmp_path / "run")
    assert stored["class_names"] == brain.class_names and stored["model"]["num_classes"] == 4
    masks = segmenter.predict(model, torch.rand(3, 1, 30, 41) * 2 - 1, batch_size=2)
    assert masks.shape == (3, 30, 41) and masks.dtype == torch.int64 and masks.max() < 4


def test_config_file_with_task_segmenter_dispatches_here(tmp_path):
    config = _config(steps=2, eval_every=1, patience=1)
    path = tmp_path / "unet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "segmenter",
                **to_dict(dataclasses.replace(config, images=["mni152_axial_z050", "mni152_axial_z060"])),
            }
        )
    )
    module, loaded = load_task_config(path)
    assert module is segmenter and loaded.images == ["mni152_axial_z050", "mni152_axial_z060"]
    module.fit(loaded, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "best").is_dir()


def test_unknown_image_names_are_a_user_error(brain):
    with pytest.raises(UserError, match="'images': 'nope'"):
        segmenter.select_images(brain, ["nope"])


@pytest.fixture(scope="module")
def image_generator(tmp_path_factory):
    """A tiny image-only brain generator (24 px), the backbone to fine-tune."""
    root = tmp_path_factory.mktemp("backbone")
    config = tiny_image_generator_config(steps=4)
    generate.fit(config, root / "run", progress=False)
    return root / "run"


def test_a_pretrained_backbone_starts_from_every_denoiser_weight_but_the_output(image_generator):
    model, unet_config, time = segmenter.pretrained_backbone(image_generator, 50, in_channels=1, num_classes=4)
    denoiser, *_ = generate.load(image_generator)
    kept = model.unet.state_dict()
    same = [k for k, v in denoiser.state_dict().items() if kept[k].shape == v.shape and torch.equal(v, kept[k])]
    assert set(kept) - set(same) == {"out.2.weight", "out.2.bias"}  # the output convolution: 4 classes
    assert unet_config["out_channels"] == 1 and time == 50  # the step itself (the model takes timesteps)


def test_fine_tuning_the_backbone_trains_saves_and_predicts(brain, image_generator, tmp_path):
    config = dataclasses.replace(_config(steps=6), backbone=image_generator, backbone_step=20)
    result = segmenter.fit_dataset(config, tmp_path / "run", brain, progress=False)
    assert result.step >= 3
    model = meddiff.load(tmp_path / "run", device="cpu")
    assert isinstance(model.model, BackboneSegNet) and float(model.model.time) == 20
    masks = model.segment(torch.rand(2, 1, 24, 24) * 2 - 1)
    assert masks.shape == (2, 24, 24) and masks.max() < 4


def test_a_joint_generator_is_not_a_backbone(brain, tmp_path):
    joint = tmp_path / "joint"
    generate.fit(tiny_generate_config(steps=1), joint, progress=False)
    with pytest.raises(UserError, match="image-only generator"):
        segmenter.fit_dataset(dataclasses.replace(_config(), backbone=joint), tmp_path / "run", brain, progress=False)
