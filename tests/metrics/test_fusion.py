"""The published fusion protocol (CDDFuse evaluator semantics), each metric against values worked out by
hand or by a literal re-statement of the evaluator's formula inside the test."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage
from scipy.signal import convolve2d

from meddiff.metrics import fusion as fm


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _images(rng, shape=(64, 64)):
    """Three correlated 8-bit-like images: sources A, B and a fused F."""
    a = np.round(ndimage.gaussian_filter(rng.uniform(0, 255, shape), 2) * 3 - 250).clip(0, 255)
    b = np.round(rng.uniform(0, 255, shape) * (np.arange(shape[1]) / shape[1]))
    f = np.round(np.maximum(a, b) * 0.9 + rng.normal(0, 3, shape)).clip(0, 255)
    return f, a, b


# -- read / normalise pipeline ---------------------------------------------------------------------------
def test_read_gray_is_rounded_bt601_luma_of_the_8_bit_file(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 200, 31]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = np.round(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_array_equal(fm.read_gray(tmp_path / "c.png"), expected)  # 76, 150, 29, 127
    gray = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(fm.read_gray(tmp_path / "g.png"), gray.astype(float))


def test_to_uint8_stretches_minmax_or_clips():
    x = np.array([[-3.0, -1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(fm.to_uint8(x, "minmax"), [[0, 128], [191, 255]])  # (x+3)/4*255 rounded
    np.testing.assert_array_equal(fm.to_uint8(np.array([[-5.0, 12.4], [254.6, 300.0]]), "clip"), [[0, 12], [255, 255]])
    assert fm.to_uint8(np.full((2, 2), 7.0), "minmax").max() == 0
    with pytest.raises(ValueError, match="minmax"):
        fm.to_uint8(x, "stretch")


# -- single-image metrics ----------------------------------------------------------------------------------
def test_entropy_counts_bits_of_the_256_level_histogram():
    four_levels = np.repeat(np.array([0.0, 85.0, 170.0, 255.0]), 16).reshape(8, 8)
    assert fm.entropy(four_levels) == pytest.approx(2.0)
    assert fm.entropy(np.full((8, 8), 40.0)) == 0.0
    # 48 pixels at 10 and 16 at 11: -(3/4 log2 3/4 + 1/4 log2 1/4)
    f = np.r_[np.full(48, 10.0), np.full(16, 11.0)].reshape(8, 8)
    assert fm.entropy(f) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_standard_deviation_is_the_population_one():
    f = np.array([[0.0, 0.0], [255.0, 255.0]])
    assert fm.standard_deviation(f) == pytest.approx(127.5)


def test_spatial_frequency_averages_each_direction_over_its_own_differences():
    ramp = np.tile(np.arange(9.0) * 4, (6, 1))  # columns step by 4, rows equal
    assert fm.spatial_frequency(ramp) == pytest.approx(4.0)
    checker = (np.indices((5, 7)).sum(0) % 2) * 10.0  # every neighbour differs by 10
    assert fm.spatial_frequency(checker) == pytest.approx(math.sqrt(100 + 100))


def test_average_gradient_uses_central_differences_and_one_sided_borders():
    w = 7
    f = np.tile(np.arange(w, dtype=float) ** 2, (5, 1))  # x^2 along columns
    gx = np.array([1.0] + [2.0 * j for j in range(1, w - 1)] + [(w - 1) ** 2 - (w - 2) ** 2])
    assert fm.average_gradient(f) == pytest.approx(np.mean(gx / math.sqrt(2)))


# -- metrics against two sources ---------------------------------------------------------------------------
def test_mutual_information_uses_grey_levels_as_bins_in_nats():
    a = np.zeros((8, 8))
    a[:, 4:] = 200
    relabelled = a * 0.5 + 7  # any one-to-one relabelling carries the same information
    constant = np.full((8, 8), 90.0)
    assert fm.mutual_information(relabelled, a, constant) == pytest.approx(math.log(2))
    # joint table [[1/4, 1/4], [0, 1/2]]: MI = sum p log(p / (px py))
    f = np.array([0, 0, 1, 1] * 16, dtype=float).reshape(8, 8)
    b = np.array([0, 1, 1, 1] * 16, dtype=float).reshape(8, 8)
    joint, px, py = np.array([[0.25, 0.25], [0, 0.5]]), np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = sum(
        joint[i, j] * math.log(joint[i, j] / (px[i] * py[j])) for i in range(2) for j in range(2) if joint[i, j] > 0
    )
    assert fm.mutual_information(f, constant, b) == pytest.approx(expected)


def test_scd_and_cc_are_pearson_correlations(rng):
    a, b = rng.uniform(0, 255, (16, 16)), rng.uniform(0, 255, (16, 16))
    assert fm.scd(a + b, a, b) == pytest.approx(2.0)  # F - B = A and F - A = B
    assert fm.correlation(a, a, 3 * a + 1) == pytest.approx(1.0)
    assert fm.correlation(a, a, 255 - a) == pytest.approx(0.0)
    f = rng.uniform(0, 255, (16, 16))
    expected = np.corrcoef(a.ravel(), (f - b).ravel())[0, 1] + np.corrcoef(b.ravel(), (f - a).ravel())[0, 1]
    assert fm.scd(f, a, b) == pytest.approx(expected)


def test_psnr_peak_is_the_fused_maximum_not_255():
    f, a, b = np.full((8, 8), 100.0), np.full((8, 8), 90.0), np.full((8, 8), 110.0)
    assert fm.psnr(f, a, b) == pytest.approx(10 * math.log10(100**2 / 100))  # MSE (100 + 100) / 2


def _evaluator_vifp(ref, dist):
    """The evaluator's compare_viff, restated literally (2D MATLAB-style window, convolve2d 'valid')."""
    sigma_nsq, eps, num, den = 2, 1e-10, 0.0, 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        sd = n / 5.0
        m = (n - 1) / 2
        y, x = np.ogrid[-m : m + 1, -m : m + 1]
        h = np.exp(-(x * x + y * y) / (2 * sd * sd))
        h[h < np.finfo(h.dtype).eps * h.max()] = 0
        win = np.rot90(h / h.sum(), 2)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g**2 * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    value = num / den
    return 1.0 if np.isnan(value) else value


