"""Self-training as a user runs it: a pixel classifier labels the unlabelled slices, a U-Net learns from
its surest pixels beside the true labels, in one or two rounds; the result loads as a segmenter."""

import json

import pytest
import torch
import yaml
from tests.conftest import tiny_image_generator_config

import meddiff
from meddiff.config import from_dict
from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError
from meddiff.tasks import generate, segment, segmenter, selftrain

LABELLED = [f"mni152_axial_z{z:03d}" for z in (40, 70, 100)]
DATA = {"kind": "brain_mri", "size": 24, "hflip": True}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A pixel classifier on a tiny image-only brain generator's features, fitted on 3 labelled slices."""
    root = tmp_path_factory.mktemp("selftrain")
    config = tiny_image_generator_config(steps=15)
    generate.fit(config, root / "diffusion", progress=False)
    fit = {
        "diffusion": str(root / "diffusion"),
        "data": DATA,
        "images": LABELLED,
        "features": {"blocks": [4, 8], "timesteps": [50, 200], "batch_size": 8},
        "pixels": {"max_pixels": 1500, "val_pixels": 300},
        "ensemble": {"members": 3, "hidden": [16, 8], "eval_every": 10, "patience": 2, "max_epochs": 3},
    }
    segment.fit(from_dict(segment.SegmentConfig, fit), root / "classifier", progress=False)
    return root / "classifier"


def _config(classifier, **self_training) -> dict:
    return {
        "task": "segmenter",
        "data": DATA,
        "images": LABELLED,
        "model": {"base_channels": 8, "depth": 3},
        "train": {"steps": 9, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "eval_every": 3, "patience": 2},
        "self_training": {
            "classifier": str(classifier),
            "unlabelled": {"kind": "brain_mri", "size": 24},
            "max_unlabelled": 20,
            **self_training,
        },
    }


def test_two_rounds_from_the_command_line_give_a_segmenter_run(classifier, tmp_path, meddiff_main):
    config_file = tmp_path / "selftrain.yaml"
    config_file.write_text(yaml.safe_dump(_config(classifier, rounds=2, keep=0.5)))
    code, err = meddiff_main("segment", "self-train", config_file, "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / selftrain.SUMMARY_FILE).read_text())
    first, second = summary["rounds"]
    assert first["teacher"].startswith("pixel classifier") and second["teacher"].startswith("segmenter")
    for record in (first, second):
        assert record["unlabelled_images"] == 20
        for name, kept in record["kept_pixels"].items():  # half of each class the teacher gave, rounded
            assert kept <= record["predicted_pixels"][name] // 2 + 1
    assert (tmp_path / "run" / "rounds" / "1" / "checkpoints" / "best").is_dir()
    model = meddiff.load(tmp_path / "run", device="cpu")
    assert isinstance(model, segmenter.SegmenterModel)
    assert model.segment(torch.zeros(2, 1, 24, 24)).shape == (2, 24, 24)


def test_labelled_images_are_not_pseudo_labelled_and_early_stopping_sees_only_true_labels(
    classifier, tmp_path, monkeypatch
):
    seen = {}
    real = segmenter.fit_dataset

    def recording(config, run_dir, dataset, resume=False, progress=True, pseudo=None):
        seen.update(labelled=list(dataset.names), pseudo=list(pseudo.names), masks=pseudo.masks)
        return real(config, run_dir, dataset, resume, progress, pseudo)

    monkeypatch.setattr(segmenter, "fit_dataset", recording)
    config = from_dict(segmenter.SegmenterConfig, {k: v for k, v in _config(classifier).items() if k != "task"})
    segmenter.fit(config, tmp_path / "run", progress=False)
    assert seen["labelled"] == LABELLED and not set(LABELLED) & set(seen["pseudo"])
    assert len(seen["pseudo"]) == 20 and (seen["masks"] == IGNORE_INDEX).any() and (seen["masks"] != 255).any()


def test_unlabelled_images_of_another_size_are_refused(classifier, tmp_path):
    config = _config(classifier)
    config["self_training"]["unlabelled"] = {"kind": "brain_mri", "size": 32}
    config = from_dict(segmenter.SegmenterConfig, {k: v for k, v in config.items() if k != "task"})
    with pytest.raises(UserError, match="same size"):
        segmenter.fit(config, tmp_path / "run", progress=False)


def test_a_config_without_a_self_training_section_is_refused(classifier, tmp_path, meddiff_main):
    config = _config(classifier)
    del config["self_training"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, err = meddiff_main("segment", "self-train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and "self_training" in err


@pytest.mark.parametrize(("key", "value"), [("keep", 1.5), ("rounds", 3), ("max_disagreement", -0.1)])
def test_settings_out_of_range_are_refused_naming_them(classifier, key, value):
    with pytest.raises(UserError, match=key):
        from_dict(segmenter.SegmenterConfig, {"self_training": {"classifier": str(classifier), key: value}})
