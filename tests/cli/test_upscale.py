"""``meddiff upscale``: an SR3 model trains on a user's folder and upscales it from the command line."""

import json

import numpy as np
import pytest
from PIL import Image
from tests.cli.conftest import user_data, write_config

from meddiff.errors import UserError

TRAIN = {"steps": 2, "batch_size": 4, "log_every": 1, "sample_every": 10_000, "checkpoint_every": 10_000}
MODEL = {"base_channels": 8, "channel_mults": [1, 2], "blocks_per_level": 1, "attention_levels": [], "norm_groups": 4}


@pytest.mark.parametrize("command", ["fit", "run"])
def test_every_command_has_help_with_an_example(cli, command):
    assert "Example" in cli("upscale", command, "--help").output


def test_a_label_aware_model_trains_on_crops_of_a_user_folder_and_upscales_its_pairs(cli, user_folder, tmp_path):
    data = {**user_data(user_folder), "size": 16, "fit": "random_crop", "short_side": 32}
    config = write_config(
        tmp_path / "up.yaml",
        {"task": "upscale", "data": data, "factor": 2, "model": MODEL, "train": TRAIN, "grid_samples": 2},
    )
    cli("upscale", "fit", config, "--out", tmp_path / "run")
    cli(
        "upscale",
        "run",
        tmp_path / "run",
        "--images",
        user_folder,
        "--out",
        tmp_path / "big",
        "--steps",
        2,
        "--aug-level",
        0.1,
        "--seed",
        3,
    )
    names = sorted(p.name for p in (user_folder / "images").iterdir())
    assert sorted(p.name for p in (tmp_path / "big" / "images").iterdir()) == names
    image = Image.open(tmp_path / "big" / "images" / names[0])
    assert image.size == (64, 64)  # the user's 32-px images, not the 16-px training crops, doubled
    source_mask = np.array(Image.open(user_folder / "masks" / names[0]))
    assert np.array_equal(np.array(Image.open(tmp_path / "big" / "masks" / names[0]))[::2, ::2], source_mask)
    first = json.loads((tmp_path / "big" / "manifest.json").read_text())["files"][0]
    assert (first["aug_level"], first["seed"], first["steps"], first["factor"]) == (0.1, 3, 2, 2)


def test_a_label_aware_model_refuses_images_without_masks(cli, user_folder, tmp_path):
    config = write_config(
        tmp_path / "up.yaml",
        {"task": "upscale", "data": user_data(user_folder), "factor": 2, "model": MODEL, "train": TRAIN},
    )
    cli("upscale", "fit", config, "--out", tmp_path / "run")
    result = cli(
        "upscale", "run", tmp_path / "run", "--images", user_folder / "images", "--out", tmp_path / "o", ok=False
    )
    assert isinstance(result.exception, UserError) and "needs masks" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_an_image_only_model_upscales_a_plain_folder(cli, user_folder, tmp_path):
    config = write_config(
        tmp_path / "up.yaml",
        {
            "task": "upscale",
            "data": user_data(user_folder),
            "factor": 2,
            "label_aware": False,
            "model": MODEL,
            "train": TRAIN,
        },
    )
    cli("upscale", "fit", config, "--out", tmp_path / "run")
    cli("upscale", "run", tmp_path / "run", "--images", user_folder / "images", "--out", tmp_path / "big", "--steps", 1)
    assert not (tmp_path / "big" / "masks").exists()
    assert len(list((tmp_path / "big" / "images").iterdir())) == len(list((user_folder / "images").iterdir()))


def test_bad_options_are_one_line_errors(meddiff_main, tmp_path):
    code, err = meddiff_main(
        "upscale", "run", tmp_path, "--images", tmp_path, "--out", tmp_path / "o", "--sampler", "x"
    )
    assert code == 2 and "--sampler 'x'" in err
    config = write_config(tmp_path / "up.yaml", {"task": "upscale", "factor": 3})
    code, err = meddiff_main("upscale", "fit", config)
    assert code == 2 and "multiple of factor" in err


def test_synth_run_with_upscale_writes_the_cascades_larger_pairs(cli, user_folder, tmp_path):
    synth = write_config(
        tmp_path / "synth.yaml",
        {"task": "synthesize", "data": user_data(user_folder), "model": MODEL, "train": TRAIN, "grid_samples": 2},
    )
    up = write_config(
        tmp_path / "up.yaml",
        {"task": "upscale", "data": user_data(user_folder), "factor": 2, "model": MODEL, "train": TRAIN},
    )
    cli("synth", "fit", synth, "--out", tmp_path / "synth")
    cli("upscale", "fit", up, "--out", tmp_path / "up")
    synth_run = ("synth", "run", tmp_path / "synth", "--masks", user_folder, "--steps", 1)
    cli(*synth_run, "--out", tmp_path / "pairs", "--upscale", tmp_path / "up", "--upscale-steps", 1)
    first = sorted((tmp_path / "pairs" / "images").iterdir())[0]
    assert Image.open(first).size == (64, 64)
    assert json.loads((tmp_path / "pairs" / "manifest.json").read_text())["files"][0]["upscale"]["steps"] == 1
    result = cli(*synth_run, "--out", tmp_path / "o", "--upscale-aug-level", 0.1, ok=False)
    assert "--upscale-aug-level needs --upscale" in str(result.exception)
