"""Multi-modal image fusion: a conditional diffusion model on registered pairs, classic rules, evaluation.

- ``fit``: trains ``FusionDenoiser`` (Restormer blocks, Haar wavelets, cross-attention between the sources)
  to denoise the fused Y channel given concat(Y_A, Y_B, x_t). Fusion has no ground truth: the denoising
  target of each pair is its fusion prior (the best classic rule under 2 SSIM + VIF + 3 Qabf, see
  ``meddiff.fusion.prior``), and the model's x0 estimate also gets unsupervised fidelity losses (intensity
  towards the brighter source, gradients towards the stronger source gradient, SSIM to each source).
  The shipped configs predict x0 directly (``prediction_type: sample``): fusion is a near-deterministic
  mapping, and at a few minutes of CPU training x0 prediction gave far cleaner 6-step samples than v
  prediction (exploratory run, 120 steps on MRI-PET, 4 MRI-SPECT test pairs: SF 13.5 vs 66.6 where pixel
  max gives 18.4, VIF 0.60 vs 0.22).
- Background: where both sources are black (exactly -1), the sampled Y is set to black
  (``keep_background``): fusion creates no signal there, and the protocol's SSIM (data range 2, so
  virtually no stabilising constants) scores any residual sampling noise on black background as ~0.
- ``run``: fuses two folders of sources with a trained run (few-step DDIM) or a classic rule by name.
  Colour sources are fused through their Y; their Cb/Cr are put back (colour in, colour out). Any size.
- ``evaluate``: the published protocol (``meddiff.metrics.fusion``) on folders of sources and fused images.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.devices import randint, randn
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import atomic_write
from meddiff.fusion.colour import colourise, luma, merged_chroma
from meddiff.fusion.folders import FusedFolder, list_pairs, match_fused, read_source
from meddiff.fusion.prior import fusion_prior
from meddiff.fusion.rules import RULES
from meddiff.metrics.fusion import METRICS, OutputRange, fusion_scores, read_gray, to_uint8
from meddiff.nets.restormer import FusionDenoiser, FusionNetConfig
from meddiff.progress import progress_bar
from meddiff.report.grids import image_grid, save_png
from meddiff.rundir import RunDir
from meddiff.runlock import releases_run_lock
from meddiff.tasks.runs import RunHandle, load_trained, run_config
from meddiff.tasks.runs import to_uint8 as unit_to_uint8
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "fuse"
# The protocol's metrics plus Wang-style SSIM under its own name (what `meddiff fuse eval` reports).
EVAL_METRICS = (*METRICS, "SSIM_wang")


@dataclass
class FidelityConfig:
    """Unsupervised fidelity losses on the model's x0 estimate (added to the denoising loss)."""

    weight: float = 1.0  # overall factor (0 switches them off)
    intensity: float = 1.0  # L1 to the pixel-wise maximum of the sources
    gradient: float = 1.0  # L1 of Sobel magnitudes to the larger source magnitude
    ssim: float = 1.0  # (1 - SSIM) to each source


@dataclass
class FuseConfig:
    """``meddiff fuse fit`` / ``meddiff train`` config of the fusion task (``task: fuse``)."""

    data: DataConfig = field(default_factory=DataConfig)  # kind paired_folder: image = A, image_b = B
    model: FusionNetConfig = field(default_factory=FusionNetConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(name="ddim", steps=6))
    prior_rules: list[str] = field(default_factory=lambda: list(RULES))  # candidates of the fusion prior
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    output_range: OutputRange = "minmax"  # how `run` brings the model's Y to 8 bits (the published models' way)
    keep_background: bool = True  # black where both sources are black (see the module docstring)
    grid_pairs: int = 4  # training pairs shown in the sample grids


def _check(config: FuseConfig) -> None:
    """Refuse settings the fusion task cannot honour, before anything is read or written."""
    if config.data.kind != "paired_folder":
        raise UserError(f"'data.kind' must be paired_folder for the fuse task, got '{config.data.kind}'")
    if config.noise.time_input != "timestep":
        raise UserError("'noise.time_input' must be timestep for the fuse task")
    if config.noise.loss_weighting != "none":
        raise UserError("'noise.loss_weighting' must be none for the fuse task (its loss is not SNR-weighted)")
    unknown = [r for r in config.prior_rules if r not in RULES]
    if unknown or not config.prior_rules:
        raise UserError(f"'prior_rules' must name rules among {', '.join(RULES)}, got {config.prior_rules}")


