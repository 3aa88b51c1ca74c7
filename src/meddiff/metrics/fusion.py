"""The image-fusion evaluation protocol of the published MRI-CT/PET/SPECT tables (CDDFuse, DDFM, EMMA, Diff-IF).

Every number in those papers comes from the CDDFuse repository's evaluator (``utils/Evaluator.py``); these
functions reproduce its semantics exactly (see ``../shared/reference/fusion-metrics.md``), vectorised:

- Images are 2D float arrays of 8-bit grey levels 0..255: files are read as 8-bit, converted to grey with
  BT.601 luma (the Y of YCbCr, as OpenCV's BGR2GRAY on float input) and rounded (``read_gray``). Colour
  modalities (PET, SPECT) are therefore scored on their Y channel.
- A fused image is brought to 8 bits before scoring, either min-max stretched to [0, 255] (what the
  published learned models do) or clipped to [0, 255] (right for classic multi-scale rules, whose ringing a
  stretch would amplify): ``to_uint8``. Results must say which.
- ``F`` is the fused image, ``A`` and ``B`` the sources. Scores are per pair; a table reports the mean.

SSIM is the evaluator's: scikit-image defaults (7x7 uniform window, sample covariance) with
``data_range=2.0`` (what old scikit-image assumed for any float input), summed over both sources. On 0..255
images that makes the stabilising constants negligible. ``ssim_wang`` is the other convention (11x11
Gaussian, sigma 1.5, population covariance, L = 255): about 0.2 higher per pair, never to be mixed up.

MI is computed from the joint histogram of the distinct grey values (the same as scikit-learn's
``mutual_info_score``, which the evaluator calls), so scikit-learn is not needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from scipy.ndimage import correlate1d
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from meddiff.data.imagefiles import image_array, open_image

# Order of the published tables (CDDFuse Table 5, DDFM, EMMA, Diff-IF) ...
PUBLISHED_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
# ... and every metric this module computes (the published ones plus AG, CC and PSNR).
METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "CC", "VIF", "Qabf", "SSIM", "PSNR")
OutputRange = Literal["minmax", "clip"]

_BT601 = np.array([0.299, 0.587, 0.114])
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)


# -- the read / normalise pipeline ------------------------------------------------------------------------
def gray_levels(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` grey or ``[H, W, 3]`` / ``[3, H, W]`` RGB values 0..255 -> rounded BT.601 luma ``[H, W]``
    float64 (OpenCV's BGR2GRAY on float input, then ``np.round``, as the evaluator reads files)."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else x @ _BT601
    if x.ndim != 2:
        raise ValueError(f"expected a 2D grey or RGB image, got shape {np.shape(image)}")
    return np.round(x)


def read_gray(path: Path) -> np.ndarray:
    """Read an image file as the evaluator does: 8-bit values, BT.601 grey, rounded; ``[H, W]`` float64."""
    path = Path(path)
    return gray_levels(image_array(open_image(path), path) * 255.0)


def to_uint8(fused: np.ndarray, mode: OutputRange) -> np.ndarray:
    """A fused float image (any range) -> the uint8 image that is saved and scored.

    ``minmax`` stretches its min..max to 0..255 (a constant image becomes 0); ``clip`` keeps values and
    clips them to 0..255. Both round to the nearest level.
    """
    x = np.asarray(fused, dtype=np.float64)
    if mode == "minmax":
        low, high = x.min(), x.max()
        x = (x - low) / (high - low) * 255.0 if high > low else np.zeros_like(x)
    elif mode != "clip":
        raise ValueError(f"output range must be 'minmax' or 'clip', got {mode!r}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# -- single-image metrics -----------------------------------------------------------------------------------
def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-level histogram of ``uint8(round(F))``."""
    counts = np.bincount(np.round(f).astype(np.uint8).ravel(), minlength=256)
    h = counts[counts > 0] / f.size
    return float(-(h * np.log2(h)).sum())


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation of F."""
    return float(np.std(f))


def spatial_frequency(f: np.ndarray) -> float:
    """SF: sqrt(mean squared horizontal difference + mean squared vertical difference)."""
    row = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    col = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(row + col))


def average_gradient(f: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2) with central differences (one-sided at the borders)."""
    gx, gy = np.gradient(f, axis=1), np.gradient(f, axis=0)  # numpy's edge_order=1 = the evaluator's borders
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


