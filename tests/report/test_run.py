"""Reading a run folder: JSON-lines logs written while training, dotted flattening, files by step."""

import os

import pytest

from meddiff.errors import UserError
from meddiff.report.run import by_step, flatten, read_json, read_jsonl, step_of


def test_read_jsonl_skips_blank_lines_and_a_half_written_last_line(tmp_path):
    log = tmp_path / "train.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_read_jsonl_rejects_a_bad_line_in_the_middle_naming_file_and_line(tmp_path):
    log = tmp_path / "train.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"train\.jsonl: line 2"):
        read_jsonl(log)


def test_missing_or_invalid_json_raises_user_error_naming_the_file(tmp_path):
    with pytest.raises(UserError, match=r"metrics\.json: file not found"):
        read_json(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text("{oops")
    with pytest.raises(UserError, match=r"metrics\.json: not valid JSON"):
        read_json(tmp_path / "metrics.json")


def test_flatten_joins_nested_keys_with_dots_and_keeps_lists():
    nested = {"fid": 12.0, "seg": {"dice": {"grey": 0.8}, "classes": [1, 2]}, "empty": {}}
    assert flatten(nested) == {"fid": 12.0, "seg.dice.grey": 0.8, "seg.classes": [1, 2], "empty": {}}


def test_by_step_orders_by_the_number_in_the_name_newest_first(tmp_path):
    names = ["step_000900.png", "step_010000.png", "final.png", "step_001000.png"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    ordered = [p.name for p in by_step([tmp_path / n for n in names])]
    assert ordered == ["step_010000.png", "step_001000.png", "step_000900.png", "final.png"]
    assert step_of(tmp_path / "step_000500.png") == 500 and step_of(tmp_path / "final.png") is None
