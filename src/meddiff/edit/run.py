"""``meddiff edit run``: edit one image (and its mask) with a prompt and write every output with metrics.

The output folder::

    OUT/
      images/alpha1.40_seed0.png ...   every edited image (name: alpha and seed)
      masks/alpha1.40_seed0.png ...    its label map (class ids), when a mask was edited
      manifest.json                    prompt and settings per file: OUT is a dataset folder meddiff reads
      input.png (input_mask.png)       the input as the model saw it (size, channels)
      grid.png                         rows: alphas (top: smallest); first column the input, then one per seed
      tradeoff.png                     SSIM to the input and text alignment against alpha
      metrics.json                     per output and per alpha: PSNR, SSIM, text alignment, collapse; the
                                       losses of stages A and B and the wall time of every stage

Fidelity is PSNR / SSIM of the edited image against the input (``metrics.image``). Text alignment is the
CLIP score with ``--clip`` (a local CLIP model), else the run's domain text-alignment network
(``metrics.text_alignment``), named in ``metrics.json``; the Stable Diffusion route without ``--clip`` has
none. An output counts as collapsed (blank or saturated, the failure the thesis reports for spherical
interpolation) when its intensity standard deviation on [0, 1] is below 0.02 or more than 95% of its
pixels sit at the ends of the range (<= 1/255 or >= 254/255).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from meddiff.config import to_dict
from meddiff.data.classmap import LabelSpec
from meddiff.data.fit import Fit
from meddiff.data.folders import to_channels
from meddiff.data.imagefiles import read_image, read_mask
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.validate import check_same_size
from meddiff.data.writers import write_pair_folder
from meddiff.edit.imagic import ImagicConfig, ImagicResult, imagic
from meddiff.edit.stable_diffusion import SD_DEFAULTS, is_stable_diffusion
from meddiff.errors import UserError
from meddiff.files import check_new_folder
from meddiff.metrics.image import psnr, ssim, to_unit_range
from meddiff.report.grids import image_grid, pairs_grid, save_png
from meddiff.report.plots import metric_curves
from meddiff.rundir import RunDir
from meddiff.tasks.runs import to_uint8

COLLAPSE_STD = 0.02
COLLAPSE_SATURATED = 0.95


def default_config(model: Path) -> ImagicConfig:
    """The default edit settings for ``model``: Imagic's published ones for Stable Diffusion, meddiff's
    measured CPU ones for a meddiff run."""
    return ImagicConfig(**SD_DEFAULTS) if is_stable_diffusion(Path(model)) else ImagicConfig()


def collapsed(images: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: blank (std < 0.02 on [0, 1]) or saturated (> 95% of pixels at the range ends)."""
    unit = to_unit_range(images).flatten(1)
    ends = ((unit <= 1 / 255) | (unit >= 254 / 255)).float().mean(dim=1)
    return (unit.std(dim=1) < COLLAPSE_STD) | (ends > COLLAPSE_SATURATED)


