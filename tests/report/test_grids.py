"""Grids, coloured masks and overlays: exact shapes and pixel values, as uint8 RGB arrays."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from meddiff.data.labels import IGNORE_INDEX, palette
from meddiff.report.grids import colorize_mask, encode_png, image_grid, overlay, pairs_grid, save_png, to_rgb


def gray(n, h, w, value=0.0):
    return torch.full((n, 1, h, w), value)


def test_to_rgb_maps_minus_one_to_black_one_to_white_and_replicates_gray():
    images = torch.tensor([-1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 4)
    rgb = to_rgb(images)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 1, 4, 3)
    assert rgb[0, 0, :, 0].tolist() == [0, 128, 255, 255]  # out-of-range values are clipped
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_image_grid_shape_arithmetic():
    # 5 images of 4x6, 3 per row -> 2 rows x 3 columns, 2-px frames around every tile.
    grid = image_grid(gray(5, 4, 6), nrow=3, pad=2)
    assert grid.shape == (2 * 4 + 3 * 2, 3 * 6 + 4 * 2, 3) and grid.dtype == np.uint8
    # scale enlarges the images, not the frames; fewer images than nrow -> one row of just those.
    assert image_grid(gray(5, 4, 6), nrow=3, pad=2, scale=4).shape == (2 * 16 + 3 * 2, 3 * 24 + 4 * 2, 3)
    assert image_grid(gray(2, 4, 6), nrow=8, pad=1).shape == (4 + 2, 2 * 6 + 3, 3)


def test_image_grid_places_images_row_by_row_and_fills_the_rest_with_pad_value():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 1.0, -1.0)])  # black, white, black
    grid = image_grid(images, nrow=2, pad=1, pad_value=200)
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 255).all() and (grid[6:10, 1:5] == 0).all()
    assert (grid[6:10, 6:10] == 200).all()  # the missing 4th tile
    assert (grid[0] == 200).all() and (grid[:, 5] == 200).all()  # frame lines


def test_image_grid_upscales_with_nearest_neighbour():
    image = torch.tensor([[-1.0, 1.0]]).reshape(1, 1, 1, 2)
    grid = image_grid(image, nrow=1, pad=0, scale=3)
    assert grid[..., 0].tolist() == [[0, 0, 0, 255, 255, 255]] * 3


def test_colorize_mask_uses_the_fixed_palette_and_grey_for_ignore():
    mask = torch.tensor([[0, 1, 2, IGNORE_INDEX]])
    colours = colorize_mask(mask, num_classes=3)
    assert colours.shape == (1, 4, 3) and colours.dtype == np.uint8
    assert (colours[0] == palette(3)[[0, 1, 2, 255]]).all()
    assert colours[0, 3].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="class id 3"):
        colorize_mask(torch.tensor([[3]]), num_classes=3)


def test_overlay_blends_the_palette_colour_with_alpha_and_leaves_background_and_ignore_untouched():
    value = 2 * 100 / 255 - 1  # a grey image whose pixels are 100 in uint8
    image = torch.full((1, 2, 2), value)
    mask = torch.tensor([[2, 0], [IGNORE_INDEX, 1]])
    out = overlay(image, mask, num_classes=3, alpha=0.45)
    expected = np.rint(0.55 * 100 + 0.45 * palette(3)[2].astype(float))
    assert out.shape == (2, 2, 3) and out[0, 0].tolist() == expected.tolist()
    assert out[0, 1].tolist() == [100, 100, 100]  # class 0: background stays visible
    assert out[1, 0].tolist() == [100, 100, 100]  # 255: ignore is never covered
    covered = overlay(image, mask, num_classes=3, alpha=0.45, show_background=True)
    assert covered[0, 1].tolist() == np.rint(0.55 * np.array([100, 100, 100])).tolist()  # blended with black


def test_overlay_takes_batches_and_checks_shapes():
    assert overlay(gray(3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.long), 2).shape == (3, 4, 5, 3)
    with pytest.raises(ValueError, match="does not match"):
        overlay(gray(1, 4, 5), torch.zeros(1, 5, 4, dtype=torch.long), 2)


def test_pairs_grid_puts_each_image_next_to_its_overlay():
    images = torch.rand(3, 1, 4, 5) * 2 - 1
    masks = torch.randint(0, 3, (3, 4, 5))
    grid = pairs_grid(images, masks, num_classes=3, ncol=2, pad=1)
    # 2 pairs per row -> 2 rows; a pair is 5 + 1 + 5 wide; pairs are 3 * pad apart.
    assert grid.shape == (2 * 4 + 3 * 3, 2 * (2 * 5 + 1) + 3 * 3, 3)
    first_image, first_overlay = grid[3:7, 3:8], grid[3:7, 9:14]
    assert (first_image == to_rgb(images[0])).all()
    assert (first_overlay == overlay(images[0], masks[0], 3)).all()


def test_save_png_round_trips_and_leaves_no_temporary_file(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = save_png(array, tmp_path / "grids" / "g.png")
    assert (np.asarray(Image.open(path)) == array).all()
    assert os.listdir(path.parent) == ["g.png"]


def test_encode_png_rejects_float_arrays():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3)))
