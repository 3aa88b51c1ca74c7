"""One writer per run folder: a second process training into a run folder is refused while the first holds
it, a lock left by a killed process is taken over, and every task's fit gives its lock back."""

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from tests.conftest import tiny_generate_config

from meddiff import runlock
from meddiff.config import to_dict
from meddiff.errors import UserError
from meddiff.rundir import RunDir
from meddiff.tasks import generate

HOLD = (
    "import sys, time; from meddiff import runlock; runlock.acquire(sys.argv[1]); "
    "print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def other_writer():
    """Start another process that takes the lock of a folder and keeps it until killed; yields a starter."""
    started = []

    def start(folder):
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_second_process_is_refused_naming_the_holder(tmp_path, other_writer):
    holder = other_writer(tmp_path / "run")
    refusal = rf"another meddiff process is training into this run folder \(pid {holder.pid} on"
    with pytest.raises(UserError, match=refusal):
        RunDir(tmp_path / "run").prepare(tiny_generate_config(), resume=True)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, other_writer):
    holder = other_writer(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / "run" / runlock.LOCK_FILE).read_text())["pid"] == holder.pid  # stale file

    RunDir(tmp_path / "run").prepare(tiny_generate_config(), resume=False)
    assert json.loads((tmp_path / "run" / runlock.LOCK_FILE).read_text())["pid"] == os.getpid()
    runlock.release(tmp_path / "run")


def test_fit_gives_the_lock_back_when_it_ends_or_fails(tmp_path, monkeypatch):
    generate.fit(tiny_generate_config(steps=1), tmp_path / "run", progress=False)
    assert runlock._key(tmp_path / "run") not in runlock._held
    assert (tmp_path / "run" / runlock.LOCK_FILE).read_text() == ""  # released: emptied, left in place

    def crash(*args, **kwargs):
        raise RuntimeError("mid-training crash")

    monkeypatch.setattr(generate, "Trainer", crash)
    with pytest.raises(RuntimeError):
        generate.fit(tiny_generate_config(steps=2), tmp_path / "run", resume=True, progress=False)
    assert runlock._key(tmp_path / "run") not in runlock._held


def test_only_rank_zero_of_a_launch_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    runlock.acquire(tmp_path / "run")
    assert runlock._key(tmp_path / "run") not in runlock._held


def test_cli_train_into_a_folder_being_trained_is_one_line(tmp_path, other_writer, meddiff_main):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "generate", **to_dict(tiny_generate_config(steps=1))}))
    holder = other_writer(tmp_path / "run")
    code, err = meddiff_main("train", config, "--out", tmp_path / "run", "--resume")
    assert code == 2 and f"pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [runlock.LOCK_FILE]  # nothing else written