def test_vif_is_the_evaluators_four_scale_pixel_vif(rng):
    f, a, b = _images(rng)
    assert fm.vif(f, a, b) == pytest.approx(_evaluator_vifp(a, f) + _evaluator_vifp(b, f), rel=1e-9)
    assert fm.vif(a, a, a) == pytest.approx(2.0)  # a perfect copy keeps all information
    assert fm.vif(2 * a, a, a) > 2  # contrast gain counts as more information (vifp's known property)
    flat = np.full((64, 64), 30.0)
    assert fm.vif(a, flat, flat) == 2.0  # 0/0 (no reference information) counts as 1 per source


def _sobel_strength_angle(x):
    # The evaluator convolves with [[-1,0,1],[-2,0,2],[-1,0,1]] and [[1,2,1],[0,0,0],[-1,-2,-1]], zero-padded;
    # convolution flips the kernel, so that is minus scipy's column Sobel and plus its row Sobel.
    gx = -ndimage.sobel(x, axis=1, mode="constant")
    gy = ndimage.sobel(x, axis=0, mode="constant")
    angle = np.full(x.shape, math.pi / 2)
    angle[gx != 0] = np.arctan(gy[gx != 0] / gx[gx != 0])
    return np.hypot(gx, gy), angle


def _q(g_src, a_src, g_f, a_f):
    ratio = np.zeros_like(g_src)
    ratio[g_src > g_f] = g_f[g_src > g_f] / g_src[g_src > g_f]
    ratio[g_src == g_f] = g_f[g_src == g_f]  # the evaluator's quirk
    ratio[g_src < g_f] = g_src[g_src < g_f] / g_f[g_src < g_f]
    orient = 1 - np.abs(a_src - a_f) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))


def test_qabf_matches_the_xydeas_petrovic_formula(rng):
    f, a, b = _images(rng, (24, 30))
    (ga, aa), (gb, ab), (gf, af) = (_sobel_strength_angle(x) for x in (a, b, f))
    expected = (_q(ga, aa, gf, af) * ga + _q(gb, ab, gf, af) * gb).sum() / (ga + gb).sum()
    assert fm.qabf(f, a, b) == pytest.approx(expected, rel=1e-12)