# -- metrics of a fused image against its two sources ------------------------------------------------------
def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI in nats between the value labels of ``x`` and ``y`` (scikit-learn ``mutual_info_score``)."""
    _, xi = np.unique(x.ravel(), return_inverse=True)
    _, yi = np.unique(y.ravel(), return_inverse=True)
    ny = yi.max() + 1
    joint = np.bincount(xi * ny + yi, minlength=(xi.max() + 1) * ny).reshape(-1, ny) / x.size
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(max(0.0, (joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum()))


def mutual_information(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI: MI(F, A) + MI(F, B) in nats, each grey level a bin (not normalised)."""
    return _mutual_information(f, a) + _mutual_information(f, b)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / np.sqrt((dx**2).sum() * (dy**2).sum()))


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD: corr(A, F - B) + corr(B, F - A), Pearson over the whole image."""
    return _corr(a, f - b) + _corr(b, f - a)


def correlation(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """CC: (corr(A, F) + corr(B, F)) / 2."""
    return (_corr(a, f) + _corr(b, f)) / 2


def psnr(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """PSNR: 10 log10(max(F)^2 / ((MSE(A, F) + MSE(B, F)) / 2)); the peak is max(F), not 255."""
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    return float(10 * np.log10(np.max(f) ** 2 / mse))


def _vif_window(n: int) -> np.ndarray:
    """The 1D factor of the evaluator's normalised N x N Gaussian (sigma N/5); its outer product is the 2D
    window exactly (the evaluator's eps-truncation never applies at N <= 17)."""
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x * x) / (2 * (n / 5) ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' filtering with the separable symmetric window ``outer(g, g)``: two 1D passes, keeping only
    the pixels whose window lies inside the image (so the boundary mode never matters)."""
    r = (len(g) - 1) // 2
    y = correlate1d(correlate1d(x, g, axis=0), g, axis=1)
    return y[r : x.shape[0] - r, r : x.shape[1] - r]


def vifp(ref: np.ndarray, dist: np.ndarray, sigma_n_sq: float = 2.0, eps: float = 1e-10) -> float:
    """Pixel-domain multiscale VIF of ``dist`` against ``ref`` (Sheikh-Bovik vifp, 4 scales), the
    evaluator's version; NaN (e.g. a constant reference) counts as 1."""
    num = den = 0.0
    for scale in range(1, 5):
        g = _vif_window(2 ** (5 - scale) + 1)
        if scale > 1:
            ref, dist = _filter_valid(ref, g)[::2, ::2], _filter_valid(dist, g)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, g), _filter_valid(dist, g)
        s1 = np.maximum(_filter_valid(ref * ref, g) - mu1 * mu1, 0)
        s2 = np.maximum(_filter_valid(dist * dist, g) - mu2 * mu2, 0)
        s12 = _filter_valid(ref * dist, g) - mu1 * mu2
        gain = s12 / (s1 + eps)
        sv = s2 - gain * s12
        flat_ref, flat_dist = s1 < eps, s2 < eps
        gain[flat_ref], sv[flat_ref], s1[flat_ref] = 0, s2[flat_ref], 0
        gain[flat_dist], sv[flat_dist] = 0, 0
        negative = gain < 0
        sv[negative], gain[negative] = s2[negative], 0
        sv = np.maximum(sv, eps)
        num += np.log10(1 + gain * gain * s1 / (sv + sigma_n_sq)).sum()
        den += np.log10(1 + s1 / sigma_n_sq).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        value = num / den
    return 1.0 if np.isnan(value) else float(value)


def vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """VIF: vifp(A, F) + vifp(B, F) (not Han's VIFF, despite the evaluator's name)."""
    return vifp(a, f) + vifp(b, f)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation (arctan(gy/gx), pi/2 where gx = 0), zero-padded 'same' convolution."""
    gx = convolve2d(img, _SOBEL_X, mode="same")
    gy = convolve2d(img, _SOBEL_Y, mode="same")
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(gx == 0, np.pi / 2, np.arctan(gy / gx))
    return np.sqrt(gx * gx + gy * gy), angle


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Q^{SF}: sigmoid-weighted preservation of edge strength and orientation from a source to F."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_f, g_f / g_src, g_src / g_f)
    # The quirk kept from the original MATLAB code: where the strengths are equal (also both 0) the ratio
    # is set to gF instead of 1.
    ratio = np.where(g_src == g_f, g_f, ratio)
    orientation = 1 - np.abs(a_src - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (orientation - 0.8)))
    return q_g * q_a


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf (Xydeas-Petrovic): edge information of A and B preserved in F, weighted by source edge strength."""
    (ga, aa), (gb, ab), (gf, af) = _sobel(a), _sobel(b), _sobel(f)
    q_af, q_bf = _edge_preservation(ga, aa, gf, af), _edge_preservation(gb, ab, gf, af)
    return float((q_af * ga + q_bf * gb).sum() / (ga + gb).sum())


def ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), scikit-image defaults with ``data_range=2.0`` (the evaluator's)."""
    return float(structural_similarity(f, a, data_range=2.0) + structural_similarity(f, b, data_range=2.0))


def ssim_wang(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM (11x11 Gaussian sigma 1.5, population covariance, L = 255), summed over A and B.
    Not the published protocol's SSIM: report it under its own name."""
    settings = dict(data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return float(structural_similarity(f, a, **settings) + structural_similarity(f, b, **settings))


def _check(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = (np.asarray(f, dtype=np.float64), np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    if any(x.ndim != 2 for x in arrays) or not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise ValueError(f"F, A and B must be 2D arrays of one shape, got {[x.shape for x in arrays]}")
    if min(arrays[0].shape) < 7:
        raise ValueError(f"fusion metrics need images of at least 7x7 pixels (SSIM window), got {arrays[0].shape}")
    return arrays


def fusion_scores(f: np.ndarray, a: np.ndarray, b: np.ndarray, metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """The named metrics (default: all of ``METRICS``) of fused ``f`` against sources ``a`` and ``b``,
    all ``[H, W]`` grey levels 0..255 (see ``read_gray`` / ``to_uint8``)."""
    f, a, b = _check(f, a, b)
    single = {"EN": entropy, "SD": standard_deviation, "SF": spatial_frequency, "AG": average_gradient}
    paired = {
        "MI": mutual_information,
        "SCD": scd,
        "CC": correlation,
        "VIF": vif,
        "Qabf": qabf,
        "SSIM": ssim,
        "PSNR": psnr,
        "SSIM_wang": ssim_wang,
    }
    unknown = [m for m in metrics if m not in single and m not in paired]
    if unknown:
        raise ValueError(f"unknown fusion metric {unknown[0]!r} (known: {', '.join([*single, *paired])})")
    return {m: single[m](f) if m in single else paired[m](f, a, b) for m in metrics}


def prior_score(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The score that picks a fusion prior among candidate outputs (Diff-IF's choice): 2 SSIM + VIF + 3 Qabf,
    each the protocol's two-source version above."""
    s = fusion_scores(f, a, b, ("SSIM", "VIF", "Qabf"))
    return 2 * s["SSIM"] + s["VIF"] + 3 * s["Qabf"]
