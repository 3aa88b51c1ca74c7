"""atomic_write / atomic_folder: the target holds the old or the new content, never a mix, and no temporary
file or folder stays."""

import errno
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


def test_a_full_or_read_only_disk_is_a_user_error_naming_the_file(tmp_path, monkeypatch):
    target = atomic_write(tmp_path / "metrics.json", b"old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match=r"metrics.json: could not be written \(No space left on device\)"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_an_output_folder_filled_by_another_process_meanwhile_is_kept(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="another process wrote this output folder meanwhile"):
        with atomic_folder(out) as tmp:
            (tmp / "mine.png").write_bytes(b"mine")
            out.mkdir()
            (out / "theirs.png").write_bytes(b"theirs")
    assert os.listdir(out) == ["theirs.png"]
    assert os.listdir(tmp_path) == ["out"]


def test_an_output_folder_removes_the_temporary_a_killed_process_left(tmp_path):
    dead = tmp_path / ".out.tmp-4194302"  # above any pid Linux hands out by default
    alive = tmp_path / ".out.tmp-1"  # init: a running process that may still be writing
    dead.mkdir()
    alive.mkdir()
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a.png").write_bytes(b"png")
    assert not dead.exists() and alive.exists()
    assert os.listdir(tmp_path / "out") == ["a.png"]