def test_qabf_keeps_the_equal_strength_quirk(rng):
    """Where a source edge equals the fused one, the strength ratio is gF, not 1: faint identical edges
    score low. With F = A = B the angles agree (orientation term at 1), so Qabf = sum Qg(gF) gF / sum gF."""
    x = rng.uniform(0, 0.02, (20, 20))
    g, _ = _sobel_strength_angle(x)
    q_g = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
    q_a = 0.9879 / (1 + math.exp(-22 * 0.2))
    assert fm.qabf(x, x, x) == pytest.approx((q_g * q_a * g).sum() / g.sum(), rel=1e-12)
    assert fm.qabf(x, x, x) < 0.1  # a ratio of 1 would give ~0.97


def _ssim_map_mean(x, y, weights, data_range, sample_cov):
    """Mean SSIM over every window position fully inside the image, windows weighted by ``weights``."""
    k = weights.shape[0]
    wx, wy = sliding_window_view(x, (k, k)), sliding_window_view(y, (k, k))
    mean = lambda t: (t * weights).sum((-1, -2))  # noqa: E731
    mx, my = mean(wx), mean(wy)
    vx, vy, cov = mean(wx * wx) - mx**2, mean(wy * wy) - my**2, mean(wx * wy) - mx * my
    if sample_cov:
        n = k * k
        vx, vy, cov = (v * n / (n - 1) for v in (vx, vy, cov))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def test_ssim_is_the_evaluators_with_data_range_2(rng):
    f, a, b = _images(rng, (30, 26))
    box = np.full((7, 7), 1 / 49)
    expected = sum(_ssim_map_mean(f, s, box, 2.0, True) for s in (a, b))
    assert fm.ssim(f, a, b) == pytest.approx(expected, rel=1e-9)
    assert fm.ssim(a, a, a) == pytest.approx(2.0)
    at_255 = sum(_ssim_map_mean(f, s, box, 255.0, True) for s in (a, b))
    assert abs(fm.ssim(f, a, b) - at_255) > 1e-3  # the data range convention changes the number


def test_ssim_wang_is_gaussian_11x11_at_L_255_and_named_apart(rng):
    f, a, b = _images(rng, (30, 26))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    expected = sum(_ssim_map_mean(f, s, window, 255.0, False) for s in (a, b))
    assert fm.ssim_wang(f, a, b) == pytest.approx(expected, rel=1e-6)
    scores = fm.fusion_scores(f, a, b, ("SSIM", "SSIM_wang"))
    assert scores["SSIM_wang"] != pytest.approx(scores["SSIM"])


def test_fusion_scores_computes_every_metric_and_validates(rng):
    f, a, b = _images(rng, (32, 32))
    scores = fm.fusion_scores(f, a, b)
    assert tuple(scores) == fm.METRICS
    assert set(fm.PUBLISHED_METRICS) <= set(fm.METRICS)
    assert all(np.isfinite(v) for v in scores.values())
    assert fm.prior_score(f, a, b) == pytest.approx(2 * scores["SSIM"] + scores["VIF"] + 3 * scores["Qabf"])
    with pytest.raises(ValueError, match="unknown fusion metric 'QAB'"):
        fm.fusion_scores(f, a, b, ("QAB",))
    with pytest.raises(ValueError, match="one shape"):
        fm.fusion_scores(f, a[:-1], b)
    with pytest.raises(ValueError, match="7x7"):
        fm.fusion_scores(f[:5, :5], a[:5, :5], b[:5, :5])


def test_pixel_max_on_the_real_pet_set_matches_the_reference_numbers(shared_data):
    """The reference measured pixel max on MRI-PET (Y, clipped): EN 3.85, SD 75.5, SF 27.3, MI 3.04,
    SCD 1.70, VIF 0.92, Qabf 0.71, SSIM 1.51. Eight pairs must land near those means."""
    root = shared_data / "harvard_fusion" / "MRI_PET"
    names = sorted(p.name for p in (root / "MRI").iterdir())[::5]
    rows = []
    for name in names:
        a, b = fm.read_gray(root / "MRI" / name), fm.read_gray(root / "PET" / name)
        rows.append(fm.fusion_scores(np.maximum(a, b), a, b, ("SSIM", "Qabf", "SCD")))
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    assert mean["SSIM"] == pytest.approx(1.51, abs=0.04)
    assert mean["Qabf"] == pytest.approx(0.71, abs=0.06)
    assert mean["SCD"] == pytest.approx(1.70, abs=0.2)
