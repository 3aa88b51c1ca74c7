"""`meddiff edit fit` and `meddiff edit run` on a user's own image+mask folder."""

import json

import pytest
from tests.cli.conftest import user_data, write_config

from meddiff.errors import UserError

TINY = {
    "model": {
        "base_channels": 16,
        "channel_mults": [1, 2],
        "blocks_per_level": 1,
        "attention_levels": [1],
        "norm_groups": 8,
    },
    "train": {
        "steps": 6,
        "batch_size": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "sample_every": 1000,
        "checkpoint_every": 1000,
    },
    "sampler": {"name": "ddim", "steps": 3},
    "captions": {"prefix": "brain slice"},
    "alignment": {"steps": 4, "batch_size": 4, "image_size": 32},
    "grid_samples": 2,
}


@pytest.fixture(scope="module")
def edit_run(user_folder, tmp_path_factory):
    """A text-conditioned run trained by `meddiff edit fit` on the user's folder."""
    from typer.testing import CliRunner

    from meddiff.cli import app

    tmp = tmp_path_factory.mktemp("edit")
    config = write_config(tmp / "edit.yaml", {"task": "textgen", "data": user_data(user_folder), **TINY})
    result = CliRunner().invoke(app, ["edit", "fit", str(config), "--out", str(tmp / "run")])
    assert result.exit_code == 0, (result.output, result.exception)
    return tmp / "run"


def test_fit_writes_a_run_with_its_captions_and_alignment_network(edit_run):
    assert (edit_run / "captions.csv").read_text().splitlines()[1].split(",", 1)[1].startswith('"brain slice, ')
    assert (edit_run / "text_alignment" / "state.json").is_file()


def test_run_edits_an_image_and_its_mask_and_writes_outputs_grid_and_metrics(cli, edit_run, user_folder, tmp_path):
    out = tmp_path / "edits"
    cli(
        "edit",
        "run",
        "--model",
        edit_run,
        "--image",
        user_folder / "images" / "case059.png",
        "--mask",
        user_folder / "masks" / "case059.png",
        "--prompt",
        "brain slice, large white matter at centre",
        "--alphas",
        "0,1.4",
        "--interp",
        "slerp",
        "--seeds",
        "2",
        "--embed-steps",
        "2",
        "--finetune-steps",
        "2",
        "--steps",
        "3",
        "--out",
        out,
    )
    names = ["alpha0.00_seed0", "alpha0.00_seed1", "alpha1.40_seed0", "alpha1.40_seed1"]
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == names
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    for name in ("grid.png", "tradeoff.png", "input.png", "input_mask.png", "manifest.json"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interp"] == "slerp" and [row["alpha"] for row in metrics["per_alpha"]] == [0.0, 1.4]
    assert metrics["text_alignment_measure"].startswith("domain text alignment")
    assert set(metrics["stage_seconds"]) == {"A_embedding", "B_finetune", "C_sampling"}
    assert len(metrics["outputs"]) == 4 and all(o["ssim"] <= 1 for o in metrics["outputs"])


def test_run_needs_the_mask_of_a_joint_model_and_a_new_out_folder(cli, edit_run, user_folder, tmp_path):
    image = user_folder / "images" / "case059.png"
    result = cli(
        "edit", "run", "--model", edit_run, "--image", image, "--prompt", "x", "--out", tmp_path / "a", ok=False
    )
    assert isinstance(result.exception, UserError) and "pass the image's mask with --mask" in str(result.exception)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("keep")
    result = cli(
        "edit",
        "run",
        "--model",
        edit_run,
        "--image",
        image,
        "--mask",
        user_folder / "masks" / "case059.png",
        "--prompt",
        "x",
        "--out",
        tmp_path / "b",
        ok=False,
    )
    assert isinstance(result.exception, UserError) and "not empty" in str(result.exception)
