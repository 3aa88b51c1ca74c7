"""``write_report``: one self-contained ``RUN/report.html`` a researcher can open offline or mail.

Everything is inline: images as base64 PNG data URIs, CSS in a ``<style>`` block, no script, and a
Content-Security-Policy that lets the page load nothing from anywhere. All text taken from the run
(config values, metric names, file names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from meddiff import __version__
from meddiff.config import read_yaml
from meddiff.errors import UserError
from meddiff.files import atomic_write
from meddiff.report.grids import encode_png
from meddiff.report.plots import loss_curve, loss_points, smooth
from meddiff.report.run import by_step, flatten, pngs, read_json, read_jsonl, step_of
from meddiff.rundir import RunDir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_DISPLAY_WIDTH = 320  # px; smaller images are enlarged by a whole factor (at most 4) to be visible


class Html(str):
    """Trusted markup for a report section body, inserted as is; a plain ``str`` body is escaped."""


class Section(NamedTuple):
    """An extra report section: a heading, a body (plain text with ``- `` bullets, blank-line paragraphs,
    ``**bold**`` and ```code```, or ``Html``) and images (PNG paths or uint8 RGB arrays)."""

    heading: str
    body: str = ""
    images: Sequence[str | Path | np.ndarray] = ()


# --- formatting -------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A metric or setting as short text: 4 significant digits, thousands separators from 10,000 up,
    lists comma-joined, missing values as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:,.0f}" if 1e4 <= abs(value) < 1e12 else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (list, tuple, Mapping)) for v in value):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``, ``3725`` -> ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    text = _e(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def text_to_html(text: str) -> str:
    """Escape plain text and apply a small markdown subset: blank lines separate paragraphs, a block
    of ``- `` lines is a bullet list, ``**bold**`` and ```code``` spans."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and all(line.startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        elif lines:
            blocks.append(f"<p>{' '.join(_inline(line) for line in lines)}</p>")
    return "\n".join(blocks)


# --- building blocks --------------------------------------------------------------------------------


def _kv_table(items: Mapping[str, Any], pairs_per_row: int = 1) -> str:
    """Key/value table with fixed column widths, ``pairs_per_row`` key/value pairs side by side."""
    width = 100 / pairs_per_row
    cols = f'<col style="width:{0.45 * width:.1f}%"><col style="width:{0.55 * width:.1f}%">' * pairs_per_row
    cells = [
        f'<th scope="row">{_e(k)}</th><td class="{"num" if _is_number(v) else "txt"}">{_e(format_value(v))}</td>'
        for k, v in items.items()
    ]
    cells += ["<th></th><td></td>"] * (-len(cells) % pairs_per_row)
    rows = ["<tr>" + "".join(cells[i : i + pairs_per_row]) + "</tr>" for i in range(0, len(cells), pairs_per_row)]
    kind = "kv" if pairs_per_row == 1 else "kv wide"
    return f'<table class="{kind}"><colgroup>{cols}</colgroup><tbody>{"".join(rows)}</tbody></table>'


