"""``meddiff edit``: train a text-conditioned model, and edit real images (+ masks) with a prompt (Imagic)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Text-guided editing of real images and their label maps (Imagic).")
console = Console(stderr=True)


@app.command("fit")
def edit_fit(
    config: Path = typer.Argument(..., help="YAML config of the text-conditioned model (task: textgen)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train the text-conditioned image (+ label map) model that `meddiff edit run` edits with.

    Captions come from the config's `captions:` section (a CSV file, or a template on the label map);
    the run folder's captions.csv lists them: prompts work best in that vocabulary.

    Example: `meddiff edit fit configs/edit_brain.yaml --out runs/edit_brain`
    """
    from meddiff.errors import UserError
    from meddiff.tasks import load_task_config, textgen

    task, cfg = load_task_config(config)
    if task is not textgen:
        raise UserError(f"{config}: 'task' must be textgen for `meddiff edit fit`")
    result = textgen.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


def _floats(text: str, option: str) -> list[float]:
    from meddiff.errors import UserError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} '{text}': give comma-separated numbers, e.g. 0.8,1.0,1.2") from None
    if not values:
        raise UserError(f"{option} is empty")
    return values


@app.command("run")
def edit_run(
    model: Path = typer.Option(
        ...,
        "--model",
        help="A `meddiff edit fit` run folder, or a local Stable Diffusion checkpoint folder (diffusers layout).",
    ),
    image: Path = typer.Option(..., "--image", help="The image to edit (PNG, JPEG, TIFF, BMP)."),
    prompt: str = typer.Option(..., "--prompt", help="What the edited image should show."),
    out: Path = typer.Option(..., "--out", help="New folder for every output, grid.png and metrics.json."),
    mask: Path | None = typer.Option(None, "--mask", help="Its label map (class ids), edited with it."),
    alphas: str = typer.Option(
        "0.8,1.0,1.2,1.4,1.6", "--alphas", help="Interpolation weights of the target prompt (1 = the prompt itself)."
    ),
    interp: str = typer.Option("linear", "--interp", help="linear | slerp"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Samples per alpha (seeds seed..seed+N-1)."),
    seed: int = typer.Option(0, "--seed", help="First seed (also drives stages A and B)."),
    embed_steps: int | None = typer.Option(
        None, "--embed-steps", min=0, help="Stage A steps (default 100; Stable Diffusion 500)."
    ),
    embed_lr: float | None = typer.Option(None, "--embed-lr", help="Stage A learning rate (1e-2; SD 1e-3)."),
    finetune_steps: int | None = typer.Option(
        None, "--finetune-steps", min=0, help="Stage B steps (default 400; Stable Diffusion 1000)."
    ),
    finetune_lr: float | None = typer.Option(None, "--finetune-lr", help="Stage B learning rate (1e-3; SD 2e-6)."),
    sampler: str | None = typer.Option(
        None, "--sampler", help="ddpm | ddim | dpm++ | dpm++sde | unipc (default dpm++; SD ddim)."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default 20; SD 50)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale (default 1; SD 7.5)."),
    clip: Path | None = typer.Option(
        None, "--clip", help="Local CLIP model folder: report CLIP score as the text alignment."
    ),
    classes: int | None = typer.Option(
        None, "--classes", min=2, help="Stable Diffusion with --mask: number of classes (default: largest id + 1)."
    ),
    bf16: bool = typer.Option(False, "--bf16", help="Run the model in bf16 autocast (faster on AMX CPUs)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (Stable Diffusion checkpoints)."),
) -> None:
    """Edit one image (and its label map) towards a prompt with Imagic: (A) optimise the prompt's
    embedding to reconstruct the image, (B) fine-tune the model on it, (C) sample between the two
    embeddings for every alpha and seed. Writes every output, grid.png (rows alpha, columns seeds after
    the input), tradeoff.png and metrics.json (PSNR/SSIM to the input, text alignment, collapse rate).

    Example: `meddiff edit run --model runs/edit_brain --image slice.png --mask slice_mask.png
    --prompt "T1-weighted brain MRI, axial slice, axial level 7/8, small white matter at centre"
    --alphas 0.8,1.0,1.2,1.4,1.6 --interp linear --seeds 3 --out runs/edits/level7`
    """
    import dataclasses

    from meddiff.diffusion.schedulers import SAMPLERS
    from meddiff.edit.interpolate import INTERPS
    from meddiff.edit.run import default_config, edit
    from meddiff.errors import UserError

    if interp not in INTERPS:
        raise UserError(f"--interp '{interp}' is not one of {', '.join(INTERPS)}")
    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    if not model.exists():
        raise UserError(f"--model {model}: not found")
    config = default_config(model)
    given = {
        "embed_steps": embed_steps,
        "embed_lr": embed_lr,
        "finetune_steps": finetune_steps,
        "finetune_lr": finetune_lr,
    }
    sampling = {"name": sampler, "steps": steps, "guidance_scale": guidance}
    try:
        config = dataclasses.replace(
            config,
            alphas=_floats(alphas, "--alphas"),
            interp=interp,
            seeds=seeds,
            seed=seed,
            bf16=bf16,
            sampler=dataclasses.replace(config.sampler, **{k: v for k, v in sampling.items() if v is not None}),
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValueError as exc:
        raise UserError(f"invalid edit setting: {exc}") from None
    folder = edit(model, image, prompt, out, config, mask_path=mask, clip=clip, num_classes=classes, device=device)
    console.print(f"edits, grid.png and metrics.json in {folder}")
