"""BT.601 YCbCr: exact round trip, grey has no chroma, colour modalities keep their colour after fusion."""

import torch

from meddiff.fusion.colour import chroma, colourise, luma, merged_chroma, rgb_to_ycbcr, ycbcr_to_rgb


def test_ycbcr_round_trip_and_bt601_weights():
    rgb = torch.rand(2, 3, 9, 7, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)
    ycc = rgb_to_ycbcr(rgb)
    on_unit = (rgb + 1) / 2  # JPEG's formulas on [0, 1]
    y = 0.299 * on_unit[:, 0] + 0.587 * on_unit[:, 1] + 0.114 * on_unit[:, 2]
    cb = 0.5 + (on_unit[:, 2] - y) / 1.772
    cr = 0.5 + (on_unit[:, 0] - y) / 1.402
    torch.testing.assert_close(ycc, torch.stack([y, cb, cr], 1) * 2 - 1, atol=1e-6, rtol=0)


def test_grey_has_zero_chroma_and_is_its_own_luma():
    grey = torch.rand(1, 1, 5, 5) * 2 - 1
    assert chroma(grey) is None
    assert luma(grey) is grey
    torch.testing.assert_close(chroma(grey.expand(-1, 3, -1, -1)), torch.zeros(1, 2, 5, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(luma(grey.expand(-1, 3, -1, -1)), grey)


def test_colour_in_colour_out_and_grey_grey_stays_grey():
    mri, pet = torch.rand(1, 1, 6, 8) * 2 - 1, torch.rand(1, 3, 6, 8) * 2 - 1
    assert merged_chroma(mri, mri) is None
    assert colourise(luma(mri), merged_chroma(mri, mri)).shape[1] == 1
    # Putting the colour source's own Y back with its chroma gives it back (where in gamut: everywhere here).
    torch.testing.assert_close(colourise(luma(pet), merged_chroma(mri, pet)), pet, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_chroma(pet, mri), chroma(pet))


def test_two_colour_sources_keep_the_more_saturated_chroma_per_pixel():
    a = torch.zeros(1, 3, 1, 2)
    b = torch.zeros(1, 3, 1, 2)
    a[0, :, 0, 0] = torch.tensor([0.8, -0.8, -0.8])  # red at pixel 0, grey at pixel 1
    b[0, :, 0, 1] = torch.tensor([-0.8, -0.8, 0.8])  # blue at pixel 1
    merged = merged_chroma(a, b)
    torch.testing.assert_close(merged[..., 0], chroma(a)[..., 0])
    torch.testing.assert_close(merged[..., 1], chroma(b)[..., 1])
