"""``meddiff fuse``: a rule and a briefly trained model fuse a user's paired folders (odd sizes, grey MRI with
pseudo-colour PET) and ``fuse eval`` prints and saves the published-protocol table."""

import json

import numpy as np
import pytest
from PIL import Image
from tests.cli.conftest import write_config
from typer.testing import CliRunner

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.errors import UserError
from meddiff.metrics.fusion import read_gray

H, W = 45, 38  # not a multiple of anything the networks like


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Six registered pairs as a user stores them: pairs/MRI/*.png (grey) and pairs/PET/*.png (colour)."""
    root = tmp_path_factory.mktemp("fusion") / "pairs"
    brain = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 48}))
    (root / "MRI").mkdir(parents=True)
    (root / "PET").mkdir()
    yy, xx = np.mgrid[:H, :W]
    for i, level in enumerate(range(40, 100, 10)):
        mri = ((brain.images[level, 0, :H, :W].numpy() + 1) * 127.5).round().astype(np.uint8)
        blob = np.exp(-((yy - 15 - i) ** 2 + (xx - 20) ** 2) / 60.0)
        pet = np.stack([255 * blob, 160 * blob**2, 40 * blob], -1).round().astype(np.uint8)
        Image.fromarray(mri).save(root / "MRI" / f"case{i}.png")
        Image.fromarray(pet).save(root / "PET" / f"case{i}.png")
    return root


@pytest.fixture(scope="module")
def trained_run(pairs, tmp_path_factory):
    """``meddiff fuse fit`` of a tiny model for a few steps on the pairs."""
    from meddiff.cli import app

    folder = tmp_path_factory.mktemp("fuse_run")
    config = write_config(
        folder / "fuse.yaml",
        {
            "task": "fuse",
            "data": {
                "kind": "paired_folder",
                "root": str(pairs),
                "modalities": ["MRI", "PET"],
                "size": 32,
                "fit": "random_crop",
                "short_side": 38,
            },
            "model": {"channels": [4, 8, 8], "heads": [2, 2], "blocks": [1, 1], "emb_dim": 8},
            "noise": {"prediction_type": "sample"},
            "train": {"steps": 3, "batch_size": 2, "log_every": 1, "sample_every": 3, "checkpoint_every": 3},
            "sampler": {"name": "ddim", "steps": 2},
            "grid_pairs": 2,
        },
    )
    result = CliRunner().invoke(app, ["fuse", "fit", str(config), "--out", str(folder / "run")])
    assert result.exit_code == 0, (result.output, result.exception)
    return folder / "run"


@pytest.mark.parametrize("command", ["fit", "run", "eval"])
def test_every_command_has_help_with_an_example(cli, command):
    assert "Example" in cli("fuse", command, "--help").output


def _check_outputs(out, pairs):
    for mri in sorted((pairs / "MRI").iterdir()):
        fused = np.asarray(Image.open(out / mri.name))
        assert fused.shape == (H, W, 3)  # grey + colour in -> colour out, at the input size
        assert np.asarray(Image.open(out / "y" / mri.name)).shape == (H, W)
    return json.loads((out / "manifest.json").read_text())


def test_rule_fuses_a_users_folders_without_training(cli, pairs, tmp_path):
    out = tmp_path / "max"
    cli("fuse", "run", "max", "--a", pairs / "MRI", "--b", pairs / "PET", "--out", out)
    manifest = _check_outputs(out, pairs)
    assert manifest["method"] == "max" and manifest["output_range"] == "clip" and len(manifest["files"]) == 6
    # The stored Y is the pixel max of the sources' grey levels (as the protocol reads them).
    a, b = read_gray(pairs / "MRI" / "case2.png"), read_gray(pairs / "PET" / "case2.png")
    np.testing.assert_allclose(read_gray(out / "y" / "case2.png"), np.maximum(a, b), atol=1)
    # Grey + grey stays grey.
    cli("fuse", "run", "average", "--a", pairs / "MRI", "--b", pairs / "MRI", "--out", tmp_path / "grey")
    assert np.asarray(Image.open(tmp_path / "grey" / "case0.png")).shape == (H, W)
    assert not (tmp_path / "grey" / "y").exists()


def test_trained_run_fuses_a_users_folders(cli, trained_run, pairs, tmp_path):
    assert (trained_run / "prior.json").exists()
    out = tmp_path / "model"
    cli("fuse", "run", trained_run, "--a", pairs / "MRI", "--b", pairs / "PET", "--out", out, "--steps", 2)
    manifest = _check_outputs(out, pairs)
    assert manifest["settings"]["steps"] == 2 and manifest["output_range"] == "minmax"
    assert read_gray(out / "y" / "case0.png").max() == 255  # min-max stretched
    assert manifest["settings"]["keep_background"] is True
    cli(
        "fuse",
        "run",
        trained_run,
        "--a",
        pairs / "MRI",
        "--b",
        pairs / "PET",
        "--out",
        tmp_path / "raw",
        "--steps",
        1,
        "--no-keep-background",
        "--range",
        "clip",
    )
    manifest = _check_outputs(tmp_path / "raw", pairs)
    assert manifest["settings"]["keep_background"] is False and manifest["output_range"] == "clip"


def test_eval_prints_and_saves_the_table(cli, pairs, tmp_path):
    out = tmp_path / "avg"
    cli("fuse", "run", "average", "--a", pairs / "MRI", "--b", pairs / "PET", "--out", out)
    printed = cli("fuse", "eval", "--a", pairs / "MRI", "--b", pairs / "PET", "--fused", out).output
    assert "Qabf" in printed and "SSIM_wang" in printed and "mean" in printed
    table = json.loads((out / "metrics.json").read_text())
    assert len(table["pairs"]) == 6 and set(table["mean"]) >= {"EN", "SSIM", "Qabf", "VIF", "PSNR", "SSIM_wang"}
    assert (out / "metrics.csv").read_text().splitlines()[-1].startswith("mean,")


def test_bad_input_is_one_clear_error(cli, pairs, tmp_path):
    (tmp_path / "B").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "B" / "case0.png")
    result = cli("fuse", "run", "max", "--a", pairs / "MRI", "--b", tmp_path / "B", "--out", tmp_path / "o", ok=False)
    assert isinstance(result.exception, UserError) and "case1" in str(result.exception)
    assert not (tmp_path / "o").exists()
    result = cli("fuse", "run", "median", "--a", pairs / "MRI", "--b", pairs / "PET", "--out", tmp_path / "o", ok=False)
    assert isinstance(result.exception, UserError) and "neither a fusion rule" in str(result.exception)