def read_input(
    image_path: Path, mask_path: Path | None, fit: Fit, channels: int | None, spec: LabelSpec | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image as ``[1, C, S, S]`` in [-1, 1] (``channels`` forced when given) and the mask as
    ``[1, S, S]`` class ids (through ``spec``), fitted like the training data."""
    image = read_image(image_path)
    mask = None
    if mask_path is not None:
        stored = read_mask(mask_path, spec.colours if spec else None)
        check_same_size(image_path, image.shape[-2:], mask_path, stored.shape)
        ids = spec.apply(stored, mask_path) if spec else stored
        mask = fit.mask(torch.from_numpy(np.ascontiguousarray(ids)).to(torch.uint8)).long()[None]
    fitted = fit.image(torch.from_numpy(image))
    fitted = to_channels(fitted, channels) if channels else fitted
    return fitted[None] * 2 - 1, mask


def _load_meddiff(model_path: Path, image_path: Path, mask_path: Path | None):
    from meddiff.edit.meddiff_model import MeddiffEditModel

    model = MeddiffEditModel.load(model_path)
    if model.class_names and mask_path is None:
        raise UserError(f"{model_path}: this model edits image + label-map pairs; pass the image's mask with --mask")
    if not model.class_names and mask_path is not None:
        raise UserError(f"{model_path}: this model was trained on images only; it cannot edit --mask {mask_path}")
    image, mask = read_input(
        image_path, mask_path, model.fit, model.image_channels, model.label_spec() if mask_path is not None else None
    )
    return model, image, mask, model.class_names


def _load_stable_diffusion(
    model_path: Path, image_path: Path, mask_path: Path | None, num_classes: int | None, device: str
):
    from meddiff.edit.stable_diffusion import StableDiffusionEditModel, native_size

    names = tuple(f"class {k}" for k in range(num_classes)) if num_classes else None
    spec = LabelSpec(names, source=f"--classes {num_classes}") if mask_path is not None else None
    image, mask = read_input(image_path, mask_path, Fit(native_size(model_path)), None, spec)
    if mask is not None and not num_classes:
        found = mask[mask != IGNORE_INDEX]
        num_classes = max(int(found.max()) + 1 if found.numel() else 1, 2)
    model = StableDiffusionEditModel(model_path, num_classes or 0, device)
    class_names = [f"class {k}" for k in range(num_classes)] if mask is not None else None
    return model, image, mask, class_names


def _scorer(model, clip: Path | None):
    """The text-alignment measure: CLIP score with a local CLIP, else the meddiff run's domain network."""
    from meddiff.metrics.text_alignment import ClipScore, DomainAlignmentScore

    if clip is not None:
        return ClipScore(clip)
    if hasattr(model, "model"):  # a meddiff run
        from meddiff.tasks.textgen import load_run_aligner

        aligner = load_run_aligner(model.model)
        return DomainAlignmentScore(aligner, model.model.encoder) if aligner is not None else None
    return None


def edit(
    model_path: Path,
    image_path: Path,
    prompt: str,
    out: Path,
    config: ImagicConfig,
    mask_path: Path | None = None,
    clip: Path | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Edit ``image_path`` (and ``mask_path``) towards ``prompt`` with Imagic; write everything to ``out``.

    ``model_path``: a meddiff ``textgen`` run (or checkpoint) or a Stable Diffusion checkpoint folder.
    ``num_classes``: Stable Diffusion only, the number of classes in the mask (default: its largest id + 1).
    """
    started = time.perf_counter()
    out = Path(out)
    if not prompt.strip():
        raise UserError("--prompt is empty; describe the edited image")
    check_new_folder(out)
    if clip is not None and not Path(clip).is_dir():
        raise UserError(f"--clip {clip}: not a folder (a local CLIP model saved with save_pretrained)")
    if is_stable_diffusion(Path(model_path)):
        model, image, mask, class_names = _load_stable_diffusion(
            Path(model_path), image_path, mask_path, num_classes, device
        )
        backend = "stable-diffusion"
    else:
        if num_classes is not None:
            raise UserError("--classes is for Stable Diffusion checkpoints; a meddiff run knows its classes")
        model, image, mask, class_names = _load_meddiff(Path(model_path), image_path, mask_path)
        backend = "meddiff"
    scorer = _scorer(model, clip)
    result = imagic(model, image, mask, prompt, config, progress=progress)
    result.images = {a: _as_channels(x, image.shape[1]) for a, x in result.images.items()}
    metrics = _metrics(result, image, prompt, config, scorer)
    metrics.update(
        prompt=prompt,
        model=str(model_path),
        backend=backend,
        image=str(image_path),
        mask=str(mask_path) if mask_path else None,
        class_names=class_names,
        settings=to_dict(config),
        total_seconds=round(time.perf_counter() - started, 1),
    )
    _write(out, image, mask, result, metrics, class_names)
    return out


def _as_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    return torch.stack([to_channels(x, channels) for x in images])


def _metrics(result: ImagicResult, image: torch.Tensor, prompt: str, config: ImagicConfig, scorer) -> dict:
    outputs, per_alpha = [], []
    for alpha in config.alphas:
        edited = result.images[alpha]
        reference = image.expand_as(edited)
        p, s = psnr(edited, reference, reduction="none"), ssim(edited, reference, reduction="none")
        aligned = scorer(edited, prompt) if scorer is not None else None
        broken = collapsed(edited)
        for seed in range(config.seeds):
            outputs.append(
                {
                    "alpha": alpha,
                    "seed": config.seed + seed,
                    "name": output_name(alpha, config.seed + seed),
                    "psnr": round(float(p[seed]), 3),
                    "ssim": round(float(s[seed]), 4),
                    "text_alignment": round(float(aligned[seed]), 3) if aligned is not None else None,
                    "collapsed": bool(broken[seed]),
                }
            )
        row = {
            "alpha": alpha,
            "psnr": round(float(p.mean()), 3),
            "ssim": round(float(s.mean()), 4),
            "text_alignment": round(float(aligned.mean()), 3) if aligned is not None else None,
            "collapse_rate": round(float(broken.float().mean()), 3),
        }
        masks = result.masks[alpha]
        if masks is not None:
            counts = torch.stack([torch.bincount(m.flatten(), minlength=int(masks.max()) + 1) for m in masks]).sum(0)
            row["class_fractions"] = [round(float(c), 4) for c in counts / counts.sum()]
        per_alpha.append(row)
    return {
        "interp": config.interp,
        "text_alignment_measure": scorer.measure if scorer is not None else None,
        "input_text_alignment": round(float(scorer(image, prompt)[0]), 3) if scorer is not None else None,
        "stage_seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "stage_A": {
            "reconstruction_loss_at_target": round(result.reconstruction_before, 5),
            "reconstruction_loss_at_optimised": round(result.reconstruction_after, 5),
            "first_loss": _first(result.embed_losses),
            "last_loss": _last(result.embed_losses),
        },
        "stage_B": {"first_loss": _first(result.finetune_losses), "last_loss": _last(result.finetune_losses)},
        "per_alpha": per_alpha,
        "outputs": outputs,
    }


def _first(losses: list[float]) -> float | None:
    return round(float(np.mean(losses[:10])), 5) if losses else None


def _last(losses: list[float]) -> float | None:
    return round(float(np.mean(losses[-10:])), 5) if losses else None


def output_name(alpha: float, seed: int) -> str:
    return f"alpha{alpha:.2f}_seed{seed}"


def _uint8(images: torch.Tensor) -> np.ndarray:
    arrays = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return arrays[..., 0] if arrays.shape[-1] == 1 else arrays


def _write(
    out: Path,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    result: ImagicResult,
    metrics: dict,
    class_names: list[str] | None,
) -> None:
    alphas = list(result.images)
    images = torch.cat([result.images[a] for a in alphas])
    masks = torch.cat([result.masks[a] for a in alphas]) if mask is not None else None
    names = [o["name"] for o in metrics["outputs"]]
    manifest = {
        "prompt": metrics["prompt"],
        "model": metrics["model"],
        "class_names": class_names,
        "files": [
            {
                "image": f"images/{o['name']}.png",
                **({"mask": f"masks/{o['name']}.png"} if masks is not None else {}),
                "alpha": o["alpha"],
                "seed": o["seed"],
                "interp": metrics["interp"],
            }
            for o in metrics["outputs"]
        ],
    }
    seeds = images.shape[0] // len(alphas)
    scale = max(1, 128 // image.shape[-1])

    def figures(folder: Path) -> None:
        """The input, the grid, the trade-off curve and metrics.json, written before the folder is committed."""
        save_png(_uint8(image)[0], folder / "input.png")
        if mask is not None:
            save_png(mask[0].clamp(max=255).to(torch.uint8).numpy(), folder / "input_mask.png")
            rows_i = torch.cat([torch.cat([image, result.images[a]]) for a in alphas])
            rows_m = torch.cat([torch.cat([mask, result.masks[a]]) for a in alphas])
            grid = pairs_grid(rows_i, rows_m, len(class_names), ncol=seeds + 1, scale=scale)
        else:
            grid = image_grid(
                torch.cat([torch.cat([image, result.images[a]]) for a in alphas]), nrow=seeds + 1, scale=scale
            )
        save_png(grid, folder / "grid.png")
        # text alignment (when measured) is drawn dashed on the right-hand axis
        aligned = "text_alignment" if metrics["text_alignment_measure"] is not None else None
        metric_curves(
            metrics["per_alpha"],
            "alpha",
            ["ssim"],
            folder / "tradeoff.png",
            time_key=aligned,
            title=f"'{metrics['prompt'][:60]}' ({metrics['interp']})",
            ylabel="SSIM to the input",
        )
        RunDir(folder).write_metrics(metrics)

    masks_u8 = masks.numpy() if masks is not None else None
    write_pair_folder(out, _uint8(images), masks_u8, names, manifest, extra=figures)
