"""A real full disk and a real read-only filesystem: a 18 MB tmpfs mounted in a private mount namespace
(``unshare -rm``, no root needed) that holds two checkpoints of the tiny generator but not a third.

Training into it stops with one line naming the checkpoint and the reason, the checkpoints written before
stay loadable, and, once the filesystem is remounted read-only, resuming and sampling fail with one line
and write nothing.
"""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from tests.conftest import REPO, tiny_generate_config

from meddiff.config import to_dict

# Runs inside the namespace: mount, train until the disk is full, remount read-only, resume, sample.
DRIVER = r"""
import contextlib, io, json, subprocess, sys
from pathlib import Path
from meddiff.checkpoint import load_checkpoint
from meddiff.cli import main
from meddiff.rundir import list_checkpoints

config, disk = sys.argv[1], Path(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=18m", "tmpfs", str(disk)], check=True)

def cli(*args):
    err = io.StringIO()
    sys.argv = ["meddiff", *args]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue().strip().splitlines()

run = disk / "run"
report = {"train": cli("train", config, "--out", str(run))}
report["checkpoints"] = [p.name for p in list_checkpoints(run)]
report["loaded_step"] = load_checkpoint(list_checkpoints(run)[-1])[1]["step"]
report["hidden"] = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
report["resume"] = cli("train", config, "--out", str(run), "--resume")
report["sample"] = cli("sample", str(run), "--n", "2", "--steps", "2", "--out", str(disk / "samples"))
report["after"] = sorted(p.name for p in disk.iterdir())
print(json.dumps(report))
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces)")
def test_full_then_read_only_disk(tmp_path):
    config = tmp_path / "config.yaml"
    settings = to_dict(tiny_generate_config(steps=6, checkpoint_every=1, keep_checkpoints=2))
    config.write_text(yaml.safe_dump({"task": "generate", **settings}))
    (tmp_path / "disk").mkdir()
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", DRIVER, str(config), str(tmp_path / "disk")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])

    code, err = report["train"]  # progress lines, then the error
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and err[-1] == errors[0] and "Traceback" not in "\n".join(err), err
    assert "step_0000003: could not be written (No space left on device); earlier checkpoints are intact" in err[-1]
    assert report["checkpoints"] == ["step_0000001", "step_0000002"] and report["loaded_step"] == 2
    assert report["hidden"] == []  # the failed checkpoint's temporary folder is gone

    for command in ("resume", "sample"):
        code, err = report[command]
        assert code == 2 and len(err) == 1 and "could not be written (Read-only file system)" in err[0], err
    assert report["sample"][1][0].startswith(f"error: {tmp_path / 'disk' / 'samples'}: ")
    assert report["after"] == ["run"]  # no partial samples folder
