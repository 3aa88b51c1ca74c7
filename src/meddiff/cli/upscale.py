"""``meddiff upscale``: SR3 super-resolution, alone or after a generator (the cascade)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from meddiff.devices import DEVICE_HELP
from meddiff.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Upscale images (and their label maps) with a diffusion model.")
console = Console(stderr=True)

# the cascade options of `generate run` and `synth run`
UPSCALE_HELP = "Upscale every pair with this super-resolution run (the cascade; see `meddiff upscale`)."
UPSCALE_STEPS_HELP = "Sampling steps of the upscaler (with --upscale)."
UPSCALE_AUG_HELP = "Conditioning noise level of the upscaler, 0..its max_aug_level (default: its run's aug_level)."


def cascade_options(run: Path | None, steps: int, aug_level: float | None):  # -> upscale.Cascade | None
    """The cascade that ``--upscale``, ``--upscale-steps`` and ``--upscale-aug-level`` ask for (None without
    ``--upscale``)."""
    from meddiff.tasks.upscale import Cascade

    if run is None:
        if aug_level is not None:
            raise UserError("--upscale-aug-level needs --upscale RUN")
        return None
    return Cascade(run, steps, aug_level)


@app.command("fit")
def fit(
    config: Path = typer.Argument(..., help="YAML config of the upscale task (data, factor, model, train, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train an SR3 super-resolution model on (random crops of) a folder of images, labelled or not.

    Example: `meddiff upscale fit configs/upscale_brain.yaml --out runs/brain_upscale`
    """
    from meddiff.cli.synth import load_config
    from meddiff.tasks import upscale

    cfg = load_config(config, upscale.TASK)
    result = upscale.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command("run")
def run(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Run folder (latest checkpoint) or checkpoint folder."),
    images: Path = typer.Option(
        ..., "--images", help="A folder of images, or a dataset folder with images/ and masks/ (any size)."
    ),
    out: Path = typer.Option(..., "--out", help="New folder for images/, masks/, manifest.json, grid.png."),
    sampler: str = typer.Option("dpm++", "--sampler", help="ddpm | ddim | dpm++ | dpm++sde | unipc"),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    aug_level: float | None = typer.Option(
        None, "--aug-level", help="Conditioning noise level, 0..the run's max_aug_level (default: its aug_level)."
    ),
    seed: int = typer.Option(0, "--seed", help="Image i (sorted by name) uses seed + i."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images of one size upscaled together."),
    bf16: bool = typer.Option(False, "--bf16", help="Run the UNet in bf16 autocast (faster on AMX CPUs)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Upscale every image of a folder by the model's factor into a dataset folder (label maps by nearest
    neighbour; a label-aware model draws the image for them).

    Example: `meddiff upscale run runs/brain_upscale --images runs/brain/pairs --out runs/brain/pairs_256`
    """
    from meddiff.diffusion.schedulers import SAMPLERS, SamplerConfig
    from meddiff.tasks import upscale

    if sampler not in SAMPLERS:
        raise UserError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    settings = SamplerConfig(name=sampler, steps=steps)
    folder = upscale.run(run_dir, images, out, settings, seed, aug_level, batch_size, autocast_bf16=bf16, device=device)
    console.print(f"wrote the upscaled images to {folder}")
