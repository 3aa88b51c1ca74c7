"""``meddiff segment``: a user trains an image-only diffusion model on their folder, then fits the pixel
classifier, predicts masks / overlays / uncertainty maps for a folder of new images and sweeps blocks x
timesteps, all from the command line."""

import json

import numpy as np
import pytest
from PIL import Image
from tests.cli.conftest import user_data, write_config


@pytest.mark.parametrize("command", ["fit", "predict", "sweep", "baseline"])
def test_every_command_has_help_with_an_example(cli, command):
    assert "Example" in cli("segment", command, "--help").output


def test_fit_predict_and_sweep_on_a_user_folder(cli, user_folder, tmp_path):
    diffusion = write_config(
        tmp_path / "diffusion.yaml",
        {
            "data": {"kind": "image_folder", "root": str(user_folder / "images"), "size": 32},
            "joint_mask": False,
            "model": {
                "base_channels": 8,
                "channel_mults": [1, 2],
                "blocks_per_level": 1,
                "attention_levels": [],
                "norm_groups": 4,
            },
            "train": {"steps": 2, "batch_size": 4, "sample_every": 10_000, "checkpoint_every": 10_000},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_samples": 1,
        },
    )
    cli("generate", "fit", diffusion, "--out", tmp_path / "diffusion")
    config = write_config(
        tmp_path / "segment.yaml",
        {
            "task": "segment",
            "diffusion": str(tmp_path / "diffusion"),
            "data": user_data(user_folder),
            "features": {"blocks": [1, 3], "timesteps": [50, 250]},
            "pixels": {"max_pixels": 600, "val_pixels": 100},
            "ensemble": {"members": 3, "hidden": [8], "eval_every": 5, "patience": 1, "max_epochs": 1},
            "sweep": {"timesteps": [50, 250], "max_pixels": 300, "top_blocks": 2, "top_timesteps": 1},
        },
    )

    cli("segment", "fit", config, "--out", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["labelled_images"] == 8

    new = tmp_path / "new"
    new.mkdir()
    for name in ("case020", "case098"):  # 48 x 40: another size and shape than the 32 px training images
        image = Image.open(user_folder / "images" / f"{name}.png").resize((40, 48))
        image.save(new / f"{name}.png")
    cli("segment", "predict", tmp_path / "run", "--images", new, "--out", tmp_path / "pred")
    for name in ("case020", "case098"):
        mask = np.array(Image.open(tmp_path / "pred" / "masks" / f"{name}.png"))
        assert mask.shape == (48, 40) and set(np.unique(mask).tolist()) <= {0, 1, 2, 3}
        assert np.array(Image.open(tmp_path / "pred" / "overlays" / f"{name}.png")).shape == (48, 40, 3)
        for kind in ("uncertainty", "disagreement"):
            assert np.array(Image.open(tmp_path / "pred" / kind / f"{name}.png")).shape == (48, 40)

    # the island filter: the run's size by default, any size with --min-island, off with 0
    chosen = json.loads((tmp_path / "run" / "metrics.json").read_text())["min_island"]  # from the labelled masks
    assert json.loads((tmp_path / "pred" / "manifest.json").read_text())["min_island"] == chosen
    for size in (0, 40):
        out = tmp_path / f"islands{size}"
        cli("segment", "predict", tmp_path / "run", "--images", new, "--out", out, "--min-island", size)
        assert json.loads((out / "manifest.json").read_text())["min_island"] == size

    cli("segment", "sweep", config, "--out", tmp_path / "sweep")
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert np.array(sweep["miou"]).shape == (len(sweep["blocks"]), 2)
    assert len(sweep["recommended"]["blocks"]) == 2 and len(sweep["recommended"]["timesteps"]) == 1
    assert (tmp_path / "sweep" / "figures" / "sweep.png").is_file()
    assert "![sweep](figures/sweep.png)" in (tmp_path / "sweep" / "sweep.md").read_text()