def _grid_table(rows: Sequence[Mapping[str, Any]], index: str | None = None) -> str:
    """Rows of records as a table with one column per key (union of keys, first-seen order);
    ``index`` names a first column holding each row's label (taken from the ``"__index"`` key)."""
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "__index"))
    head = ([f'<th scope="col">{_e(index)}</th>'] if index is not None else []) + [
        f'<th scope="col" class="{"num" if any(_is_number(r.get(k)) for r in rows) else "txt"}">{_e(k)}</th>'
        for k in keys
    ]
    body = []
    for row in rows:
        label = [f'<th scope="row">{_e(row["__index"])}</th>'] if index is not None else []
        cells = [
            f'<td class="{"num" if _is_number(v) else "txt"}">{_e(format_value(v))}</td>'
            for v in (row.get(k) for k in keys)
        ]
        body.append("<tr>" + "".join(label + cells) + "</tr>")
    width = 170 * (len(keys) + (index is not None))  # px; a narrow table should not stretch across the page
    return (
        f'<table class="grid" style="max-width:{width}px"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _png_bytes(image: str | Path | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        return encode_png(image)
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"{path}: image not found or not readable") from None
    if data.startswith(PNG_SIGNATURE):
        return data
    try:  # another format (JPEG, TIFF, ...): re-encode so the report only ever embeds PNG
        return encode_png(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{path}: not an image file") from None


def _img(data: bytes, alt: str, caption: str | None = None, pixelated: bool = False) -> str:
    """An embedded PNG at its native pixel ratio.

    A PNG that records a resolution above 96 dpi (a matplotlib plot) is shown at its physical size, so
    its fonts match the page and stay sharp on high-density screens; a small image (a 64-px sample) is
    enlarged a whole number of times, with nearest-neighbour rendering so pixels stay square.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            (width, height), dpi = image.size, float(image.info.get("dpi", (96, 96))[0])
    except (UnidentifiedImageError, OSError):
        return _note(f"{alt}: not a readable PNG (possibly still being written); skipped")
    scale = 96 / dpi if dpi > 96 else max(1, min(4, MIN_DISPLAY_WIDTH // max(width, 1)))
    css = ' class="px"' if pixelated or scale > 1 else ""
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    figcaption = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img{css} src="{source}" alt="{_e(alt)}" width="{round(width * scale)}" '
        f'height="{round(height * scale)}">{figcaption}</figure>'
    )


def _note(message: str) -> str:
    return f'<p class="note">{_e(message)}</p>'


# --- sections from the run folder -------------------------------------------------------------------


def _summary(run: Path) -> str:
    cards: dict[str, str] = {}
    log = RunDir(run).log_file
    if log.is_file():
        records = read_jsonl(log)
        steps, loss = loss_points(records)
        if steps.size:
            cards["last step"] = format_value(int(steps[-1]))
            cards["loss (EMA, last)"] = format_value(float(smooth(loss)[-1]))
        elapsed = [r["elapsed_s"] for r in records if _is_number(r.get("elapsed_s"))]
        if elapsed:
            cards["wall time"] = format_duration(elapsed[-1])
        lrs = [r["lr"] for r in records if _is_number(r.get("lr"))]
        if lrs:
            cards["learning rate (last)"] = f"{lrs[-1]:.3g}"
    checkpoints = [p for p in RunDir(run).checkpoints.glob("*") if p.is_dir()]
    if checkpoints:
        cards["checkpoints"] = f"{len(checkpoints)} (latest {by_step(checkpoints)[0].name})"
    parts = []
    if cards:
        parts.append(
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
                for k, v in cards.items()
            )
            + "</div>"
        )
    config_path = RunDir(run).config_file
    if config_path.is_file():
        try:
            config = read_yaml(config_path)
        except UserError as exc:  # still show the training numbers and the raw text
            config = None
            parts.append(_note(str(exc)))
        if isinstance(config, Mapping) and config:
            parts.append("<h3>Settings</h3>" + _kv_table(flatten(config), pairs_per_row=2))
        text = config_path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"<details><summary>config.yaml</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)


def _loss(run: Path) -> str:
    log = RunDir(run).log_file
    records = read_jsonl(log) if log.is_file() else []
    if loss_points(records)[0].size == 0:
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        data = loss_curve(records, Path(tmp) / "loss.png", title=None).read_bytes()
    caption = "Training loss per logged step (light) and its exponential moving average (dark), from logs/train.jsonl."
    return _img(data, "training loss curve", caption)


def _samples(run: Path, count: int) -> str:
    latest = by_step(pngs(RunDir(run).samples))[:count]
    figures = []
    for path in latest:
        name, step = f"samples/{path.name}", step_of(path)
        caption = f"step {format_value(step)} · {name}" if step is not None else name
        figures.append(_img(path.read_bytes(), name, caption, pixelated=True))
    return "\n".join(figures)


def _figures(run: Path) -> str:
    return "\n".join(
        _img(path.read_bytes(), f"figures/{path.name}", path.stem.replace("_", " ")) for path in pngs(run / "figures")
    )


def metrics_html(metrics: Any, prefix: str = "") -> str:
    """Tables for a (nested) metrics dict: its plain values in one key/value table, then a titled table
    for each nested part under its dotted key: a list of records (a sweep) or a dict of flat dicts
    (per-class scores) becomes a matrix, any other dict is rendered the same way, recursively."""
    if not isinstance(metrics, Mapping):
        return _kv_table({prefix or "value": metrics})
    plain = {k: v for k, v in metrics.items() if _is_plain(v)}
    heading = f"<h3>{_e(prefix.rstrip('.'))}</h3>" if prefix else ""
    parts = [heading + _kv_table(plain)] if plain else []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if _is_records(value):
            parts.append(f"<h3>{_e(name)}</h3>{_grid_table(value)}")
        elif (
            isinstance(value, Mapping)
            and not _is_plain(value)
            and all(isinstance(v, Mapping) and v and all(map(_is_plain, v.values())) for v in value.values())
        ):
            rows = [{"__index": label, **row} for label, row in value.items()]
            parts.append(f"<h3>{_e(name)}</h3>{_grid_table(rows, index='')}")
        elif not _is_plain(value):
            parts.append(metrics_html(value, f"{name}."))
    return "\n".join(parts)


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _is_plain(value: Any) -> bool:
    """Shown as one table cell: not a non-empty dict, not a list of records."""
    return not (isinstance(value, Mapping) and value) and not _is_records(value)


def _metrics(run: Path) -> str:
    path = RunDir(run).metrics_file
    return metrics_html(read_json(path)) if path.is_file() else ""


def _extra(section: Section) -> str:
    body = section.body if isinstance(section.body, Html) else text_to_html(section.body)
    images = []
    for image in section.images:
        name = Path(image).name if isinstance(image, (str, Path)) else f"{section.heading} image"
        caption = name if isinstance(image, (str, Path)) else None
        images.append(_img(_png_bytes(image), name, caption))
    return body + "\n" + "\n".join(images)


# --- page -------------------------------------------------------------------------------------------

CSS = """
:root { --fg: #1d2330; --muted: #5d6677; --line: #dde2ea; --soft: #f4f6f9; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
  font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 28px 56px; }
header h1 { font-size: 26px; font-weight: 650; margin: 0 0 2px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); font-size: 13px; }
nav { margin: 14px 0 0; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; }
h2 { font-size: 19px; font-weight: 620; margin: 40px 0 14px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; font-weight: 620; color: var(--muted); margin: 22px 0 8px; }
table { border-collapse: collapse; table-layout: fixed; width: 100%; font-size: 13.5px; margin: 0 0 8px; }
table.kv { max-width: 640px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
  overflow-wrap: anywhere; }
