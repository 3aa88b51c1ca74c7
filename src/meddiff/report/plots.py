"""Report plots: training loss, metric-versus-setting curves, annotated heatmaps, class legends.

Figures are built with matplotlib's object API (``Figure`` on an Agg canvas), never ``pyplot``, so no
global figure state leaks between calls or into the caller's session. Each plot function writes one PNG
atomically and returns its path; the size in pixels is ``size`` (inches) times ``dpi``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator
from scipy.signal import lfilter

from meddiff.data.labels import palette
from meddiff.errors import UserError
from meddiff.files import atomic_write
from meddiff.report.run import read_jsonl

Table = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]


def _figure(size: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, which="major", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _save(fig: Figure, out_png: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white", metadata={"Software": None})
    return atomic_write(out_png, buffer.getvalue())


def smooth(values: Sequence[float] | np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average ``s_t = weight * s_{t-1} + (1 - weight) * x_t``, debiased for its zero
    start (as TensorBoard's smoothing slider), so the first points are not pulled towards 0."""
    x = np.asarray(values, dtype=np.float64)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if weight == 0.0 or x.size == 0:
        return x.copy()
    ema = lfilter([1.0 - weight], [1.0, -weight], x)
    return ema / (1.0 - weight ** np.arange(1, x.size + 1))


