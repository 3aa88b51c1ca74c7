"""``meddiff synth``: mask-to-image synthesis (diffusion with SPADE) and its pix2pix baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from meddiff.cli.upscale import UPSCALE_AUG_HELP, UPSCALE_HELP, UPSCALE_STEPS_HELP, cascade_options
from meddiff.devices import DEVICE_HELP
from meddiff.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Synthesise images from label maps (diffusion or pix2pix).")
console = Console(stderr=True)

MASKS_HELP = (
    "A folder of masks (or a dataset folder with masks/) stored like the training data or written by "
    "meddiff, raw CaDIS label maps (with --cadis-task), or a joint generator's run folder."
)


def load_config(path: Path, task: str, overrides: dict | None = None) -> Any:
    """The config of ``task`` in the YAML file ``path`` (its ``task:`` key, if present, must be ``task``), with
    the top-level keys of ``overrides`` (command-line options) in place of the file's."""
    import importlib

    from meddiff.config import from_dict, read_yaml
    from meddiff.tasks import TASKS

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    data = dict(data)
    found = data.pop("task", task)
    if found != task:
        raise UserError(f"{path}: 'task' is '{found}', but this command trains '{task}'")
    data.update(overrides or {})
    module_name, class_name = TASKS[task]
    try:
        return from_dict(getattr(importlib.import_module(module_name), class_name), data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _augment(
    hflip: bool,
    vflip: bool,
    rotate: float,
    elastic: float,
    paste_class: list[int] | None,
    mirror_pair: list[str] | None,
):
    from meddiff.data.mask_sources import MaskAugment

    pairs = [[name.strip() for name in pair.split(",")] for pair in mirror_pair or []]
    try:
        return MaskAugment(
            hflip=hflip,
            vflip=vflip,
            rotate=rotate,
            elastic=elastic,
            paste_classes=list(paste_class or []),
            mirror_pairs=[[int(n) if n.isdigit() else n for n in pair] for pair in pairs],
        )
    except ValueError as exc:
        raise UserError(f"mask augmentation: {exc}") from None


MIRROR_HELP = (
    "Two classes (names or ids, comma-separated) that a left-right flip swaps, e.g. 'right lung,left lung'; "
    "repeatable. The pairs of the model's training data apply too."
)


def _cadis(task: str | None) -> str | None:
    from meddiff.data.cadis import cadis_remap

    if task is not None:
        cadis_remap(task)  # a UserError naming the tasks when unknown
    return task


@app.command("fit")
def fit(
    config: Path = typer.Argument(..., help="YAML config of the synthesize task (data, model, noise, train, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Start from this pretrained image-only run (`meddiff train`, joint_mask: false) instead of the "
        "config's init_from; its model and noise replace the config's.",
    ),
) -> None:
    """Train a mask-to-image diffusion model (SPADE / concat / ControlNet conditioning, guidance dropout) on
    image+mask pairs, from scratch or adapted from a model pretrained on all your images.

    Example: `meddiff synth fit configs/synth_brain.yaml --init-from runs/brain_image --out runs/synth_brain`
    """
    from meddiff.tasks import synthesize

    cfg = load_config(config, synthesize.TASK, {"init_from": str(init_from)} if init_from else None)
    result = synthesize.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command("run")
def run(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Run folder (latest checkpoint) or checkpoint folder."),
    masks: Path = typer.Option(..., "--masks", help=MASKS_HELP),
    out: Path = typer.Option(..., "--out", help="New folder for images/, masks/, manifest.json, grid.png."),
    n_per_mask: int = typer.Option(1, "--n-per-mask", min=1, help="Images per mask (different seeds)."),
    sampler: str = typer.Option("dpm++", "--sampler", help="ddpm | ddim | dpm++ | dpm++sde | unipc"),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    guidance: float = typer.Option(1.5, "--guidance", help="Classifier-free guidance on the mask (1 = none)."),
    eta: float = typer.Option(0.0, "--eta", help="DDIM stochasticity (0 deterministic)."),
    seed: int = typer.Option(0, "--seed", help="Output j uses seed + j."),
    cadis_task: str | None = typer.Option(
        None,
        "--cadis-task",
        help="Read --masks as raw CaDIS label maps remapped to this task (task1 | task2 | task3 | merged5 | raw).",
    ),
    n_masks: int = typer.Option(16, "--n-masks", min=1, help="Masks to sample when --masks is a joint generator."),
    hflip: bool = typer.Option(False, "--hflip", help="Augment: random left-right flips of the masks."),
    vflip: bool = typer.Option(False, "--vflip", help="Augment: random top-bottom flips."),
    rotate: float = typer.Option(0.0, "--rotate", min=0.0, help="Augment: random rotation up to this many degrees."),
    elastic: float = typer.Option(0.0, "--elastic", min=0.0, help="Augment: elastic warp up to this many pixels."),
    paste_class: list[int] | None = typer.Option(
        None, "--paste-class", help="Augment: paste this class (e.g. an instrument) from another mask; repeatable."
    ),
    mirror_pair: list[str] | None = typer.Option(None, "--mirror-pair", help=MIRROR_HELP),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images sampled at once."),
    bf16: bool = typer.Option(False, "--bf16", help="Run the UNet in bf16 autocast (faster on AMX CPUs)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    upscale: Path | None = typer.Option(None, "--upscale", help=UPSCALE_HELP),
    upscale_steps: int = typer.Option(20, "--upscale-steps", min=1, help=UPSCALE_STEPS_HELP),
    upscale_aug_level: float | None = typer.Option(None, "--upscale-aug-level", help=UPSCALE_AUG_HELP),
) -> None:
    """Synthesise images for label maps with a trained mask-to-image model into a dataset folder (with
    --upscale, enlarged by a super-resolution run: the cascade).

    Example: `meddiff synth run runs/synth_brain --masks my_masks/ --out runs/synth_brain/synthetic
    --n-per-mask 2 --sampler dpm++ --steps 20 --guidance 1.5 --seed 0`
    """
    from meddiff.diffusion.schedulers import SAMPLERS, SamplerConfig
    from meddiff.tasks import synthesize

    if sampler not in SAMPLERS:
        raise UserError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance, eta=eta)
    folder = synthesize.run(
        run_dir,
        masks,
        out,
        settings,
        n_per_mask=n_per_mask,
        seed=seed,
        augment=_augment(hflip, vflip, rotate, elastic, paste_class, mirror_pair),
        cadis_task=_cadis(cadis_task),
        n_masks=n_masks,
        batch_size=batch_size,
        autocast_bf16=bf16,
        device=device,
        cascade=cascade_options(upscale, upscale_steps, upscale_aug_level),
    )
    console.print(f"wrote {folder}")


@app.command("pix2pix-fit")
def pix2pix_fit(
    config: Path = typer.Argument(..., help="YAML config of the pix2pix task (data, model, train)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train the pix2pix baseline (U-Net generator + PatchGAN, L1 + adversarial) on image+mask pairs.

    Example: `meddiff synth pix2pix-fit configs/synth_pix2pix_brain.yaml --out runs/pix2pix_brain`
    """
    from meddiff.tasks import pix2pix

    cfg = load_config(config, pix2pix.TASK)
    result = pix2pix.fit(cfg, out or Path("runs") / config.stem, resume=resume)
    console.print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")


@app.command("pix2pix-run")
def pix2pix_run(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="pix2pix run folder or checkpoint folder."),
    masks: Path = typer.Option(..., "--masks", help=MASKS_HELP),
    out: Path = typer.Option(..., "--out", help="New folder for images/, masks/, manifest.json, grid.png."),
    n_per_mask: int = typer.Option(1, "--n-per-mask", min=1, help="Images per mask (dropout seeds)."),
    seed: int = typer.Option(0, "--seed", help="Output j uses seed + j."),
    cadis_task: str | None = typer.Option(
        None, "--cadis-task", help="Read --masks as raw CaDIS label maps remapped to this task."
    ),
    n_masks: int = typer.Option(16, "--n-masks", min=1, help="Masks to sample when --masks is a joint generator."),
    hflip: bool = typer.Option(False, "--hflip", help="Augment: random left-right flips of the masks."),
    vflip: bool = typer.Option(False, "--vflip", help="Augment: random top-bottom flips."),
    rotate: float = typer.Option(0.0, "--rotate", min=0.0, help="Augment: random rotation up to this many degrees."),
    elastic: float = typer.Option(0.0, "--elastic", min=0.0, help="Augment: elastic warp up to this many pixels."),
    paste_class: list[int] | None = typer.Option(
        None, "--paste-class", help="Augment: paste this class from another mask; repeatable."
    ),
    mirror_pair: list[str] | None = typer.Option(None, "--mirror-pair", help=MIRROR_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Translate label maps into images with a trained pix2pix generator, into a dataset folder.

    Example: `meddiff synth pix2pix-run runs/pix2pix_brain --masks my_masks/ --out runs/pix2pix_brain/synthetic`
    """
    from meddiff.tasks import pix2pix

    folder = pix2pix.run(
        run_dir,
        masks,
        out,
        n_per_mask=n_per_mask,
        seed=seed,
        augment=_augment(hflip, vflip, rotate, elastic, paste_class, mirror_pair),
        cadis_task=_cadis(cadis_task),
        n_masks=n_masks,
        device=device,
    )
    console.print(f"wrote {folder}")
