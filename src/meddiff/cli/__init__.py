"""The ``meddiff`` command line: parses, validates, calls a task. No logic lives here.

The top-level commands live in this module; each task with several commands has its own sub-command
group in a module of this package (``meddiff <group> --help``), registered in ``_GROUPS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from meddiff.devices import DEVICE_HELP
from meddiff.errors import UserError
from meddiff.files import is_write_failure, write_failure

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Diffusion models for medical imaging with few labels.",
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full stack traces on errors.")) -> None:
    _state["debug"] = debug


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config; its `task:` key picks the task (default generate)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train a diffusion model from a config; everything goes under one run folder.

    Example: `meddiff train configs/brain_joint.yaml --out runs/brain`
    """
    from meddiff.tasks import load_task_config

    task, cfg = load_task_config(config)
    run_dir = out or Path("runs") / config.stem
    result = task.fit(cfg, run_dir, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command()
def sample(
    run: Path = typer.Argument(..., help="Run folder (latest checkpoint) or a checkpoint folder."),
    n: int = typer.Option(16, "--n", min=1, help="Number of samples."),
    sampler: str = typer.Option("dpm++", "--sampler", help="ddpm | ddim | dpm++ | dpm++sde | unipc"),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = none)."),
    eta: float = typer.Option(0.0, "--eta", help="DDIM stochasticity (0 deterministic)."),
    seed: int = typer.Option(0, "--seed", help="Sample i uses seed + i."),
    out: Path = typer.Option(..., "--out", help="New folder for images/, masks/, manifest.json, grid.png."),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels (default: the training size)."),
    bf16: bool = typer.Option(False, "--bf16", help="Run the UNet in bf16 autocast (faster on AMX CPUs)."),
    attribute: str | None = typer.Option(
        None, "--attribute", help="Conditional models: attribute name or index (default: all)."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Sample images (and label maps) from a trained generator into a dataset folder.

    Example: `meddiff sample runs/brain --n 64 --sampler dpm++ --steps 20 --seed 0 --out runs/brain/synthetic`
    """
    from meddiff.diffusion.schedulers import SAMPLERS, SamplerConfig
    from meddiff.tasks import generate

    if sampler not in SAMPLERS:
        raise UserError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance, eta=eta)
    folder = generate.run(
        run, n, out, settings, seed=seed, size=size, autocast_bf16=bf16, attribute=attribute, device=device
    )
    console.print(f"wrote {n} samples to {folder}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder of the demo."),
    minutes: float = typer.Option(6.0, "--minutes", min=0.1, help="Training time budget."),
) -> None:
    """Train a joint image+label generator on the embedded brain MRI slices, sample, and write a report.

    Example: `meddiff demo --out runs/demo`  (about 8 minutes on a 2-core CPU)
    """
    from meddiff.tasks.demo import run_demo

    report = run_demo(out, minutes=minutes)
    console.print(f"report: {report}")


@app.command()
def report(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Write RUN/report.html: loss curve, sample grids, figures and metrics in one self-contained file.

    Example: `meddiff report runs/demo`
    """
    from meddiff.report import write_report

    console.print(f"report: {write_report(run)}")


def _add_groups() -> None:
    """Sub-command groups, one module each (imports inside their commands keep startup fast)."""
    from meddiff.cli import data, edit, fuse, generate, segment, synth, upscale

    for name, group in [
        ("data", data),
        ("synth", synth),
        ("generate", generate),
        ("segment", segment),
        ("edit", edit),
        ("fuse", fuse),
        ("upscale", upscale),
    ]:
        app.add_typer(group.app, name=name)


_add_groups()


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2, and so do writes that
    fail because of where they write (a full disk, a read-only folder: ``meddiff.files.WRITE_ERRNOS``).

    Usage errors (unknown option, missing argument) are reported by typer itself, also with exit code 2.
    """
    try:
        app()
    except (UserError, OSError) as exc:
        if _state["debug"] or not (isinstance(exc, UserError) or is_write_failure(exc)):
            raise
        message = write_failure(exc.filename, exc) if isinstance(exc, OSError) and exc.filename else exc
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)