def loss_points(records: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses)`` of the log records with a finite numeric ``step`` and ``loss``, by step.

    A step logged twice (a resumed run whose log was not truncated) keeps its later record.
    """
    pairs = [
        (r["step"], r["loss"])
        for r in records
        if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))
    ]
    data = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    data = data[np.isfinite(data).all(axis=1)][::-1]
    steps, first = np.unique(data[:, 0], return_index=True)  # first in reversed order = last logged
    return steps, data[first, 1]


def loss_curve(
    source: str | Path | Iterable[Mapping[str, Any]],
    out_png: str | Path,
    *,
    smoothing: float = 0.9,
    log_y: bool = True,
    title: str | None = "Training loss",
    size: tuple[float, float] = (6.4, 3.2),
    dpi: int = 150,
) -> Path:
    """Plot the training loss against the step: raw values (light) and their ``smooth``-ed curve.

    ``source`` is a ``logs/train.jsonl`` path or its records (``{"step", "loss", ...}`` dicts). ``log_y``
    uses a log scale when every loss is positive. Raises ``UserError`` if there is no loss to plot.
    """
    records = read_jsonl(source) if isinstance(source, (str, Path)) else source
    steps, loss = loss_points(records)
    if steps.size == 0:
        where = source if isinstance(source, (str, Path)) else "loss records"
        raise UserError(f"{where}: no record with a numeric 'step' and 'loss' to plot")
    fig = _figure(size, dpi)
    ax = fig.add_subplot()
    _style(ax)
    ax.plot(steps, loss, color="C0", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(
        steps,
        smooth(loss, smoothing),
        color="C0",
        linewidth=1.8,
        label=f"EMA (weight {smoothing:g})",
        marker="o" if steps.size == 1 else None,
    )  # a single point draws no line
    if log_y and (loss > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    ax.legend(frameon=False, fontsize=9)
    return _save(fig, out_png)


def _column(table: Table, key: str) -> list[Any]:
    if isinstance(table, Mapping):
        if key not in table:
            raise ValueError(f"table has no column '{key}' (columns: {', '.join(map(str, table))})")
        return list(table[key])
    return [row.get(key) for row in table]


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats, with missing values as NaN (drawn as gaps)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def metric_curves(
    table: Table,
    x_key: str,
    y_keys: Sequence[str],
    out_png: str | Path,
    *,
    time_key: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    log_x: bool = False,
    size: tuple[float, float] = (6.4, 3.6),
    dpi: int = 150,
) -> Path:
    """Plot metrics against a setting, e.g. FID and SSIM against the number of sampler steps.

    ``table`` is a list of rows (dicts) or a dict of columns. Each ``y_keys`` column becomes a line with
    markers; ``time_key`` (e.g. seconds per sample) is drawn dashed on a second y axis. Numeric x values
    are sorted; text x values (e.g. sampler names) are kept in table order as categories.
    """
    x_raw = _column(table, x_key)
    try:
        x: np.ndarray = _numbers(x_raw)
        order = np.argsort(x, kind="stable")
    except (TypeError, ValueError):
        x, order = np.array([str(v) for v in x_raw]), np.arange(len(x_raw))
    fig = _figure(size, dpi)
    ax = fig.add_subplot()
    _style(ax)
    if log_x:
        ax.set_xscale("log")
    settings = np.unique(x[np.isfinite(x)]) if x.dtype.kind == "f" else []
    if 0 < len(settings) <= 12:  # a sweep over a few settings: label exactly those
        ax.set_xticks(settings, [f"{v:g}" for v in settings])
        ax.xaxis.set_minor_locator(NullLocator())
    for i, key in enumerate(y_keys):
        ax.plot(x[order], _numbers(_column(table, key))[order], marker="o", markersize=4, color=f"C{i}", label=key)
    handles, labels = ax.get_legend_handles_labels()
    if time_key:
        twin = ax.twinx()
        twin.spines[["top"]].set_visible(False)
        twin.tick_params(labelsize=9)
        twin.plot(
            x[order],
            _numbers(_column(table, time_key))[order],
            linestyle="--",
            marker="s",
            markersize=3.5,
            color="0.45",
            label=time_key,
        )
        twin.set_ylabel(time_key, color="0.35")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.set_xlabel(xlabel or x_key)
    ax.set_ylabel(ylabel or (y_keys[0] if len(y_keys) == 1 else "value"))
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    fig.legend(handles, labels, loc="outside upper right", ncols=len(labels), frameon=False, fontsize=9)
    return _save(fig, out_png)


def heatmap(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    out_png: str | Path,
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    colorbar_label: str | None = None,
    fmt: str = "{:.3g}",
    cmap: str = "viridis",
    annotate: bool = True,
    size: tuple[float, float] | None = None,
    dpi: int = 150,
) -> Path:
    """Plot a ``[rows, cols]`` matrix as coloured cells, each annotated with ``fmt`` (NaN cells blank),
    e.g. a quality score for each U-Net block (rows) and timestep (columns). The default ``size`` grows
    with the number of cells."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {values.shape} does not match {len(row_labels)} row labels x {len(col_labels)} column labels"
        )
    rows, cols = values.shape
    fig = _figure(size or (max(4.0, 0.75 * cols + 2.4), max(2.6, 0.45 * rows + 1.5)), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.9).ax.tick_params(labelsize=8)
    rotate = cols > 8 or max((len(str(c)) for c in col_labels), default=0) > 6
    ax.set_xticks(
        np.arange(cols), [str(c) for c in col_labels], rotation=45 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_yticks(np.arange(rows), [str(r) for r in row_labels])
    ax.tick_params(labelsize=9, length=0)
    # White lines between cells keep neighbouring cells of similar colour apart.
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.spines[:].set_visible(False)
    if annotate:
        rgb = image.cmap(image.norm(values))[..., :3]
        dark = rgb @ np.array([0.2126, 0.7152, 0.0722]) < 0.5
        for r, c in zip(*np.nonzero(np.isfinite(values)), strict=True):
            ax.text(
                c,
                r,
                fmt.format(values[r, c]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark[r, c] else "black",
            )
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    return _save(fig, out_png)


def legend_patches(class_names: Sequence[str]) -> list[Patch]:
    """One legend patch per class in the fixed ``palette`` colours, for ``ax.legend(handles=...)`` or
    ``fig.legend(handles=...)`` next to grids and overlays."""
    colours = palette(len(class_names))[: len(class_names)] / 255.0
    return [
        Patch(facecolor=tuple(colour), edgecolor="0.4", linewidth=0.5, label=name)
        for colour, name in zip(colours, class_names, strict=True)
    ]
