"""atomic_write / atomic_folder: the target holds the old or the new content, never a mix, and no temporary
file or folder stays."""

import os

import pytest

from meddiff.errors import UserError
from meddiff.files import atomic_folder, atomic_write


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


def test_atomic_folder_appears_complete_only_when_the_block_succeeds(tmp_path):
    with atomic_folder(tmp_path / "out") as work:
        (work / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_folder_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as work:
            (work / "a.txt").write_text("a")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        with atomic_folder(tmp_path / "out"):
            pass