thead th { background: var(--soft); font-weight: 600; border-bottom: 1px solid #c9d0db; }
tbody th { font-weight: 500; color: #39414f; }
tbody tr:nth-child(even) { background: #fafbfc; }
.num { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px;
  margin: 0 0 8px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 11.5px; text-transform: uppercase; letter-spacing: 0.05em; }
.card .v { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; }
figure { display: inline-block; vertical-align: top; max-width: 100%; margin: 0 18px 18px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
img.px { image-rendering: crisp-edges; image-rendering: pixelated; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; max-width: 640px; }
details { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 14px 0 0; }
summary { cursor: pointer; font-weight: 600; font-size: 13.5px; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
pre { font-size: 12.5px; line-height: 1.45; background: var(--soft); padding: 12px; margin: 10px 0 4px;
  overflow: auto; }
code { font-size: 0.92em; background: var(--soft); padding: 1px 4px; border-radius: 3px; }
.note { border-left: 3px solid #c98a00; background: #fff8e6; padding: 8px 12px; font-size: 13.5px; }
footer { margin-top: 48px; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted);
  font-size: 12px; }
@media print { nav { display: none; } main { max-width: none; padding: 0; } }
"""

# The page may only use its own inline style and data-URI images: nothing is fetched, nothing runs.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _page(title: str, run_name: str, sections: Iterable[tuple[str, str]]) -> str:
    sections = list(sections)
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="#{a}">{_e(heading)}</a>' for a, (heading, _) in zip(anchors, sections, strict=True))
    body = "\n".join(
        f'<section id="{a}"><h2>{_e(heading)}</h2>\n{content}\n</section>'
        for a, (heading, content) in zip(anchors, sections, strict=True)
    )
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"Run folder {run_name} · generated {generated}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="meddiff {_e(__version__)}">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header><h1>{_e(title)}</h1><div class="sub">{_e(subtitle)}</div><nav>{nav}</nav></header>
{body}
<footer>meddiff {_e(__version__)} · self-contained report: every image is embedded, nothing is loaded
from the network.</footer>
</main>
</body>
</html>
"""


def write_report(
    run_dir: str | Path,
    title: str | None = None,
    sections: Sequence[Section | tuple] | None = None,
    num_samples: int = 3,
) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    The page holds a run summary (training numbers from ``logs/train.jsonl``, settings and the full
    ``config.yaml``), the loss curve, the ``num_samples`` latest ``samples/*.png`` (newest first), every
    ``figures/*.png``, ``metrics.json`` as tables, then the caller's ``sections`` (``Section`` or
    ``(heading, body[, images])`` tuples). Missing pieces are skipped; a piece that cannot be read
    shows a note instead. Raises ``UserError`` if ``run_dir`` is not a directory.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: not a run folder (no such directory)")
    builders = [
        ("Run summary", lambda: _summary(run)),
        ("Training loss", lambda: _loss(run)),
        ("Samples", lambda: _samples(run, num_samples)),
        ("Figures", lambda: _figures(run)),
        ("Metrics", lambda: _metrics(run)),
    ]
    blocks = []
    for heading, build in builders:
        try:
            content = build()
        except UserError as exc:  # a damaged file costs its own section, not the whole report
            content = _note(str(exc))
        if content:
            blocks.append((heading, content))
    blocks += [(s.heading, _extra(s)) for s in (Section(*s) for s in sections or ())]
    name = run.resolve().name
    page = _page(title or name, name, blocks)
    return atomic_write(run / "report.html", page.encode("utf-8"))
