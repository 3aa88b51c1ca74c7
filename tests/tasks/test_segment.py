"""Few-label segmentation from diffusion features, as a user runs it: fit on a labelled folder, predict
masks, overlays and uncertainty maps for images of another size, sweep blocks x timesteps; bad input is
one line naming the problem."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tests.conftest import tiny_generate_config, tiny_image_generator_config

from meddiff.config import from_dict, to_dict
from meddiff.data.fit import Fit
from meddiff.data.samples import brain_mri
from meddiff.data.writers import write_pair_folder
from meddiff.errors import UserError
from meddiff.metrics.segmentation import segmentation_scores
from meddiff.segment.ensemble import Vote
from meddiff.segment.islands import scaled_min_size, small_regions
from meddiff.tasks import generate, segment

CLASSES = ["background", "other", "grey", "white"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An image-only brain generator (24 px, a few steps), a labelled folder of 6 slices and 2 unlabelled
    images of another size and shape."""
    root = tmp_path_factory.mktemp("segment")
    config = tiny_image_generator_config(steps=15)
    generate.fit(config, root / "diffusion", progress=False)
    slices = brain_mri(24)
    pick = [20, 40, 60, 80, 100, 120]
    images = ((slices.images[pick, 0] + 1) * 127.5).round().byte().numpy()
    write_pair_folder(root / "labelled", images, slices.masks[pick].numpy(), [f"s{i}" for i in pick], {})
    (root / "new").mkdir()
    for i in (30, 90):  # 40 x 32 px: another size and aspect ratio than the 24 x 24 training images
        image = ((brain_mri(40).images[i, 0, :, 4:36] + 1) * 127.5).round().byte().numpy()
        Image.fromarray(image).save(root / "new" / f"n{i}.png")
    return root


def _config(root, **changes) -> dict:
    config = {
        "task": "segment",
        "diffusion": str(root / "diffusion"),
        "data": {
            "kind": "image_mask_folder",
            "root": str(root / "labelled"),
            "class_names": CLASSES,
            "size": 24,
            "hflip": True,
        },
        "features": {"blocks": [4, 8], "timesteps": [50, 200], "batch_size": 2},
        "pixels": {"max_pixels": 1500, "val_pixels": 300},
        "ensemble": {"members": 3, "hidden": [16, 8], "eval_every": 10, "patience": 2, "max_epochs": 3},
        "sweep": {"timesteps": [50, 300], "blocks": [2, 8], "max_pixels": 800, "val_share": 0.34},
    }
    config.update(changes)
    return config


def test_fit_and_predict_from_the_command_line_on_images_of_another_size(workspace, tmp_path, meddiff_main):
    config_file = tmp_path / "segment.yaml"
    config_file.write_text(yaml.safe_dump(_config(workspace)))
    code, err = meddiff_main("segment", "fit", config_file, "--out", tmp_path / "run")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["feature_dims"] == (32 + 16) * 2 and metrics["labelled_images"] == 6
    assert metrics["train_pixels"] == 1500 and metrics["val_pixels"] == 300

    code, err = meddiff_main(
        "segment", "predict", tmp_path / "run", "--images", workspace / "new", "--out", tmp_path / "pred"
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert [f["image"] for f in manifest["files"]] == ["n30.png", "n90.png"]
    mask = np.array(Image.open(tmp_path / "pred" / "masks" / "n90.png"))
    assert mask.shape == (40, 32) and set(np.unique(mask)) <= {0, 1, 2, 3}
    assert np.array(Image.open(tmp_path / "pred" / "overlays" / "n90.png")).shape == (40, 32, 3)
    for kind in ("uncertainty", "disagreement"):
        assert np.array(Image.open(tmp_path / "pred" / kind / "n30.png")).shape == (40, 32)
    assert 0 <= manifest["files"][0]["mean_uncertainty"] <= 1

    code, err = meddiff_main(
        "segment", "predict", tmp_path / "run", "--images", workspace / "new", "--out", tmp_path / "pred"
    )
    assert code == 2 and "not empty" in err


def test_predictions_on_the_training_size_beat_predicting_the_most_common_class(workspace, tmp_path):
    config = from_dict(segment.SegmentConfig, {k: v for k, v in _config(workspace).items() if k != "task"})
    segment.fit(config, tmp_path / "run", progress=False)
    classifier, _ = segment.load(tmp_path / "run")
    slices = brain_mri(24)
    truth = slices.masks[[50, 110]]  # unseen slices, 1152 pixels
    predicted = classifier.predict(slices.images[[50, 110]]).labels
    # the baseline a classifier must beat: the most common class of the 6 labelled slices, everywhere
    majority = torch.bincount(slices.masks[[20, 40, 60, 80, 100, 120]].flatten(), minlength=4).argmax()
    baseline = segmentation_scores(torch.full_like(truth, int(majority)), truth, 4, include_background=False)
    scores = segmentation_scores(predicted, truth, 4, include_background=False)
    # measured 0.77 against 0.55 (background is 55 % of these slices), foreground mIoU 0.28 against 0
    assert (predicted == truth).float().mean() > (truth == majority).float().mean() + 0.1
    assert scores.miou > baseline.miou + 0.15
    with pytest.raises(UserError, match="already holds"):
        segment.fit(config, tmp_path / "run", progress=False)


def test_the_prior_correction_is_recorded_in_the_run_and_applied_when_it_is_loaded(workspace, tmp_path):
    pixels = {**_config(workspace)["pixels"], "prior_correction": "prior"}
    config = from_dict(
        segment.SegmentConfig, {k: v for k, v in _config(workspace, pixels=pixels).items() if k != "task"}
    )
    segment.fit(config, tmp_path / "run", progress=False)
    classifier, stored = segment.load(tmp_path / "run")
    weights = torch.tensor(json.loads((tmp_path / "run" / "metrics.json").read_text())["class_weights"])
    torch.testing.assert_close(classifier.logit_bias, weights.log())  # log(true prior / training prior)
    assert stored["logit_bias"] == classifier.logit_bias.tolist()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["logit_bias"] == metrics["prior_bias"] and len(metrics["fitted_bias"]) == 4
    images = brain_mri(24).images[[50, 110]]
    corrected = classifier.predict(images).labels
    balanced = dataclasses.replace(classifier, logit_bias=None).predict(images).labels
    # background is the most common class of the labelled slices: the correction predicts it more often
    assert (corrected == 0).sum() > (balanced == 0).sum()


def test_sweep_scores_every_block_at_every_timestep(workspace, tmp_path):
    config = from_dict(segment.SegmentConfig, {k: v for k, v in _config(workspace).items() if k != "task"})
    table = segment.sweep(config, tmp_path / "sweep", progress=False)
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert result["blocks"] == [2, 8] and result["timesteps"] == [50, 300]
    assert np.isfinite(np.array(result["miou"])).all() and np.array(result["miou"]).shape == (2, 2)
    assert result["train_images"] == 4 and result["val_images"] == 2  # a third of 6 held out for scoring
    assert (tmp_path / "sweep" / "figures" / "sweep.png").stat().st_size > 1000
    assert "Recommended" in table.read_text() and not (tmp_path / "sweep" / "scratch").exists()


def test_recommendation_keeps_the_best_rows_and_columns():
    miou = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, 0.4], [0.4, 0.5, 0.2]])
    assert segment.recommend(miou, [3, 5, 7], [20, 50, 100], top_blocks=2, top_timesteps=1) == ([5, 7], [50])


