"""Plots are written as PNGs of a predictable pixel size (inches x dpi), without pyplot state."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from meddiff.data.labels import palette
from meddiff.errors import UserError
from meddiff.report.plots import heatmap, legend_patches, loss_curve, loss_points, metric_curves, smooth


def png_size(path):
    with Image.open(path) as image:
        image.verify()  # raises on a corrupt file
        return image.format, image.size


def write_log(path, steps):
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-4, "elapsed_s": s / 10}) + "\n" for s in steps)
    )
    return path


def test_loss_curve_from_a_jsonl_log_is_a_png_of_size_times_dpi(tmp_path):
    log = write_log(tmp_path / "train.jsonl", range(10, 510, 10))
    out = loss_curve(log, tmp_path / "loss.png")
    assert out == tmp_path / "loss.png"
    assert png_size(out) == ("PNG", (960, 480))  # default 6.4 x 3.2 in at 150 dpi
    small = loss_curve(log, tmp_path / "small.png", size=(4, 2), dpi=50, log_y=False)
    assert png_size(small) == ("PNG", (200, 100))


def test_loss_curve_accepts_records_and_refuses_a_log_without_loss(tmp_path):
    assert loss_curve([{"step": 1, "loss": 0.3}], tmp_path / "one.png").is_file()
    with pytest.raises(UserError, match="no record"):
        loss_curve([{"step": 1, "lr": 0.1}], tmp_path / "none.png")


def test_loss_points_sort_by_step_drop_non_finite_and_let_a_resumed_run_win():
    records = [
        {"step": 1, "loss": 0.9},
        {"step": 2, "loss": 0.8},
        {"step": 3, "loss": float("nan")},
        {"step": 2, "loss": 0.5},
        {"step": 3, "loss": 0.4},
        {"step": 4},
    ]  # resumed at step 2
    steps, loss = loss_points(records)
    assert steps.tolist() == [1, 2, 3] and loss.tolist() == [0.9, 0.5, 0.4]


def test_smooth_is_a_debiased_ema():
    assert np.allclose(smooth([2.0] * 5, 0.9), 2.0)  # no pull towards zero at the start
    # s1 = 0.5 * 1 = 0.5, debiased by 1 - 0.5; s2 = 0.5 * 0.5 + 0.5 * 3 = 1.75, debiased by 1 - 0.25
    assert smooth([1.0, 3.0], 0.5).tolist() == pytest.approx([1.0, 1.75 / 0.75])
    assert smooth([1.0, 3.0], 0.0).tolist() == [1.0, 3.0]


def test_metric_curves_with_a_wall_time_axis(tmp_path):
    rows = [{"steps": s, "fid": 100 / s, "ssim": 1 - 1 / s, "seconds": 0.01 * s} for s in (50, 10, 20)]
    out = metric_curves(
        rows, "steps", ["fid", "ssim"], tmp_path / "m.png", time_key="seconds", log_x=True, size=(5, 3), dpi=80
    )
    assert png_size(out) == ("PNG", (400, 240))
    columns = {"sampler": ["ddpm", "ddim"], "fid": [12.0, None]}  # text x values, a missing value
    assert metric_curves(columns, "sampler", ["fid"], tmp_path / "c.png").is_file()


def test_heatmap_of_blocks_by_timesteps(tmp_path):
    matrix = np.arange(12, dtype=float).reshape(3, 4)
    matrix[0, 0] = np.nan  # a cell not measured is left blank
    out = heatmap(
        matrix,
        ["down", "mid", "up"],
        [10, 100, 500, 900],
        tmp_path / "h.png",
        title="Dice",
        xlabel="timestep",
        ylabel="block",
        size=(4, 3),
        dpi=100,
    )
    assert png_size(out) == ("PNG", (400, 300))
    with pytest.raises(ValueError, match="does not match"):
        heatmap(matrix, ["a", "b"], [1, 2, 3, 4], tmp_path / "bad.png")


def test_legend_patches_use_the_fixed_palette():
    patches = legend_patches(["background", "grey matter", "white matter"])
    assert [p.get_label() for p in patches] == ["background", "grey matter", "white matter"]
    assert np.allclose(patches[2].get_facecolor()[:3], palette(3)[2] / 255)


def test_plots_leave_no_pyplot_figures_behind(tmp_path):
    loss_curve([{"step": 1, "loss": 0.3}, {"step": 2, "loss": 0.2}], tmp_path / "l.png")
    heatmap([[1.0]], ["a"], ["b"], tmp_path / "h.png")
    assert plt.get_fignums() == []
