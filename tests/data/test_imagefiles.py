import numpy as np
import pytest
from PIL import Image

from meddiff.data.imagefiles import read_image, read_mask
from meddiff.errors import UserError

from .makers import grey, rgb, write_image


def test_8bit_grey_and_colour(tmp_path):
    g = read_image(write_image(tmp_path / "g.png", grey()))
    c = read_image(write_image(tmp_path / "c.png", rgb()))
    assert g.shape == (1, 24, 32) and c.shape == (3, 24, 32) and g.dtype == np.float32
    assert np.allclose(g[0], grey() / 255.0)


def test_rgb_file_with_equal_channels_is_grey(tmp_path):
    path = write_image(tmp_path / "mri.png", np.repeat(grey()[..., None], 3, axis=2))
    assert read_image(path).shape == (1, 24, 32)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_scaled_by_dtype_range_or_percentile(tmp_path, suffix):
    values = (np.arange(24 * 32).reshape(24, 32) * 4).astype(np.uint16)  # 12-bit data in a 16-bit file
    path = write_image(tmp_path / f"x{suffix}", values)
    assert Image.open(path).mode == "I;16"
    ranged = read_image(path)
    assert np.isclose(ranged.max(), values.max() / 65535) and ranged.min() == 0
    stretched = read_image(path, intensity="percentile")
    assert stretched.min() == 0 and stretched.max() == 1


def test_float_tiff_outside_unit_range_is_percentile_stretched(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.linspace(-500, 1500, 24 * 32, dtype=np.float32).reshape(24, 32)).save(path)
    image = read_image(path)
    assert image.min() == 0 and image.max() == 1


def test_opaque_rgba_becomes_rgb(tmp_path):
    rgba = np.dstack([rgb(), np.full((24, 32), 255, np.uint8)])
    image = read_image(write_image(tmp_path / "a.png", rgba))
    assert image.shape == (3, 24, 32) and np.allclose(image, rgb().transpose(2, 0, 1) / 255.0)


def test_transparent_rgba_is_rejected_naming_the_file(tmp_path):
    rgba = np.dstack([rgb(), np.full((24, 32), 255, np.uint8)])
    rgba[0, :5, 3] = 0
    path = write_image(tmp_path / "see_through.png", rgba)
    with pytest.raises(UserError, match=r"see_through\.png.*5 transparent pixels"):
        read_image(path)


def test_truncated_and_non_image_files(tmp_path):
    full = write_image(tmp_path / "full.png", rgb(64, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(UserError, match=r"cut\.png: unreadable image, the file is truncated"):
        read_image(cut)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match=r"notes\.png: not an image file"):
        read_image(text)


def test_palette_mask_reads_indices(tmp_path):
    ids = np.array([[0, 1], [2, 5]], dtype=np.uint8)
    im = Image.fromarray(ids, mode="L").convert("P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [9] * 759)
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "p.png"), ids)


def test_rgb_masks_equal_channels_or_colour_coded(tmp_path):
    ids = np.array([[0, 1], [1, 2]], dtype=np.uint8)
    assert np.array_equal(read_mask(write_image(tmp_path / "eq.png", np.repeat(ids[..., None], 3, 2))), ids)
    colours = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2}
    coded = np.array([[[0, 0, 0], [255, 0, 0]], [[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    path = write_image(tmp_path / "coded.png", coded)
    assert np.array_equal(read_mask(path, colours), ids)
    with pytest.raises(UserError, match=r"coded\.png: colour-coded RGB mask, but no class map"):
        read_mask(path)
    coded[0, 0] = (1, 2, 3)
    with pytest.raises(UserError, match=r"coded\.png: colour \(1, 2, 3\) is not in the class map"):
        read_mask(write_image(tmp_path / "coded.png", coded), colours)


def test_16bit_mask_keeps_large_ids(tmp_path):
    ids = np.array([[0, 300], [1000, 2]], dtype=np.uint16)
    assert np.array_equal(read_mask(write_image(tmp_path / "m.png", ids)), ids)


def test_multipage_tiff_is_rejected(tmp_path):
    pages = [Image.fromarray(grey(seed=i)) for i in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(UserError, match=r"stack\.tif: has 3 frames"):
        read_image(tmp_path / "stack.tif")
