"""PSNR and SSIM between two image batches, per image or as the mean over the batch.

Data-range convention: meddiff images live in [-1, 1]; both metrics are computed after mapping them to
[0, 1] (``(x + 1) / 2``, clamped) with ``data_range=1``. PSNR is therefore the usual "8-bit style"
PSNR of images scaled to [0, 1]; it is 20*log10(2) ~= 6.02 dB *higher* than PSNR computed on [-1, 1]
values with data_range=1 would be, and identical to PSNR on [-1, 1] with data_range=2.

Channels: ``[N, C, H, W]`` with any C (1 for grey, 3 for RGB) is accepted, the same C for both inputs.
PSNR uses the mean squared error over all channels and pixels of an image; SSIM is computed per channel
and averaged over channels (scikit-image's ``channel_axis`` convention). SSIM uses the Gaussian window of
Wang et al. 2004 (sigma 1.5, 11 x 11, K1 0.01, K2 0.03, population covariances), averaged over the
pixels where the window lies inside the image (a 5-pixel border is excluded), so it needs H, W >= 11.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from meddiff.errors import UserError

Reduction = Literal["mean", "none"]

_SSIM_WINDOW = 11


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map images from meddiff's [-1, 1] to [0, 1], clamping values outside the range."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4:
        raise UserError(f"'pred' must be a [N, C, H, W] image batch, got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise UserError(f"'pred' has shape {tuple(pred.shape)} but 'target' has {tuple(target.shape)}; they must match")


def _reduce(per_image: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise UserError(f"'reduction' must be 'mean' or 'none', got {reduction!r}")


def psnr(pred: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """PSNR in dB of ``pred`` vs ``target`` (both ``[N, C, H, W]`` in [-1, 1]) on the [0, 1] scale.

    ``reduction="none"`` gives one value per image ``[N]``; ``"mean"`` averages those per-image values.
    Identical images give ``inf``.
    """
    _check_pair(pred, target)
    per_image = peak_signal_noise_ratio(
        to_unit_range(pred), to_unit_range(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return _reduce(per_image, reduction)


def ssim(pred: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """SSIM of ``pred`` vs ``target`` (both ``[N, C, H, W]`` in [-1, 1]) on the [0, 1] scale.

    ``reduction="none"`` gives one value per image ``[N]`` (channel-averaged); ``"mean"`` averages them.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < _SSIM_WINDOW:
        raise UserError(
            f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, "
            f"got 'pred' of {pred.shape[-2]}x{pred.shape[-1]}"
        )
    _, ssim_map = structural_similarity_index_measure(
        to_unit_range(pred),
        to_unit_range(target),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=_SSIM_WINDOW,
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        reduction="none",
        return_full_image=True,
    )
    # torchmetrics averages the SSIM map over the whole image, border included (computed on reflect-padded
    # input); Wang et al.'s reference code and scikit-image average only where the window fits inside the
    # image, so the border of half a window is cropped here to follow the reference definition.
    half = _SSIM_WINDOW // 2
    per_image = ssim_map[..., half:-half, half:-half].mean(dim=(1, 2, 3))
    return _reduce(per_image, reduction)
