"""``meddiff fuse``: multi-modal image fusion (diffusion model or classic rule) and its published evaluation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from meddiff.devices import DEVICE_HELP

app = typer.Typer(no_args_is_help=True, help="Fuse registered image pairs (MRI + PET/SPECT/CT) and score fusions.")
console = Console(stderr=True)


@app.command("fit")
def fuse_fit(
    config: Path = typer.Argument(..., help="YAML config of the fuse task (see configs/fuse_*.yaml)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train the diffusion fusion model on a paired folder (targets: the per-pair best classic rule).

    Example: `meddiff fuse fit configs/fuse_mri_pet.yaml --out runs/fuse_pet`
    """
    from meddiff.errors import UserError
    from meddiff.tasks import fuse, load_task_config

    task, cfg = load_task_config(config)
    if task is not fuse:
        raise UserError(f"{config}: 'task' must be fuse for `meddiff fuse fit`")
    result = fuse.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command("run")
def fuse_run(
    run_or_rule: str = typer.Argument(
        ..., help="A trained run (or checkpoint) folder, or a rule: average, max, dwt, laplacian."
    ),
    a: Path = typer.Option(..., "--a", help="Folder of source A images (e.g. MRI)."),
    b: Path = typer.Option(..., "--b", help="Folder of source B images, same file names (e.g. PET)."),
    out: Path = typer.Option(..., "--out", help="New folder for <name>.png fused images and manifest.json."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the run's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the start noise (every pair uses it)."),
    output_range: str | None = typer.Option(
        None,
        "--range",
        help="How the fused Y becomes 8 bits: minmax | clip (default: minmax for runs, clip for rules).",
    ),
    keep_background: bool | None = typer.Option(
        None,
        "--keep-background/--no-keep-background",
        help="Runs only: keep pixels black where both sources are black (default: the run's setting).",
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Fuse every pair of two folders (matched by file name); colour sources give colour output, any size.

    Example: `meddiff fuse run max --a data/MRI --b data/PET --out fused/max`
    """
    from meddiff.errors import UserError
    from meddiff.tasks import fuse

    if output_range not in (None, "minmax", "clip"):
        raise UserError(f"--range '{output_range}' is not one of minmax, clip")
    folder = fuse.run(
        run_or_rule,
        a,
        b,
        out,
        steps=steps,
        seed=seed,
        output_range=output_range,
        keep_background=keep_background,
        device=device,
    )
    console.print(f"wrote fused images to {folder}")


@app.command("eval")
def fuse_eval(
    a: Path = typer.Option(..., "--a", help="Folder of source A images."),
    b: Path = typer.Option(..., "--b", help="Folder of source B images (same file names)."),
    fused: Path = typer.Option(..., "--fused", help="Folder of fused images (same file names)."),
    out: Path | None = typer.Option(
        None, "--out", help="Where to save <out>.csv and <out>.json (default: FUSED/metrics)."
    ),
) -> None:
    """Score fused images with the published protocol (EN SD SF AG MI SCD CC VIF Qabf SSIM PSNR, plus
    Wang-style SSIM_wang), print the per-image and mean table and save it as CSV and JSON.

    Example: `meddiff fuse eval --a data/MRI --b data/PET --fused fused/max`
    """
    from rich import box
    from rich.table import Table

    from meddiff.tasks import fuse

    rows = fuse.evaluate(a, b, fused)
    mean = fuse.mean_scores(rows)
    table = Table(
        title=f"fusion metrics of {fused} (published protocol; SSIM_wang is not comparable to SSIM)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "name" else "right", no_wrap=True)
    for row in [*rows, {"name": "mean", **mean}]:
        table.add_row(*(row["name"] if k == "name" else f"{row[k]:.4g}" for k in rows[0]), end_section=row is rows[-1])
    # Wide enough for every column: a narrow terminal wraps lines rather than truncating numbers to "1.…".
    names = max(len(row["name"]) for row in rows)
    Console(width=max(Console().width, names + 9 * (len(rows[0]) - 1) + 4)).print(table)
    csv_path, json_path = fuse.write_scores(rows, out or fused / "metrics")
    console.print(f"saved {csv_path} and {json_path}")
