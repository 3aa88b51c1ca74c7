"""The run folder: one layout, found the same way by every reader."""

import json

import pytest
import torch

from meddiff.checkpoint import save_checkpoint
from meddiff.errors import UserError
from meddiff.rundir import RunDir, resolve_checkpoint
from meddiff.train.engine import TrainConfig


def _checkpoint(path):
    return save_checkpoint(path, {"model": {"w": torch.ones(1)}}, {"step": 1})


def test_paths_follow_the_documented_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.config_file == tmp_path / "config.yaml"
    assert run.checkpoint(12) == tmp_path / "checkpoints" / "step_0000012"
    assert run.best == tmp_path / "checkpoints" / "best"
    assert run.sample_png(12) == tmp_path / "samples" / "step_0000012.png"
    assert run.log_file == tmp_path / "logs" / "train.jsonl"
    assert run.metrics_file == tmp_path / "metrics.json"


def test_step_checkpoints_are_listed_in_step_order_and_pruned_oldest_first(tmp_path):
    run = RunDir(tmp_path)
    for step in (10, 2, 100):
        _checkpoint(run.checkpoint(step))
    _checkpoint(run.best)
    assert [p.name for p in run.list_checkpoints()] == ["step_0000002", "step_0000010", "step_0000100"]
    run.prune(keep=2)
    assert [p.name for p in run.list_checkpoints()] == ["step_0000010", "step_0000100"]
    assert run.best.is_dir()  # only step checkpoints are pruned


def test_a_trained_run_is_not_overwritten_unless_resumed(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare(TrainConfig(steps=5), resume=False)
    assert "steps: 5" in run.config_file.read_text()
    _checkpoint(run.checkpoint(5))
    with pytest.raises(UserError, match="--resume"):
        run.prepare(TrainConfig(), resume=False)
    run.prepare(TrainConfig(), resume=True)


def test_starting_the_log_drops_the_records_of_an_interrupted_attempt(tmp_path):
    run = RunDir(tmp_path)
    run.start_log(0)
    for step in (10, 20, 30):
        run.log({"step": step, "loss": 1.0 / step})
    run.start_log(20)
    assert [r["step"] for r in run.read_log()] == [10, 20]


def test_metrics_are_written_whole_and_leave_no_temporary_file(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics({"miou": 0.5})
    assert json.loads(run.metrics_file.read_text()) == {"miou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_run_resolves_to_its_latest_checkpoint_and_a_checkpoint_to_itself(tmp_path):
    run = RunDir(tmp_path)
    _checkpoint(run.checkpoint(1))
    latest = _checkpoint(run.checkpoint(3))
    assert resolve_checkpoint(tmp_path) == latest
    assert resolve_checkpoint(latest) == latest


def test_resolve_names_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such run"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_preparing_a_run_removes_what_killed_writes_left(tmp_path):
    run = RunDir(tmp_path / "run")
    kept = _checkpoint(run.checkpoint(4))
    dead = 4194302  # above any pid Linux hands out by default
    folders = [
        run.checkpoints / f".step_0000008.tmp-{dead}",  # a checkpoint killed mid-write
        run.checkpoints / f".step_0000004.old-{dead}",  # killed while re-saving a step
    ]
    files = [run.root / f".config.yaml.{dead}.k2j3h4.tmp", run.samples / f".step_0000008.png.{dead}.x8d7.tmp"]
    live = run.root / ".report.html.1.a8f3.tmp"  # pid 1 runs: a writer that may still finish
    for folder in folders:
        folder.mkdir()
    for file in [*files, live]:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"half")
    (run.root / ".notes").write_text("a user's own hidden file")
    run.prepare(TrainConfig(), resume=True)
    assert not any(path.exists() for path in folders + files)
    assert run.list_checkpoints() == [kept] and (run.root / ".notes").exists() and live.exists()


def test_a_log_line_torn_by_a_kill_is_dropped_when_the_run_resumes(tmp_path):
    run = RunDir(tmp_path)
    run.start_log(0)
    for step in (1, 2):
        run.log({"step": step, "loss": 0.5})
    with open(run.log_file, "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-append
    assert [r["step"] for r in run.read_log()] == [1, 2]
    run.start_log(2)
    run.log({"step": 3, "loss": 0.25})
    assert run.read_log()[-1] == {"step": 3, "loss": 0.25}

    run.log_file.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"train\.jsonl: line 2 is not a JSON record"):
        run.read_log()
