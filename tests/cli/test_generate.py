"""``meddiff generate``: the joint generator trains and samples labelled pairs from the command line."""

import pytest
from tests.cli.conftest import CLASSES, user_data, write_config

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset


@pytest.mark.parametrize("command", ["fit", "run"])
def test_every_command_has_help_with_an_example(cli, command):
    assert "Example" in cli("generate", command, "--help").output


def test_joint_generator_trains_and_samples_on_a_user_folder(cli, user_folder, tmp_path):
    config = write_config(
        tmp_path / "joint.yaml",
        {
            "data": user_data(user_folder),
            "mask_encoding": "bits",  # no task key: generate is implied
            "model": {
                "base_channels": 16,
                "channel_mults": [1, 2],
                "blocks_per_level": 1,
                "attention_levels": [1],
                "norm_groups": 8,
            },
            "train": {"steps": 2, "batch_size": 4, "sample_every": 10_000, "checkpoint_every": 10_000},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_samples": 2,
        },
    )
    cli("generate", "fit", config, "--out", tmp_path / "run")
    cli("generate", "run", tmp_path / "run", "--n", 3, "--out", tmp_path / "pairs", "--steps", 2)
    loaded = build_dataset(
        from_dict(
            DataConfig,
            {"kind": "image_mask_folder", "root": str(tmp_path / "pairs"), "size": 32, "class_names": CLASSES},
        )
    )
    assert len(loaded) == 3 and set(loaded.masks.unique().tolist()) <= {0, 1, 2, 3}
