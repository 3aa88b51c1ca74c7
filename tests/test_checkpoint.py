"""Checkpoints: nothing pickled, never half-written."""

import json
import os
import pickle

import pytest
import torch
from safetensors import SafetensorError

from meddiff import checkpoint as ckpt
from meddiff.errors import UserError
from meddiff.rundir import list_checkpoints, resolve_checkpoint


def _save(path, value=1.0):
    return ckpt.save_checkpoint(path, {"model": {"w": torch.full((2, 2), value)}}, {"step": int(value)})


def test_nested_state_round_trips_through_json_and_safetensors():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
        "param_groups": [{"lr": 1e-3, "params": [0], "betas": (0.9, 0.999), "foreach": None}],
    }
    tensors = {}
    data = json.loads(json.dumps(ckpt.flatten_state(state, tensors)))
    restored = ckpt.unflatten_state(data, tensors)
    assert list(restored["state"]) == [0]  # int keys stay ints (optimizer state needs them)
    assert torch.equal(restored["state"][0]["exp_avg"], torch.ones(2))
    assert restored["param_groups"][0]["betas"] == [0.9, 0.999]


def test_save_then_load(tmp_path):
    path = _save(tmp_path / "checkpoints" / "step_0000001")
    groups, state = ckpt.load_checkpoint(path)
    assert torch.equal(groups["model"]["w"], torch.ones(2, 2)) and state["step"] == 1
    assert resolve_checkpoint(tmp_path) == path


def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    first = _save(tmp_path / "checkpoints" / "step_0000001")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        _save(tmp_path / "checkpoints" / "step_0000002", 2.0)
    assert list_checkpoints(tmp_path) == [first]  # the half-written folder is hidden and ignored
    assert resolve_checkpoint(tmp_path) == first
    assert ckpt.load_checkpoint(first)[1]["step"] == 1


def test_a_full_disk_is_one_clear_error_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    first = _save(tmp_path / "checkpoints" / "step_0000001")

    def fill_disk(tensors, filename):  # what safetensors raises when the disk fills up mid-file
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", fill_disk)
    target = tmp_path / "checkpoints" / "step_0000002"
    with pytest.raises(UserError, match=r"step_0000002: could not be written \(No space left on device\); earlier"):
        _save(target, 2.0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000001"]
    assert ckpt.load_checkpoint(first)[1]["step"] == 1


def test_resaving_a_step_replaces_it_whole(tmp_path):
    path = tmp_path / "checkpoints" / "step_0000001"
    _save(path, 1.0)
    _save(path, 5.0)
    assert ckpt.load_checkpoint(path)[0]["model"]["w"][0, 0] == 5.0
    assert [p.name for p in path.parent.iterdir()] == ["step_0000001"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_crafted_to_run_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step_0000001"
    path.mkdir()
    (path / "state.json").write_text(json.dumps({"step": 1}))
    (path / "model.safetensors").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UserError, match=r"model\.safetensors.*not a valid safetensors"):
        ckpt.load_checkpoint(path)
    torch.save({"x": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil\.pt"):
        ckpt.load_tensors(tmp_path / "evil.pt")
    assert not marker.exists()
