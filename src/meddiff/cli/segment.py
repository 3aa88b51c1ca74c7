"""``meddiff segment``: few-label segmentation from diffusion features, and its U-Net baseline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from meddiff.devices import DEVICE_HELP
from meddiff.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Few-label segmentation from a diffusion model's features.")
console = Console(stderr=True)


def _config(path: Path, task: str):
    from meddiff.tasks import load_task_config

    module, config = load_task_config(path)
    if module.TASK != task:
        raise UserError(f"{path}: a '{module.TASK}' config, but this command needs 'task: {task}'")
    return module, config


@app.command("fit")
def fit(
    config: Path = typer.Argument(..., help="YAML config with `task: segment` (diffusion run, labelled data)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
) -> None:
    """Train the pixel classifier (MLP ensemble) on diffusion features of a few labelled images.

    Example: `meddiff segment fit configs/segment_brain.yaml --out runs/brain_segment`
    """
    module, cfg = _config(config, "segment")
    result = module.fit(cfg, out or Path("runs") / config.stem)
    console.print(f"trained {result.step} steps in {result.seconds / 60:.1f} min; classifier {result.checkpoint}")


@app.command("predict")
def predict(
    run: Path = typer.Argument(..., help="Run folder written by `meddiff segment fit`."),
    images: Path = typer.Option(..., "--images", help="Folder of images to segment (any size)."),
    out: Path = typer.Option(..., "--out", help="New folder for masks/, overlays/, uncertainty/, disagreement/."),
    tile_mb: int | None = typer.Option(
        None, "--tile-mb", min=1, help="Features held at once while predicting (default: the run's)."
    ),
    min_island: int | None = typer.Option(
        None,
        "--min-island",
        min=0,
        help="Refill regions of one class smaller than this many pixels at the working size from their "
        "surroundings (default: the run's min_island; 0 = off).",
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Segment a folder of images: class-id masks, colour overlays and per-pixel uncertainty maps.

    Example: `meddiff segment predict runs/brain_segment --images scans/ --out runs/brain_segment/predicted`
    """
    from meddiff.tasks.segment import predict_folder

    folder = predict_folder(run, images, out, tile_mb=tile_mb, device=device, min_island=min_island)
    console.print(f"wrote masks, overlays and uncertainty maps to {folder}")


@app.command("sweep")
def sweep(
    config: Path = typer.Argument(..., help="YAML config with `task: segment`; its `sweep:` section applies."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: runs/<config name>_sweep)."),
) -> None:
    """Score every decoder block at every timestep on validation images; write a heat-map and a table.

    Example: `meddiff segment sweep configs/segment_brain.yaml --out runs/brain_sweep`
    """
    module, cfg = _config(config, "segment")
    table = module.sweep(cfg, out or Path("runs") / f"{config.stem}_sweep")
    console.print(f"sweep table: {table}")


@app.command("self-train")
def self_train(
    config: Path = typer.Argument(
        ..., help="YAML config with `task: segmenter` and a `self_training:` section (classifier run, unlabelled data)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Self-training: the pixel classifier labels the unlabelled images and a U-Net learns from its surest
    pixels beside the true labels (one or two rounds).

    Example: `meddiff segment self-train configs/segment_brain_selftrain.yaml --out runs/brain_selftrain`
    """
    module, cfg = _config(config, "segmenter")
    if cfg.self_training is None:
        raise UserError(f"{config}: no `self_training:` section (the classifier run and the unlabelled images)")
    result = module.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    best = f"; best held-out loss {result.best_score:.4f} at step {result.best_step}" if result.best_step else ""
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min{best}")


@app.command("baseline")
def baseline(
    config: Path = typer.Argument(..., help="YAML config with `task: segmenter` (labelled data, U-Net, training)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train the U-Net baseline segmenter from scratch on the same labelled images.

    Example: `meddiff segment baseline configs/segment_brain_unet.yaml --out runs/brain_unet`
    """
    module, cfg = _config(config, "segmenter")
    result = module.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    best = f"; best held-out loss {result.best_score:.4f} at step {result.best_step}" if result.best_step else ""
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min{best}")
