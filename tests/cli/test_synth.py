"""``meddiff synth``: both synthesis models train and sample from the command line on a user's folder."""

import json

import numpy as np
import pytest
from PIL import Image
from tests.cli.conftest import CLASSES, user_data, write_config

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.errors import UserError

COMMANDS = ["fit", "run", "pix2pix-fit", "pix2pix-run"]
TRAIN = {"batch_size": 4, "log_every": 1, "sample_every": 10_000, "checkpoint_every": 10_000}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    assert "Example" in cli("synth", command, "--help").output


def _loads(folder, count):
    loaded = build_dataset(
        from_dict(DataConfig, {"kind": "image_mask_folder", "root": str(folder), "size": 32, "class_names": CLASSES})
    )
    assert len(loaded) == count
    return loaded


def test_diffusion_synthesis_trains_and_samples_on_a_user_folder(cli, user_folder, tmp_path):
    config = write_config(
        tmp_path / "synth.yaml",
        {
            "task": "synthesize",
            "data": user_data(user_folder),
            "model": {
                "base_channels": 16,
                "channel_mults": [1, 2],
                "blocks_per_level": 1,
                "attention_levels": [1],
                "norm_groups": 8,
            },
            "train": {"steps": 2, **TRAIN},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_samples": 2,
        },
    )
    cli("synth", "fit", config, "--out", tmp_path / "run")
    cli(
        "synth",
        "run",
        tmp_path / "run",
        "--masks",
        user_folder,
        "--out",
        tmp_path / "synthetic",
        "--n-per-mask",
        2,
        "--sampler",
        "ddim",
        "--steps",
        2,
        "--guidance",
        2,
        "--seed",
        5,
        "--hflip",
    )
    _loads(tmp_path / "synthetic", 16)
    first = json.loads((tmp_path / "synthetic" / "manifest.json").read_text())["files"][0]
    assert (first["sampler"], first["steps"], first["guidance"], first["seed"]) == ("ddim", 2, 2.0, 5)


def test_pix2pix_trains_and_samples_on_a_user_folder(cli, user_folder, tmp_path):
    config = write_config(
        tmp_path / "p2p.yaml",
        {
            "task": "pix2pix",
            "data": user_data(user_folder),
            "model": {"base_channels": 8, "max_channels": 32, "depth": 4, "disc_channels": 8, "norm_groups": 4},
            "train": {"steps": 2, **TRAIN},
            "grid_samples": 2,
        },
    )
    cli("synth", "pix2pix-fit", config, "--out", tmp_path / "run")
    cli("synth", "pix2pix-run", tmp_path / "run", "--masks", user_folder / "masks", "--out", tmp_path / "gan")
    _loads(tmp_path / "gan", 8)


def test_user_errors_name_the_problem(cli, tmp_path):
    config = write_config(tmp_path / "gen.yaml", {"task": "generate"})
    result = cli("synth", "fit", config, ok=False)
    assert isinstance(result.exception, UserError) and "'task' is 'generate'" in str(result.exception)
    result = cli("synth", "run", tmp_path, "--masks", tmp_path, "--out", tmp_path / "o", "--sampler", "euler", ok=False)
    assert "--sampler 'euler'" in str(result.exception)
    result = cli(
        "synth", "run", tmp_path, "--masks", tmp_path, "--out", tmp_path / "o", "--cadis-task", "task9", ok=False
    )
    assert "cadis_task" in str(result.exception)


def test_mask_flips_of_synth_runs_swap_declared_sided_classes_and_refuse_undeclared_ones(cli, user_folder, tmp_path):
    sided = ["background", "right tissue", "left tissue", "white matter"]
    config = write_config(
        tmp_path / "p2p.yaml",
        {
            "task": "pix2pix",
            "data": {**user_data(user_folder), "class_names": sided},
            "model": {"base_channels": 8, "max_channels": 32, "depth": 4, "disc_channels": 8, "norm_groups": 4},
            "train": {"steps": 1, **TRAIN},
            "grid_samples": 2,
        },
    )
    cli("synth", "pix2pix-fit", config, "--out", tmp_path / "run")
    masks = ("--masks", user_folder / "masks", "--hflip", "--n-per-mask", 2)
    refused = cli("synth", "pix2pix-run", tmp_path / "run", *masks, "--out", tmp_path / "no", ok=False)
    assert "'right tissue', 'left tissue'" in str(refused.exception) and "--mirror-pair" in str(refused.exception)
    assert not (tmp_path / "no").exists()
    cli("synth", "pix2pix-run", tmp_path / "run", *masks, "--out", tmp_path / "gan", "--mirror-pair", "1,left tissue")
    files = json.loads((tmp_path / "gan" / "manifest.json").read_text())["files"]
    flipped = [f for f in files if f["augment"].get("hflip")]
    assert flipped and len(flipped) < len(files)
    source = np.asarray(Image.open(user_folder / "masks" / f"{flipped[0]['source_mask'].split('/')[-1]}"))
    written = np.asarray(Image.open(tmp_path / "gan" / flipped[0]["mask"]))
    swap = np.array([0, 2, 1, 3])
    assert np.array_equal(written, swap[source[:, ::-1]])
