"""The pix2pix baseline: it learns, resumes exactly, respects its time budget and exports like synthesis."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meddiff import devices
from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.errors import UserError
from meddiff.tasks import pix2pix
from meddiff.train.engine import seed_everything

BRAIN = ["background", "other brain tissue", "grey matter", "white matter"]


def tiny_pix2pix_config(steps: int = 40, **train) -> pix2pix.Pix2PixConfig:
    """A pix2pix model on the 32 px brain slices that trains in seconds."""
    return from_dict(
        pix2pix.Pix2PixConfig,
        {
            "data": {"kind": "brain_mri", "size": 32},
            "model": {"base_channels": 16, "max_channels": 64, "depth": 5, "disc_channels": 16, "norm_groups": 8},
            "train": {
                "steps": steps,
                "batch_size": 4,
                "lr": 1e-3,
                "log_every": 1,
                "sample_every": 10_000,
                "checkpoint_every": 10_000,
                **train,
            },
            "grid_samples": 2,
        },
    )


@pytest.fixture(scope="module")
def pix2pix_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pix2pix") / "run"
    result = pix2pix.fit(tiny_pix2pix_config(), run, progress=False)
    return run, result


def test_pix2pix_trains_for_a_few_steps_and_its_generator_loss_falls(pix2pix_run):
    run, result = pix2pix_run
    assert result.step == 40 and result.checkpoint.name == "step_0000040"
    log = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert {"loss", "loss_discriminator"} <= set(log[0])  # the generator's loss (mostly 100 x L1) is "loss"
    assert np.mean([r["loss"] for r in log[-10:]]) < 0.7 * np.mean([r["loss"] for r in log[:5]])
    assert (run / "samples" / "step_0000040.png").is_file()


def test_training_keeps_losses_finite_and_updates_every_layer_of_the_generator(pix2pix_run):
    run, result = pix2pix_run
    assert all(np.isfinite(loss) for loss in result.losses.values())
    trained = pix2pix.load(run)
    seed_everything(tiny_pix2pix_config().train.seed)
    initial = pix2pix._networks(trained.stored).generator  # the same seeded initialisation fit starts from
    before, after = initial.state_dict(), trained.generator.state_dict()
    moved = [name for name in after if not torch.equal(before[name], after[name])]
    assert len(moved) == len(after)


def test_resume_continues_exactly(tmp_path):
    straight = pix2pix.fit(tiny_pix2pix_config(steps=4, checkpoint_every=2), tmp_path / "a", progress=False)
    pix2pix.fit(tiny_pix2pix_config(steps=2), tmp_path / "b", progress=False)
    resumed = pix2pix.fit(tiny_pix2pix_config(steps=4), tmp_path / "b", resume=True, progress=False)
    assert list(resumed.losses) == [3, 4]
    assert [resumed.losses[s] for s in (3, 4)] == pytest.approx([straight.losses[s] for s in (3, 4)], rel=1e-5)


def test_the_time_budget_stops_training_with_a_checkpoint(tmp_path):
    result = pix2pix.fit(tiny_pix2pix_config(steps=100, max_minutes=0.0), tmp_path / "run", progress=False)
    assert result.stopped_by_budget and result.step == 1 and result.checkpoint.is_dir()


def test_run_exports_a_dataset_folder_with_a_manifest(pix2pix_run, tmp_path):
    run, _ = pix2pix_run
    brain = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    (tmp_path / "masks").mkdir()
    Image.fromarray(brain.masks[70].numpy().astype(np.uint8)).save(tmp_path / "masks" / "m.png")
    out = pix2pix.run(run, tmp_path / "masks", tmp_path / "out", n_per_mask=2, seed=3)
    loaded = build_dataset(
        from_dict(DataConfig, {"kind": "image_mask_folder", "root": str(out), "size": 32, "class_names": BRAIN})
    )
    assert loaded.names == ["m_0", "m_1"]
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files[1]["sampler"] == "pix2pix" and files[1]["seed"] == 4 and files[1]["model"].endswith("step_0000040")
    assert (loaded.images[0] - loaded.images[1]).abs().mean() > 0  # dropout: two draws differ


def test_a_trained_run_is_not_overwritten_and_unlabelled_data_is_refused(pix2pix_run, tmp_path):
    run, _ = pix2pix_run
    with pytest.raises(UserError, match="already holds a trained run"):
        pix2pix.fit(tiny_pix2pix_config(), run, progress=False)
    (tmp_path / "u").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "u" / "a.png")
    config = tiny_pix2pix_config()
    config.data = from_dict(DataConfig, {"kind": "image_folder", "root": str(tmp_path / "u"), "size": 32})
    with pytest.raises(UserError, match="needs images with masks"):
        pix2pix.fit(config, tmp_path / "run", progress=False)


def test_bf16_training_keeps_losses_finite(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)  # bf16 even where it is emulated
    result = pix2pix.fit(tiny_pix2pix_config(steps=3, mixed_precision="bf16"), tmp_path / "run", progress=False)
    assert result.step == 3 and all(np.isfinite(loss) for loss in result.losses.values())
