"""Reports of a run: sample grids and overlays, plots, and one self-contained HTML page per run folder."""

from meddiff.report.grids import colorize_mask, image_grid, overlay, pairs_grid, save_png
from meddiff.report.html import Html, Section, write_report
from meddiff.report.plots import heatmap, legend_patches, loss_curve, metric_curves

__all__ = [
    "Html",
    "Section",
    "colorize_mask",
    "heatmap",
    "image_grid",
    "legend_patches",
    "loss_curve",
    "metric_curves",
    "overlay",
    "pairs_grid",
    "save_png",
    "write_report",
]
