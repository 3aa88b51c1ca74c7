"""Paired source folders: matching by name, one clear error for bad input, atomic output folders."""

import numpy as np
import pytest
from PIL import Image

from meddiff.errors import UserError
from meddiff.fusion.folders import FusedFolder, list_pairs, match_fused, read_source


def _save(path, shape=(10, 12), colour=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(0).integers(0, 256, (*shape, 3) if colour else shape, dtype=np.uint8)
    Image.fromarray(array).save(path)


def test_pairs_match_by_name_whatever_the_extension(tmp_path):
    _save(tmp_path / "a" / "x.png")
    _save(tmp_path / "b" / "x.jpg", colour=True)
    [(name, path_a, path_b)] = list_pairs(tmp_path / "a", tmp_path / "b")
    assert (name, path_a.name, path_b.name) == ("x", "x.png", "x.jpg")
    assert read_source(path_a).shape == (1, 1, 10, 12)
    assert read_source(path_b).shape == (1, 3, 10, 12)
    assert read_source(path_a).min() >= -1 and read_source(path_a).max() <= 1


def test_a_missing_partner_or_a_size_mismatch_names_the_file(tmp_path):
    _save(tmp_path / "a" / "x.png")
    _save(tmp_path / "a" / "y.png")
    _save(tmp_path / "b" / "x.png", shape=(10, 12))
    with pytest.raises(UserError, match="y"):
        list_pairs(tmp_path / "a", tmp_path / "b")
    _save(tmp_path / "b" / "y.png", shape=(11, 12))
    with pytest.raises(UserError, match=r"y\.png"):
        list_pairs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(UserError, match="nowhere"):
        list_pairs(tmp_path / "nowhere", tmp_path / "b")


def test_fused_folder_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "fused"
    with pytest.raises(RuntimeError):
        with FusedFolder(out) as folder:
            folder.write("x", np.zeros((4, 4), np.uint8))
            raise RuntimeError("interrupted")
    assert not out.exists() and not list(tmp_path.iterdir())
    with FusedFolder(out) as folder:
        folder.write("x", np.zeros((4, 4, 3), np.uint8), luma=np.zeros((4, 4), np.uint8))
        folder.manifest({"method": "max"})
    assert sorted(p.name for p in out.rglob("*")) == ["manifest.json", "x.png", "x.png", "y"]
    with pytest.raises(UserError, match="not empty"):
        FusedFolder(out)


def test_match_fused_prefers_the_fused_luma_and_reports_missing_images(tmp_path):
    _save(tmp_path / "a" / "x.png")
    _save(tmp_path / "b" / "x.png")
    pairs = list_pairs(tmp_path / "a", tmp_path / "b")
    _save(tmp_path / "f" / "x.png", colour=True)
    assert match_fused(pairs, tmp_path / "f")[0] == tmp_path / "f" / "x.png"
    _save(tmp_path / "f" / "y" / "x.png")
    assert match_fused(pairs, tmp_path / "f")[0] == tmp_path / "f" / "y" / "x.png"
    _save(tmp_path / "other" / "z.png")
    with pytest.raises(UserError, match="no fused image named 'x"):
        match_fused(pairs, tmp_path / "other")
    _save(tmp_path / "small" / "x.png", shape=(8, 8))
    with pytest.raises(UserError, match=r"x\.png"):
        match_fused(pairs, tmp_path / "small")
