"""The broken-input corpus through the command line: every damaged file is refused with exit code 2 and
one line naming it, with no stack trace and no output written; valid unusual files are read.

A refusal by ``data inspect`` is its report: the file and its problem listed under "problems", exit code 2.
"""

import contextlib
import importlib
import io
import sys
from pathlib import Path

import pytest
import yaml
from benchmarks.faults import _brain_folders, task_config
from tests.conftest import tiny_generate_config
from tests.robustness.corpus import cases, config_fields, nested, write_config, wrong_value

from meddiff.cli import main
from meddiff.config import from_dict, to_dict
from meddiff.tasks import TASKS, generate, segment, synthesize

CASES = cases()


def module_config(task: str) -> type:
    module, name = TASKS[task]
    return getattr(importlib.import_module(module), name)


def run_cli(*args: str) -> tuple[int, list[str]]:
    """Exit code and the output lines (stdout and stderr) of ``meddiff ARGS`` run in this process."""
    output = io.StringIO()
    sys.argv = ["meddiff", *args]
    with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return code, [line for line in output.getvalue().splitlines() if not line.startswith("step ")]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """A segment fit run and a synthesize run trained for a step each (their inputs are what is tested)."""
    work = _brain_folders(tmp_path_factory.mktemp("runs"))
    one_step = {"train": {"steps": 1, "batch_size": 4}}
    for task, module in (("generate", generate), ("segment", segment), ("synthesize", synthesize)):
        settings = {**task_config(task, work), **(one_step if task != "segment" else {})}
        module.fit(from_dict(module_config(task), settings), work / "reference" / task, progress=False)
    return {"segment_run": work / "reference" / "segment", "synth_run": work / "reference" / "synthesize"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_broken_file_is_refused_in_one_line_naming_it(case, tmp_path, monkeypatch, request):
    monkeypatch.setattr(sys, "argv", sys.argv)
    root = tmp_path / "input"
    refused = case.build(root)
    write_config(case, root, {"task": "generate", **to_dict(tiny_generate_config(steps=1))})
    runs = request.getfixturevalue("trained_runs") if case.run_commands else {}
    for number, command in enumerate(case.commands + case.run_commands):
        out = tmp_path / f"out{number}"
        code, lines = run_cli(*(part.format(root=root, out=out, **runs) for part in command))
        text = "\n".join(lines)
        assert "Traceback" not in text, text
        if refused is None:  # a valid file: read without complaint
            assert code == 0, text
            continue
        assert code == 2, text
        if command[0] == "data":
            assert any(line.strip().startswith(f"- {refused}:") for line in lines), text
        else:
            errors = [line for line in lines if line.startswith("error:")]
            # fuse run reads the images folder as source A (root/a), so the file is named by its name
            assert len(errors) == 1 and f"{root}/" in errors[0] and f"{refused.name}:" in errors[0], text
        assert not out.exists()  # no partial output


FIELDS = [
    (task, key, tp)
    for task, (module, name) in TASKS.items()
    for key, tp in config_fields(getattr(importlib.import_module(module), name))
]


@pytest.mark.parametrize("task, key, tp", FIELDS, ids=[f"{task}:{key}" for task, key, _ in FIELDS])
def test_every_config_field_of_the_wrong_type_is_one_line_naming_it(task, key, tp, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": task, **nested(key, wrong_value(tp))}))
    code, lines = run_cli("train", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {config}: ") and f"'{key}" in lines[0], lines
    assert not (tmp_path / "run").exists()
