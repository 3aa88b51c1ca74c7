"""The command line: examples in every --help, user errors as one line and exit code 2, train + sample."""

import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image
from tests.conftest import REPO, tiny_generate_config

from meddiff.config import to_dict

COMMANDS = [["train"], ["sample"], ["demo"], ["report"], ["data", "inspect"]]


def meddiff(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "meddiff.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    done = meddiff(*command, "--help")
    assert done.returncode == 0 and "Example" in done.stdout


def _config(tmp_path, **changes):
    data = {"task": "generate", **to_dict(tiny_generate_config(steps=2))}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        data[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train.stpes": 3}, "unknown key 'train.stpes'"),
        ({"train.lr": "fast"}, "'train.lr' must be a number"),
        ({"model.channel_mults": 4}, "'model.channel_mults' must be a list"),
        ({"sampler.name": "euler-a"}, "'sampler.name' must be one of"),
    ],
)
def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path, meddiff_main, change, message):
    code, err = meddiff_main("train", _config(tmp_path, **change), "--out", tmp_path / "run")
    assert code == 2
    assert message in err and "config.yaml" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # no partial output


def test_missing_config_file_and_debug_traceback(tmp_path):
    done = meddiff("train", tmp_path / "nope.yaml")
    assert done.returncode == 2 and "nope.yaml: config file not found" in done.stderr
    debug = meddiff("--debug", "train", tmp_path / "nope.yaml")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_train_then_sample_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    trained = meddiff("train", _config(tmp_path), "--out", run)
    assert trained.returncode == 0, trained.stderr
    sampled = meddiff("sample", run, "--n", 2, "--sampler", "dpm++", "--steps", 3, "--out", tmp_path / "s")
    assert sampled.returncode == 0, sampled.stderr
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2
    bad = meddiff("sample", run, "--sampler", "euler-a", "--out", tmp_path / "t")
    assert bad.returncode == 2 and "--sampler 'euler-a'" in bad.stderr


def test_sampling_a_pickle_is_refused(tmp_path, meddiff_main):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")
    code, err = meddiff_main("sample", tmp_path / "model.pt", "--out", tmp_path / "s")
    assert code == 2 and "model.pt" in err


def test_inspect_exits_2_when_it_finds_problems(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "a.png")
    done = meddiff("data", "inspect", tmp_path)
    assert done.returncode == 2 and "a.png" in done.stdout


def test_example_configs_load():
    from meddiff.tasks import load_task_config

    for path in (REPO / "configs").glob("*.yaml"):
        task, config = load_task_config(path)
        assert task.TASK == config.__class__.__module__.rsplit(".", 1)[1]
