"""PSNR/SSIM agree with scikit-image's independent implementations under meddiff's range convention:
images in [-1, 1] are scored on [0, 1] with data_range=1."""

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddiff.errors import UserError
from meddiff.metrics.image import psnr, ssim


def _unit_images(rgb: bool) -> np.ndarray:
    """Two 64x64 images in [0, 1], ``[N, H, W, C]``."""
    if rgb:
        clean = data.astronaut()[::8, ::8] / 255.0
    else:
        clean = data.camera()[::8, ::8, None] / 255.0
    return np.stack([clean, clean[::-1]])


def _noisy(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = np.array([0.05, 0.15]).reshape(-1, 1, 1, 1)  # one noise level per image
    return np.clip(clean + rng.normal(0, 1, clean.shape) * sigma, 0, 1)


def _to_meddiff(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] in [0, 1] -> meddiff's [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() * 2 - 1


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_psnr_matches_skimage_per_image_and_mean(rgb):
    clean = _unit_images(rgb)
    noisy = _noisy(clean, seed=1)
    expected = [peak_signal_noise_ratio(c, n, data_range=1.0) for c, n in zip(clean, noisy, strict=True)]
    per_image = psnr(_to_meddiff(noisy), _to_meddiff(clean), reduction="none")
    assert per_image.shape == (2,)
    np.testing.assert_allclose(per_image.numpy(), expected, atol=1e-3)
    assert expected[0] > expected[1] + 5  # the two images really differ, so the per-image check means something
    assert psnr(_to_meddiff(noisy), _to_meddiff(clean)).item() == pytest.approx(np.mean(expected), abs=1e-3)


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_ssim_matches_skimage_gaussian_window_per_image(rgb):
    # skimage's defaults differ (7x7 uniform window, sample covariance); these settings are Wang et al.'s,
    # which meddiff uses. RGB: both average the per-channel SSIM.
    clean = _unit_images(rgb)
    noisy = _noisy(clean, seed=2)
    expected = [
        structural_similarity(
            c, n, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for c, n in zip(clean, noisy, strict=True)
    ]
    per_image = ssim(_to_meddiff(noisy), _to_meddiff(clean), reduction="none")
    np.testing.assert_allclose(per_image.numpy(), expected, atol=1e-4)
    assert ssim(_to_meddiff(noisy), _to_meddiff(clean)).item() == pytest.approx(np.mean(expected), abs=1e-4)


def test_psnr_is_on_the_unit_scale_not_on_minus_one_to_one():
    target = torch.zeros(1, 1, 16, 16)
    pred = target + 0.2  # error 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01 -> 20 dB
    assert psnr(pred, target).item() == pytest.approx(20.0, abs=1e-4)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    x = _to_meddiff(_unit_images(rgb=True))
    assert torch.isinf(psnr(x, x, reduction="none")).all()
    assert torch.allclose(ssim(x, x, reduction="none"), torch.ones(2))


def test_values_outside_the_range_are_clamped():
    target = torch.zeros(1, 1, 16, 16)
    assert psnr(target + 5.0, target).item() == pytest.approx(psnr(target + 1.0, target).item())


def test_mismatched_or_too_small_inputs_are_user_errors():
    with pytest.raises(UserError, match="'target'"):
        psnr(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(UserError, match="11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(UserError, match="reduction"):
        psnr(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16), reduction="sum")