def test_a_joint_image_and_mask_generator_is_refused(tmp_path):
    generate.fit(tiny_generate_config(steps=1), tmp_path / "joint", progress=False)
    with pytest.raises(UserError, match="joint_mask: true"):
        segment.load_diffusion(tmp_path / "joint")


def test_a_config_without_a_diffusion_model_is_one_line_and_writes_nothing(workspace, tmp_path, meddiff_main):
    config = _config(workspace)
    del config["diffusion"]
    config_file = tmp_path / "segment.yaml"
    config_file.write_text(yaml.safe_dump(config))
    code, err = meddiff_main("segment", "fit", config_file, "--out", tmp_path / "run")
    assert code == 2 and "'diffusion' is required" in err and "segment.yaml" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_generate_config_is_refused_by_segment_fit(workspace, tmp_path, meddiff_main):
    config_file = tmp_path / "generate.yaml"
    config_file.write_text(yaml.safe_dump({"task": "generate", **to_dict(tiny_generate_config())}))
    code, err = meddiff_main("segment", "fit", config_file)
    assert code == 2 and "needs 'task: segment'" in err


@pytest.mark.parametrize("mode", ["resize", "pad", "center_crop"])
def test_working_scale_and_back_keeps_the_native_geometry(mode):
    fit = Fit(16, mode)
    image = torch.rand(1, 40, 24)
    working = segment.to_working(image, fit)
    assert working.shape[-2:] == ((16, 16) if mode != "center_crop" else (27, 16))
    labels = (working[0] > 0.5).long()
    assert segment.to_native(labels, (40, 24), fit).shape == (40, 24)
    assert segment.to_native(working[0], (40, 24), fit).shape == (40, 24)


class _SpeckledClassifier:
    """Stands in for a PixelClassifier whose votes are half background, half tissue, with one-pixel specks."""

    def predict(self, images, tile_mb=64):
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.int64)
        labels[..., :, images.shape[-1] // 2 :] = 1
        labels[..., 4::8, 4::8] = 1 - labels[..., 4::8, 4::8]
        return Vote(labels, torch.zeros(labels.shape), torch.zeros(labels.shape))


def test_predicted_masks_keep_no_island_smaller_than_the_set_size_unless_it_is_off():
    native = torch.rand(1, 48, 40)  # another size than the 32 px working size
    fit = Fit(32)
    raw, _, _ = segment.segment_native(_SpeckledClassifier(), native, fit, tile_mb=64, min_island=0)
    filled, _, _ = segment.segment_native(_SpeckledClassifier(), native, fit, tile_mb=64, min_island=8)
    smallest = scaled_min_size(8, 32, (48, 40))
    assert small_regions(raw.numpy(), smallest).sum() > 0
    assert not small_regions(filled.numpy(), smallest).any()
    assert filled.float().mean() == pytest.approx(0.5, abs=0.05)  # the halves themselves stay
