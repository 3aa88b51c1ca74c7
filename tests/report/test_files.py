"""atomic_write: the target holds the old or the new bytes, never a mix, and no temporary file stays."""

import os

import pytest

from meddiff.report.files import atomic_write


def test_writes_bytes_and_creates_parent_folders(tmp_path):
    path = atomic_write(tmp_path / "a" / "b" / "out.bin", b"hello")
    assert path.read_bytes() == b"hello"
    assert os.listdir(path.parent) == ["out.bin"]


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = atomic_write(tmp_path / "report.html", b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["report.html"]
