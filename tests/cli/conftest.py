"""A user's own image+mask folder and an in-process CLI runner for the command-group tests."""

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset

CLASSES = ["background", "other brain tissue", "grey matter", "white matter"]


@pytest.fixture(scope="session")
def user_folder(tmp_path_factory):
    """Eight 32 px brain slices saved as a user would: images/ and masks/ PNGs of the same names."""
    root = tmp_path_factory.mktemp("user") / "pairs"
    brain = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(20, 120, 13):
        image = ((brain.images[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray(brain.masks[i].numpy().astype(np.uint8)).save(root / "masks" / f"case{i:03d}.png")
    return root


def user_data(folder) -> dict:
    return {"kind": "image_mask_folder", "root": str(folder), "size": 32, "class_names": CLASSES}


def write_config(path, data: dict):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def cli():
    """Run ``meddiff ARGS`` in this process; a failed command shows its output and exception."""
    from meddiff.cli import app

    def invoke(*args, ok=True):
        result = CliRunner().invoke(app, [str(a) for a in args])
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
        return result

    return invoke
