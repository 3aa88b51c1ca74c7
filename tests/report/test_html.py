"""write_report: one self-contained, escaped HTML page per run folder, built from whatever is there."""

import json
import os
import re

import numpy as np
import pytest
import torch

from meddiff.errors import UserError
from meddiff.report.grids import image_grid, save_png
from meddiff.report.html import Html, Section, format_value, text_to_html, write_report


@pytest.fixture
def run(tmp_path):
    """A run folder as a training command leaves it."""
    run = tmp_path / "run_ddpm"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 3\ndata:\n  name: brain_mri\n  size: 64\ntrain:\n  steps: 400\n")
    records = [{"step": s, "loss": 1.0 / s, "lr": 2e-4, "elapsed_s": 0.5 * s} for s in range(10, 410, 10)]
    (run / "logs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step in (100, 200, 300, 400):
        save_png(image_grid(torch.rand(4, 1, 8, 8) * 2 - 1, nrow=2), run / "samples" / f"step_{step:06d}.png")
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
    save_png(np.zeros((20, 30, 3), np.uint8), run / "figures" / "dice_heatmap.png")
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "fid": 12.3456,
                "<script>alert(1)</script>": 0.5,
                "segmentation": {"mean_dice": 0.8123, "per_class": {"grey": {"dice": 0.78}, "white": {"dice": 0.84}}},
                "sweep": [{"steps": 10, "fid": 31.25}, {"steps": 50, "fid": 14.5}],
            }
        )
    )
    return run


def test_report_embeds_images_metrics_and_escapes_text(run):
    path = write_report(run, title="DDPM <brain>", num_samples=3)
    assert path == run / "report.html"
    page = path.read_text()
    # The loss curve, the 3 newest sample grids (newest first) and the figure, all inline.
    assert page.count('src="data:image/png;base64,') == 5
    assert page.index("step_000400.png") < page.index("step_000300.png") < page.index("step_000200.png")
    assert "step_000100.png" not in page
    assert "dice heatmap" in page
    # Settings from config.yaml, training numbers from the log, metrics (nested ones too) as tables.
    assert "data.name" in page and "brain_mri" in page and "4 (latest step_000400)" in page
    for value in ("12.35", "0.8123", "0.78", "0.84", "31.25", "14.5"):
        assert f">{value}<" in page
    assert "segmentation.per_class" in page
    # Everything from the run is escaped; the page has no script and nothing from the network.
    assert "DDPM &lt;brain&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert 'src="http' not in page and re.search(r"https?://", page) is None


def test_report_is_written_atomically_as_the_only_new_file(run):
    before = set(os.listdir(run))
    write_report(run)
    assert set(os.listdir(run)) - before == {"report.html"}


def test_a_run_with_only_some_pieces_still_gets_a_report(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    page = write_report(run).read_text()
    assert "<h1>bare</h1>" in page and "Metrics" not in page and "data:image" not in page
    (run / "logs").mkdir()
    (run / "logs" / "train.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # being written
    (run / "metrics.json").write_text("{not json")
    page = write_report(run).read_text()
    assert page.count("data:image/png;base64,") == 1  # the loss curve
    assert 'class="note"' in page and "metrics.json: not valid JSON" in page  # a damaged piece is noted


def test_extra_sections_take_text_trusted_html_and_images(run, tmp_path):
    picture = np.full((16, 16, 3), 255, np.uint8)
    page = write_report(
        run,
        sections=[
            ("Notes", "Dice **improves** with `t=100`.\n\n- first <b>point</b>\n- second"),
            Section("Raw", Html("<p class='mine'>kept</p>"), [picture]),
        ],
    ).read_text()
    assert "<p>Dice <strong>improves</strong> with <code>t=100</code>.</p>" in page
    assert "<li>first &lt;b&gt;point&lt;/b&gt;</li>" in page
    assert "<p class='mine'>kept</p>" in page
    assert page.count("data:image/png;base64,") == 6
    # A 16-px picture is shown enlarged 4x with square pixels.
    assert 'class="px"' in page and 'width="64" height="64"' in page


def test_not_a_directory_raises_user_error_naming_it(tmp_path):
    file = tmp_path / "run.txt"
    file.write_text("")
    for path in (file, tmp_path / "missing"):
        with pytest.raises(UserError, match=re.escape(str(path))):
            write_report(path)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.81234, "0.8123"),
        (12.3456, "12.35"),
        (17234.5, "17,234"),
        (0.0000123, "1.23e-05"),
        (2048, "2048"),
        (123456, "123,456"),
        (float("nan"), "NaN"),
        (True, "true"),
        (None, "—"),
        ([1, 2, 4], "1, 2, 4"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_text_to_html_escapes_before_applying_markup():
    assert text_to_html("a <i>b</i>\nc") == "<p>a &lt;i&gt;b&lt;/i&gt; c</p>"