# -- training -----------------------------------------------------------------------------------------------
def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of ``[N, 1, H, W]`` with 3x3 Sobel kernels and replicated borders."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return g.abs().sum(1, keepdim=True)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Differentiable SSIM ``[N]`` of ``[N, 1, H, W]`` images (Wang et al.: 11-tap Gaussian, sigma 1.5,
    over the pixels where the window fits). Hand-written with a separable window: torchmetrics' SSIM
    convolves with the full 11x11 window and made a training step about twice as slow on CPU."""
    coords = torch.arange(11, dtype=x.dtype, device=x.device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    maps = F.conv2d(maps, g.view(1, 1, 11, 1).expand(5, 1, 11, 1), groups=5)
    mx, my, xx, yy, xy = F.conv2d(maps, g.view(1, 1, 1, 11).expand(5, 1, 1, 11), groups=5).unbind(1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    ssim = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim.mean((1, 2))


@torch.autocast("cpu", enabled=False)
@torch.autocast("cuda", enabled=False)
def fidelity_losses(fused: torch.Tensor, sources: torch.Tensor, weights: FidelityConfig) -> torch.Tensor:
    """Per-sample weighted sum ``[N]`` of the fidelity losses of ``fused`` ``[N, 1, H, W]`` against
    ``sources`` ``[N, 2, H, W]``, all in [-1, 1]. Always in float32: SSIM's variances (E[x^2] - E[x]^2)
    lose their sign in bf16 and give NaN."""
    fused, sources = fused.float(), sources.float()
    a, b = sources[:, :1], sources[:, 1:]
    intensity = (fused - torch.maximum(a, b)).abs().mean((1, 2, 3))
    gradient = (sobel_magnitude(fused) - torch.maximum(sobel_magnitude(a), sobel_magnitude(b))).abs().mean((1, 2, 3))
    ssim = 2 - ssim_per_image(fused, a) - ssim_per_image(fused, b)
    return weights.intensity * intensity + weights.gradient * gradient + weights.ssim * ssim


def fusion_loss(
    model: torch.nn.Module, batch: dict, generator: torch.Generator, diffusion: Diffusion, fidelity: FidelityConfig
) -> torch.Tensor:
    """Denoising loss towards the prior target plus alpha_bar-weighted fidelity of the x0 estimate.

    ``batch["image"]`` holds ``[Y_A, Y_B, target]`` as channels. Written out instead of calling
    ``Diffusion.loss`` because the fidelity terms need the model's x0 estimate, which that method does not
    return; noising and targets are still diffusers' (``add_noise``, ``get_velocity``).
    """
    x = batch["image"]
    sources, x0 = x[:, :2], x[:, 2:]
    t = randint(diffusion.config.num_train_timesteps, (x0.shape[0],), generator, x0.device)
    noise = randn(tuple(x0.shape), generator, x0.device, x0.dtype)
    x_t = diffusion.scheduler.add_noise(x0, noise, t)
    prediction = model(x_t, diffusion.model_time(t), cond_image=sources).float()
    alpha_bar = diffusion.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
    kind = diffusion.config.prediction_type
    if kind == "sample":
        target, x0_hat = x0, prediction
    elif kind == "v_prediction":
        target = diffusion.scheduler.get_velocity(x0, noise, t)
        x0_hat = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * prediction
    else:
        target = noise
        x0_hat = (x_t - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    loss = F.mse_loss(prediction, target.float())
    if fidelity.weight:
        # A direct x0 prediction is meaningful at every noise level; one derived from noise or v is not.
        weight = torch.ones_like(alpha_bar.flatten()) if kind == "sample" else alpha_bar.flatten()
        loss = loss + fidelity.weight * (weight * fidelity_losses(x0_hat, sources, fidelity)).mean()
    return loss


def training_set(dataset: ArrayDataset, rules: list[str]) -> tuple[ArrayDataset, dict]:
    """The paired dataset as ``[Y_A, Y_B, prior target]`` channels (crops and flips stay aligned), and a
    record of the prior: per pair the chosen rule and every rule's score."""
    if dataset.images_b is None:
        raise UserError("the fuse task needs paired data (data.kind: paired_folder)")
    y_a, y_b = luma(dataset.images), luma(dataset.images_b)
    prior = fusion_prior(y_a, y_b, rules)
    stacked = ArrayDataset(
        torch.cat([y_a, y_b, prior.targets], dim=1),
        None,
        dataset.names,
        hflip=dataset.hflip,
        vflip=dataset.vflip,
        crop=dataset.crop,
        rotate=dataset.rotate,
    )
    record = {
        "score": "2 SSIM + VIF + 3 Qabf (published protocol, rule outputs clipped)",
        "counts": prior.counts(),
        "pairs": [
            {"name": n, "rule": r, "scores": s}
            for n, r, s in zip(dataset.names, prior.chosen, prior.scores, strict=True)
        ],
    }
    return stacked, record


