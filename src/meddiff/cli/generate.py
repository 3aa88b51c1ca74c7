"""``meddiff generate``: the joint image + label-map generator (images only for unlabelled data)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from meddiff.cli.upscale import UPSCALE_AUG_HELP, UPSCALE_HELP, UPSCALE_STEPS_HELP, cascade_options
from meddiff.devices import DEVICE_HELP
from meddiff.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Generate image + label-map pairs from noise.")
console = Console(stderr=True)


@app.command("fit")
def fit(
    config: Path = typer.Argument(..., help="YAML config of the generate task (data, model, noise, train, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train a joint image + label-map diffusion model (one-hot or analog-bit mask channels).

    Example: `meddiff generate fit configs/brain_joint.yaml --out runs/brain`
    """
    from meddiff.cli.synth import load_config
    from meddiff.tasks import generate

    cfg = load_config(config, generate.TASK)
    result = generate.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command("run")
def run(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Run folder (latest checkpoint) or checkpoint folder."),
    n: int = typer.Option(16, "--n", min=1, help="Number of pairs."),
    out: Path = typer.Option(..., "--out", help="New folder for images/, masks/, manifest.json, grid.png."),
    sampler: str = typer.Option("dpm++", "--sampler", help="ddpm | ddim | dpm++ | dpm++sde | unipc"),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    guidance: float = typer.Option(1.0, "--guidance", help="Guidance on the attribute (conditional models; 1 = none)."),
    eta: float = typer.Option(0.0, "--eta", help="DDIM stochasticity (0 deterministic)."),
    seed: int = typer.Option(0, "--seed", help="Sample i uses seed + i."),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels (default: the training size)."),
    attribute: str | None = typer.Option(
        None, "--attribute", help="Conditional models: attribute name or index (default: all)."
    ),
    bf16: bool = typer.Option(False, "--bf16", help="Run the UNet in bf16 autocast (faster on AMX CPUs)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    upscale: Path | None = typer.Option(None, "--upscale", help=UPSCALE_HELP),
    upscale_steps: int = typer.Option(20, "--upscale-steps", min=1, help=UPSCALE_STEPS_HELP),
    upscale_aug_level: float | None = typer.Option(None, "--upscale-aug-level", help=UPSCALE_AUG_HELP),
) -> None:
    """Sample labelled pairs from a trained joint generator into a dataset folder the image+mask loader reads
    (with --upscale, enlarged by a super-resolution run: the cascade).

    Example: `meddiff generate run runs/brain --n 64 --out runs/brain/pairs --sampler dpm++ --steps 20 --guidance 2`
    """
    from meddiff.diffusion.schedulers import SAMPLERS, SamplerConfig
    from meddiff.tasks import generate

    if sampler not in SAMPLERS:
        raise UserError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance, eta=eta)
    folder = generate.run(
        run_dir,
        n,
        out,
        settings,
        seed=seed,
        size=size,
        autocast_bf16=bf16,
        attribute=attribute,
        device=device,
        cascade=cascade_options(upscale, upscale_steps, upscale_aug_level),
    )
    console.print(f"wrote {n} pairs to {folder}")
