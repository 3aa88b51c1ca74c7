"""`edit.run` helpers: what counts as a collapsed output."""

import torch

from meddiff.edit.run import collapsed, output_name


def test_blank_and_saturated_outputs_count_as_collapsed_and_real_images_do_not():
    from meddiff.data.samples import brain_mri

    real = brain_mri(32).images[50:52]
    black = torch.full((1, 1, 32, 32), -1.0)
    flat_grey = torch.zeros(1, 1, 32, 32) + 0.01 * torch.randn(1, 1, 32, 32)
    saturated = torch.where(torch.rand(1, 3, 32, 32) < 0.5, -1.0, 1.0)  # all pixels at the range ends
    assert collapsed(torch.cat([black, flat_grey])).tolist() == [True, True]
    assert collapsed(saturated).tolist() == [True]
    assert collapsed(real).tolist() == [False, False]


def test_output_names_carry_alpha_and_seed():
    assert output_name(1.4, 2) == "alpha1.40_seed2"
