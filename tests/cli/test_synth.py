"""``meddiff synth``: both synthesis models train and sample from the command line on a user's folder."""

import json

import numpy as np
import pytest
import yaml
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


def test_pretrain_adapt_synthesise_segment_on_a_user_folder(cli, user_folder, tmp_path):
    """The two-step recipe of docs/synthesis.md: one image-only model pretrained on every image serves the
    mask-to-image model (adapted from it) and the few-label segmenter (its features)."""
    small = {
        "base_channels": 8,
        "channel_mults": [1, 2],
        "blocks_per_level": 1,
        "attention_levels": [],
        "norm_groups": 4,
    }
    pretrain = write_config(
        tmp_path / "pretrain.yaml",
        {
            "task": "generate",
            "data": {"kind": "image_folder", "root": str(user_folder / "images"), "size": 32},
            "joint_mask": False,
            "model": small,
            "train": {"steps": 2, **TRAIN},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_samples": 1,
        },
    )
    cli("generate", "fit", pretrain, "--out", tmp_path / "pretrained")
    adapt = write_config(
        tmp_path / "adapt.yaml",
        {
            "task": "synthesize",
            "data": user_data(user_folder),
            "train": {"steps": 2, **TRAIN},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_samples": 2,
        },
    )
    cli("synth", "fit", adapt, "--init-from", tmp_path / "pretrained", "--out", tmp_path / "adapted")
    stored = yaml.safe_load((tmp_path / "adapted" / "config.yaml").read_text())
    assert stored["init_from"] == str(tmp_path / "pretrained") and stored["model"]["base_channels"] == 8
    cli("synth", "run", tmp_path / "adapted", "--masks", user_folder, "--out", tmp_path / "synthetic", "--steps", 2)
    _loads(tmp_path / "synthetic", 8)
    segment = write_config(
        tmp_path / "segment.yaml",
        {
            "task": "segment",
            "diffusion": str(tmp_path / "pretrained"),
            "data": user_data(tmp_path / "synthetic"),
            "features": {"blocks": [1, 3], "timesteps": [50]},
            "pixels": {"max_pixels": 600, "val_pixels": 100},
            "ensemble": {"members": 2, "hidden": [8], "eval_every": 5, "patience": 1, "max_epochs": 1},
        },
    )
    cli("segment", "fit", segment, "--out", tmp_path / "segmenter")
    cli("segment", "predict", tmp_path / "segmenter", "--images", user_folder / "images", "--out", tmp_path / "pred")
    masks = [np.array(Image.open(f)) for f in sorted((tmp_path / "pred" / "masks").glob("*.png"))]
    assert len(masks) == 8 and all(m.shape == (32, 32) and m.max() < len(CLASSES) for m in masks)
