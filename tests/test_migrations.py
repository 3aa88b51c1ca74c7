"""Checkpoints of meddiff 0.1 read in today's layout."""

import torch

from meddiff.checkpoint import load_checkpoint, save_checkpoint


def test_a_0_1_engine_checkpoint_gets_the_named_optimiser_layout(tmp_path):
    state = {
        "step": 3,
        "meddiff_version": "0.1.0",
        "config": {"task": "generate", "model": {"base_channels": 8}},
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {"last_epoch": 3},
    }
    save_checkpoint(tmp_path / "c", {"model": {"w": torch.ones(1)}, "optimizer": {"m": torch.zeros(1)}}, state)
    groups, state = load_checkpoint(tmp_path / "c")
    assert set(groups) == {"model", "optimizer_model"}
    assert state["optimizers"] == {"model": {"state": {}, "param_groups": []}}
    assert state["lr_schedulers"] == {"model": {"last_epoch": 3}}
    assert state["config"]["model"]["context_pooled"] is False  # 0.1 UNets had no pooled text path


def test_a_0_1_pix2pix_checkpoint_keeps_both_networks_in_one_model_group(tmp_path):
    state = {"step": 1, "meddiff_version": "0.1.0", "config": {"task": "pix2pix"}, "optimizers": {"opt_g": {}}}
    groups = {"generator": {"w": torch.ones(1)}, "discriminator": {"w": torch.zeros(1)}, "opt_g": {"m": torch.ones(1)}}
    save_checkpoint(tmp_path / "c", groups, state)
    groups, state = load_checkpoint(tmp_path / "c")
    assert set(groups) == {"model"} and set(groups["model"]) == {"generator.w", "discriminator.w"}
    assert "optimizers" not in state  # 0.1's own loop cannot be resumed by the engine; it still loads


def test_a_current_checkpoint_is_read_as_written(tmp_path):
    from meddiff import __version__

    state = {"step": 1, "meddiff_version": __version__, "config": {"task": "generate", "model": {}}}
    save_checkpoint(tmp_path / "c", {"optimizer": {"m": torch.ones(1)}}, state)
    groups, loaded = load_checkpoint(tmp_path / "c")
    assert set(groups) == {"optimizer"} and loaded == state