@releases_run_lock
def fit(config: FuseConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the fusion denoiser on ``config.data``; everything goes under ``run_dir`` (also ``prior.json``)."""
    _check(config)
    source = build_dataset(config.data)
    dataset, prior = training_set(source, config.prior_rules)
    RunDir(run_dir).prepare(config, resume)
    atomic_write(Path(run_dir) / "prior.json", json.dumps(prior, indent=1).encode())
    seed_everything(config.train.seed)
    model = FusionDenoiser(config.model)
    diffusion = Diffusion(config.noise)

    def sample_fn(net: FusionDenoiser, path: Path) -> None:
        fuser = Fuser(
            "model",
            config.output_range,
            partial(_sample_y, net, diffusion, config.sampler, 0, config.keep_background),
            {},
        )
        rows = []
        for i in range(min(config.grid_pairs, len(source))):  # whole stored pairs, not training crops
            a, b = source.images[i : i + 1], source.images_b[i : i + 1]
            target = dataset.images[i : i + 1, 2:]
            rows += [_rgb(a), _rgb(b), _rgb(colourise(target, merged_chroma(a, b))), _rgb(fuse_image(fuser, a, b)[0])]
        save_png(image_grid(torch.cat(rows), nrow=4), path)

    loss_fn = partial(fusion_loss, diffusion=diffusion, fidelity=config.fidelity)
    trainer = Trainer(run_dir, model, dataset, config.train, loss_fn, run_config(TASK, config), sample_fn, progress)
    return trainer.fit(resume=resume)


def _rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(-1, 3, -1, -1)


# -- fusing -------------------------------------------------------------------------------------------------
@dataclass
class Fuser:
    """Something that fuses a pair of Y images ``[N, 1, H, W]`` in [-1, 1]: a classic rule or a trained model.

    ``output_range`` says how its output Y becomes 8 bits (``clip`` for rules, ``minmax`` for models by
    default); ``settings`` describes it in manifests and benchmark tables.
    """

    name: str
    output_range: OutputRange
    fuse_y: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    settings: dict


def _sample_y(
    model: FusionDenoiser,
    diffusion: Diffusion,
    sampler: SamplerConfig,
    seed: int,
    keep_background: bool,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
) -> torch.Tensor:
    """DDIM (or any configured sampler) from noise seeded per pair, conditioned on both sources; the
    denoiser runs under bf16 autocast (AMX), the sampler arithmetic in fp32. With ``keep_background``
    pixels black in both sources stay black."""
    generators = [torch.Generator().manual_seed(seed) for _ in range(y_a.shape[0])]
    cond = Conditioning(cond_image=torch.cat([y_a, y_b], dim=1).contiguous(memory_format=torch.channels_last))
    y = sample(model, diffusion, sampler, tuple(y_a.shape), cond, generator=generators, autocast_bf16=True).cpu()
    if keep_background:
        y = torch.where((y_a <= -1) & (y_b <= -1), -torch.ones_like(y), y)
    return y


def rule_fuser(name: str) -> Fuser:
    """A classic rule by name (``average``, ``max``, ``dwt``, ``laplacian``); output clipped."""
    if name not in RULES:
        raise UserError(f"'{name}' is neither a fusion rule ({', '.join(RULES)}) nor a run folder")
    return Fuser(name, "clip", RULES[name], {"rule": name})


def load_model(
    run_or_checkpoint: Path, device: str | torch.device = "cpu"
) -> tuple[FusionDenoiser, Diffusion, dict, Path]:
    """A trained fusion run: its EMA denoiser (on ``device``), diffusion process, stored config and checkpoint
    path."""
    model, stored, path = load_trained(
        run_or_checkpoint,
        build=lambda stored: FusionDenoiser(from_dict(FusionNetConfig, stored["model"], "model.")),
        device=device,
        task=TASK,
    )
    model = model.to(memory_format=torch.channels_last)
    return model, Diffusion(from_dict(NoiseConfig, stored["noise"], "noise.")), stored, path


def model_fuser(
    run_or_checkpoint: Path,
    steps: int | None = None,
    seed: int = 0,
    keep_background: bool | None = None,
    device: str | torch.device = "cpu",
) -> Fuser:
    """A trained run as a fuser, sampling with its configured sampler (``steps`` overrides the step count,
    ``keep_background`` the run's setting) on ``device``."""
    return FusionModel(*load_model(run_or_checkpoint, device)).fuser(steps, seed, keep_background)


@dataclass(repr=False)
class FusionModel(RunHandle):
    """A trained fusion model: ``meddiff.load(run).fuse(a, b)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = FuseConfig
    model: FusionDenoiser
    diffusion: Diffusion
    stored: dict
    path: Path

    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def fuse(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        steps: int | None = None,
        seed: int = 0,
        keep_background: bool | None = None,
    ) -> torch.Tensor:
        """Fused images ``[N, C, H, W]`` in [-1, 1] (CPU) of registered pairs ``a``, ``b`` ``[N, C, H, W]``
        (C = 1 grey or 3 colour, any size): grey if both sources are grey, else RGB with their chroma."""
        if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
            raise UserError(f"fuse: sources of shapes {tuple(a.shape)} and {tuple(b.shape)} are not registered pairs")
        fuser = self.fuser(steps, seed, keep_background)
        return torch.cat([fuse_image(fuser, a[i : i + 1].cpu(), b[i : i + 1].cpu())[0] for i in range(a.shape[0])])

    def fuser(self, steps: int | None = None, seed: int = 0, keep_background: bool | None = None) -> Fuser:
        """This model as a ``Fuser`` (what ``fuse run`` and ``fuse eval`` use)."""
        return _model_fuser(self.model, self.diffusion, self.stored, self.path, steps, seed, keep_background)


def _model_fuser(
    model: FusionDenoiser,
    diffusion: Diffusion,
    stored: dict,
    path: Path,
    steps: int | None,
    seed: int,
    keep_background: bool | None,
) -> Fuser:
    sampler = from_dict(SamplerConfig, {**stored["sampler"], **({"steps": steps} if steps else {})}, "sampler.")
    if keep_background is None:
        keep_background = stored.get("keep_background", True)
    settings = {
        "checkpoint": str(path),
        "sampler": sampler.name,
        "steps": sampler.steps,
        "seed": seed,
        "keep_background": keep_background,
    }
    return Fuser(
        f"diffusion ({sampler.name} {sampler.steps})",
        stored.get("output_range", "minmax"),
        partial(_sample_y, model, diffusion, sampler, seed, keep_background),
        settings,
    )


def load_fuser(
    run_or_rule: str | Path,
    steps: int | None = None,
    seed: int = 0,
    keep_background: bool | None = None,
    device: str | torch.device = "cpu",
) -> Fuser:
    """A rule name or a run/checkpoint folder -> ``Fuser`` (a model runs on ``device``; rules on the CPU)."""
    if str(run_or_rule) in RULES:
        return rule_fuser(str(run_or_rule))
    if not Path(run_or_rule).exists():
        raise UserError(f"'{run_or_rule}' is neither a fusion rule ({', '.join(RULES)}) nor a run folder")
    return model_fuser(Path(run_or_rule), steps, seed, keep_background, device)


def fuse_image(fuser: Fuser, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Fuse one pair of sources ``[1, C, H, W]`` (C = 1 or 3) in [-1, 1].

    Returns the output image ``[1, C, H, W]`` in [-1, 1] (grey if both sources are grey, else RGB with
    their chroma put back) and the fused Y as uint8 ``[H, W]``, brought to 8 bits with the fuser's output
    range first: what the published protocol scores (the grey of an RGB output can differ from it where a
    colour had to be clipped to the gamut).
    """
    with torch.no_grad():
        y = fuser.fuse_y(luma(a), luma(b))
    levels = to_uint8(((y[0, 0].double() + 1) * 127.5).numpy(), fuser.output_range)
    y = torch.from_numpy(levels).float()[None, None] / 127.5 - 1
    return colourise(y, merged_chroma(a, b)), levels


def fuse_pair(fuser: Fuser, a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``fuse_image`` ready to save: uint8 ``[H, W]`` grey or ``[H, W, 3]`` RGB, and the uint8 fused Y."""
    image, levels = fuse_image(fuser, a, b)
    array = unit_to_uint8(image[0]).permute(1, 2, 0).numpy()
    return (array[..., 0] if array.shape[-1] == 1 else array), levels


def run(
    run_or_rule: str | Path,
    dir_a: Path,
    dir_b: Path,
    out_dir: Path,
    steps: int | None = None,
    seed: int = 0,
    output_range: OutputRange | None = None,
    keep_background: bool | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Fuse every pair of ``dir_a`` / ``dir_b`` (matched by file name) into ``out_dir/<name>.png`` with a
    rule or a trained run (colour outputs also get their fused Y in ``out_dir/y/<name>.png``, which
    ``evaluate`` scores); writes ``manifest.json`` (method, settings, seconds per pair). All input is
    checked before anything is written. ``output_range`` and ``keep_background`` override a run's settings."""
    fuser = load_fuser(run_or_rule, steps, seed, keep_background, device)
    if output_range is not None:
        fuser.output_range = output_range
    pairs = list_pairs(dir_a, dir_b)
    files = []
    with FusedFolder(out_dir) as folder:
        for name, path_a, path_b in progress_bar(pairs, f"fusing ({fuser.name})", enabled=progress):
            a, b = read_source(path_a), read_source(path_b)
            started = time.perf_counter()
            image, levels = fuse_pair(fuser, a, b)
            seconds = time.perf_counter() - started
            folder.write(name, image, levels if image.ndim == 3 else None)
            files.append(
                {
                    "name": name,
                    "a": str(path_a),
                    "b": str(path_b),
                    "colour": image.ndim == 3,
                    "seconds": round(seconds, 4),
                }
            )
        folder.manifest(
            {"method": fuser.name, "settings": fuser.settings, "output_range": fuser.output_range, "files": files}
        )
    return Path(out_dir)


# -- evaluation ---------------------------------------------------------------------------------------------
def evaluate(
    dir_a: Path, dir_b: Path, fused_dir: Path, metrics: tuple[str, ...] = EVAL_METRICS, progress: bool = True
) -> list[dict]:
    """Per-pair scores (``name`` + one value per metric) of the fused images in ``fused_dir`` (their Y in
    ``fused_dir/y/`` where present) against the sources, read with the published pipeline (8-bit, BT.601
    grey, rounded)."""
    pairs = list_pairs(dir_a, dir_b)
    fused = match_fused(pairs, fused_dir)
    rows = []
    for (name, path_a, path_b), path_f in progress_bar(
        list(zip(pairs, fused, strict=True)), "scoring", enabled=progress
    ):
        rows.append({"name": name, **fusion_scores(read_gray(path_f), read_gray(path_a), read_gray(path_b), metrics)})
    return rows


def mean_scores(rows: list[dict]) -> dict[str, float]:
    """The mean of every metric over the rows (what tables report)."""
    keys = [k for k in rows[0] if k != "name"]
    return {k: float(np.mean([row[k] for row in rows])) for k in keys}


def write_scores(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per pair, then the mean) and ``<stem>.json`` (rows and mean), atomically."""
    mean = mean_scores(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow({"name": "mean", **mean})
    stem = Path(stem)
    csv_path = atomic_write(stem.with_suffix(".csv"), buffer.getvalue().encode())
    json_path = atomic_write(stem.with_suffix(".json"), json.dumps({"mean": mean, "pairs": rows}, indent=1).encode())
    return csv_path, json_path
