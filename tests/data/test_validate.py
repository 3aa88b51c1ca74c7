from pathlib import Path

import pytest

from meddiff.data.validate import check_same_size, list_images, pair_files, raise_first
from meddiff.errors import UserError

from .makers import grey, write_image


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=f"{tmp_path}: no image files found"):
        list_images(tmp_path)


def test_pairing_reports_both_directions_and_duplicates(tmp_path):
    for name in ("images/a.png", "images/b.png", "images/b.jpg", "masks/a.png", "masks/c.png"):
        write_image(tmp_path / name, grey())
    images, masks = tmp_path / "images", tmp_path / "masks"
    pairs, problems = pair_files(list_images(images), images, list_images(masks), masks)
    assert [key for key, _, _ in pairs] == ["a"]
    assert any("b.png: has the same name as" in p for p in problems)
    assert any(p.startswith(f"{images / 'b.jpg'}: image has no mask") for p in problems)
    assert any(p.startswith(f"{masks / 'c.png'}: mask has no image") for p in problems)


def test_raise_first_counts_the_rest():
    with pytest.raises(UserError, match=r"^x\.png: bad \(2 more problem\(s\); 'meddiff data inspect root'"):
        raise_first(["x.png: bad", "y", "z"], Path("root"))
    raise_first([], Path("root"))


def test_size_mismatch_names_both_files():
    with pytest.raises(UserError, match=r"m\.png: size 30x20 \(WxH\) differs from i\.png \(32x24\)"):
        check_same_size(Path("i.png"), (24, 32), Path("m.png"), (20, 30))
