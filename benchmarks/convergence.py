"""Quality per training minute: today's recipe (a), diffusers' reference recipe (b) and meddiff's new recipe
(c), trained side by side on the same data with the same seed and thread count.

    .venv/bin/python -m benchmarks.convergence [--datasets brain acdc64 acdc128] [--budgets 1.5 3 6 12]
        [--recipes a b c] [--samples 96] [--quick] [--work DIR] [--name convergence]

The recipes are interleaved: every recipe trains to the first budget, is scored, then every recipe resumes
(exact resume of the engine) to the next budget, and so on, so a noisy neighbour slows them all alike.
Budgets count training time only (the engine's own clock, start-up included; scoring is not counted).

Datasets (the splits of ``benchmarks.segmentation``, nothing held out is ever trained on):
- ``brain``: MNI152 axial slices at 64 px, joint image+label generation trained on the training slices;
  held out: the 3 test bands of consecutive slices.
- ``acdc64`` / ``acdc128``: ACDC cine-MRI of the 70 training patients, image-only; held out: the test
  patients' slices (every 5th).

At every budget, for every recipe: KID (x1000, domain feature network trained on the training images)
of ``--samples`` samples against the held-out real images, beside the floor (KID of as many training
images against the same held-out images); for the joint brain model the judge's mIoU on the generated pairs
(a U-Net trained on the training slices segments each generated image; its mIoU against the generated
label map); for ACDC the few-label segmentation mIoU from the model's decoder features (5 labelled training
slices, the ``segment`` defaults, scored on the held-out test slices; meddiff UNets only: recipe (b)'s
diffusers UNet has no feature hooks). Samples: dpm++ 20 steps for every recipe (diffusers' example samples
with 1000 DDPM steps, which this CPU cannot afford at every budget).

Recipe (c) was min-SNR-5 + Adam beta2 0.99 (today's ``minsnr-b2``) in the results files written before
2026-12-07, where their recipe lists say so.

Time-to-quality: for recipe (a) and (b), the minutes (c) needs to reach the KID (a) or (b) reaches at the
last budget (KID interpolated linearly in log-minutes between budgets), and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from torch import nn

from benchmarks.common import RESULTS, command_line, markdown_table, write_result
from benchmarks.samplers import miou_per_image, pair_folder, split, train_judge
from benchmarks.segmentation import (
    CORRECTED,
    DIFFUSION,
    FITTED,
    Setting,
    _subset,
    _write_pngs,
    acdc,
    brain,
    choose_labels,
    fit_diffusion_features,
)
from benchmarks.throughput import DiffusersAdapter
from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.domain_net import DomainCNN, train_domain_net
from meddiff.metrics.features import extract_features
from meddiff.metrics.generative import scores_from_features
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.report.grids import image_grid, pairs_grid, save_png
from meddiff.rundir import RunDir
from meddiff.segment.ensemble import EnsembleConfig
from meddiff.segment.features import FeatureConfig
from meddiff.segment.pixels import PixelConfig
from meddiff.tasks import generate, segmenter
from meddiff.tasks.generate import PairCodec
from meddiff.tasks.runs import load_trained
from meddiff.train.engine import TrainConfig, Trainer, TrainResult

SAMPLER = SamplerConfig(name="dpm++", steps=20)
SEED = 0
# every recipe runs to a time budget: no step cap, no grids, a checkpoint only where the budget stops it
BUDGET_RUN = dict(steps=1_000_000, sample_every=1_000_000, checkpoint_every=1_000_000, keep_checkpoints=1, log_every=50)


# -- data -------------------------------------------------------------------------------------------------
@dataclass
class Data:
    """One dataset of the benchmark: what the generators train on and what they are scored against."""

    name: str
    description: str
    train: ArrayDataset  # images (and masks for a joint model) the generators train on
    held_out: torch.Tensor  # [N, C, H, W] real images never trained on
    joint: bool
    setting: Setting  # the segmentation benchmark's split (labelled pool, test images)


def brain_data(quick: bool) -> Data:
    setting = brain(quick)
    train = split().train  # the training side: pool and sweep-validation slices, never the test bands
    return Data(
        "brain",
        f"MNI152 T1 axial slices (nilearn) at 64 px, joint image + 4-class label map; {len(train)} training "
        f"slices, {len(setting.test)} held-out slices (3 bands of consecutive slices, 2-slice gap)",
        train,
        setting.test.images,
        True,
        setting,
    )


def acdc_data(size: int, quick: bool) -> Data:
    setting = acdc(quick, size)
    images = setting.unlabelled
    train = ArrayDataset(images, None, [f"u{i:05d}" for i in range(len(images))], hflip=False)
    return Data(
        f"acdc{size}",
        f"ACDC cine-MRI padded and resized to {size} px, image-only; {len(images)} unlabelled slices of the "
        f"70 training patients; held out: {len(setting.test)} slices (every 5th) of the 20 test patients",
        train,
        setting.test.images,
        False,
        setting,
    )


def data_config(data: Data, folder: Path) -> DataConfig:
    """Write the training images (and masks) to ``folder`` and return the config that reads them."""
    if data.joint:
        return pair_folder(data.train, folder)
    _write_pngs(data.train.images, folder)
    size = int(data.train.images.shape[-1])
    return from_dict(DataConfig, {"kind": "image_folder", "root": str(folder), "size": size})


# -- recipes ----------------------------------------------------------------------------------------------
@dataclass
class Trained:
    """A model at one budget, ready to sample."""

    net: nn.Module
    diffusion: Diffusion
    codec: PairCodec
    unet_run: Path | None  # a meddiff generate run (for segmentation features), None for other models


class Recipe:
    """How one recipe trains (resumably, to a time budget) and loads its model."""

    label: str
    description: str

    def fit(self, data: DataConfig, joint: bool, run: Path, minutes: float, resume: bool, seed: int) -> TrainResult:
        raise NotImplementedError

    def load(self, run: Path) -> Trained:
        raise NotImplementedError


class MeddiffRecipe(Recipe):
    """A recipe of meddiff's own ``generate`` task: its UNet, noise process and engine settings."""

    def __init__(self, label: str, description: str, model: UNetConfig, noise: NoiseConfig, train: TrainConfig):
        self.label, self.description = label, description
        self.model, self.noise, self.train = model, noise, train

    def config(self, data: DataConfig, joint: bool, minutes: float, seed: int) -> generate.GenerateConfig:
        train = dataclasses.replace(self.train, max_minutes=minutes, seed=seed)
        return generate.GenerateConfig(
            data=data, model=self.model, noise=self.noise, train=train, sampler=SAMPLER, joint_mask=joint
        )

    def fit(self, data: DataConfig, joint: bool, run: Path, minutes: float, resume: bool, seed: int) -> TrainResult:
        return generate.fit(self.config(data, joint, minutes, seed), run, resume=resume, progress=False)

    def load(self, run: Path) -> Trained:
        net, diffusion, codec, _, _ = generate.load(run)
        return Trained(net, diffusion, codec, run)


def diffusers_unet(channels: int, size: int) -> dict:
    """``UNet2DModel`` settings with about the parameters of recipe (a)'s UNet (3.0 M for 5 channels):
    the layout of diffusers' unconditional example (attention at the lower levels) at 32-64-64-128."""
    return dict(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=[32, 64, 64, 128],
        layers_per_block=1,
        attention_head_dim=32,
        down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    )


class DiffusersRecipe(Recipe):
    """diffusers' unconditional-image training example: ``UNet2DModel``, ``DDPMScheduler`` (linear betas,
    epsilon prediction), AdamW 1e-4 (betas 0.95/0.999, weight decay 1e-6), 500 warm-up steps, batch 16,
    gradient clipping at 1, EMA with warm-up (power 3/4, at most 0.9999). The example's cosine decay needs
    the run's length in steps, which a time budget does not give: its ``constant_with_warmup`` option is
    used instead. Trained through meddiff's engine (same data path, bf16 autocast, checkpoints)."""

    label = "b"
    description = "diffusers' reference (UNet2DModel, DDPM epsilon, AdamW 1e-4, warm-up 500, EMA warm-up)"
    noise = NoiseConfig(beta_schedule="linear", prediction_type="epsilon", loss_weighting="none")

    def __init__(self, mixed_precision: str):
        self.train = TrainConfig(
            batch_size=16,
            lr=1e-4,
            adam_beta1=0.95,
            adam_beta2=0.999,
            weight_decay=1e-6,
            warmup_steps=500,
            ema_decay=0.9999,
            ema_power=0.75,
            mixed_precision=mixed_precision,  # type: ignore[arg-type]
            **BUDGET_RUN,
        )

    def fit(self, data: DataConfig, joint: bool, run: Path, minutes: float, resume: bool, seed: int) -> TrainResult:
        dataset = build_dataset(data)
        codec = PairCodec(dataset.in_channels, dataset.num_classes if joint else 0)
        kwargs = diffusers_unet(codec.channels, int(dataset[0]["image"].shape[-1]))
        torch.manual_seed(seed)
        net = DiffusersAdapter(UNet2DModel(**kwargs))
        diffusion = Diffusion(self.noise)
        stored = {
            "task": "diffusers-reference",
            "model": kwargs,
            "noise": dataclasses.asdict(self.noise),
            "codec": {"image_channels": codec.image_channels, "num_classes": codec.num_classes},
        }
        RunDir(run).prepare(stored, resume)

        def loss_fn(model, batch, generator):
            return diffusion.loss(model, codec.encode(batch), None, generator)

        train = dataclasses.replace(self.train, max_minutes=minutes, seed=seed)
        return Trainer(run, net, dataset, train, loss_fn, stored, progress=False).fit(resume=resume)

    def load(self, run: Path) -> Trained:
        net, stored, _ = load_trained(run, build=lambda stored: DiffusersAdapter(UNet2DModel(**stored["model"])))
        codec = PairCodec(stored["codec"]["image_channels"], stored["codec"]["num_classes"])
        return Trained(net, Diffusion(self.noise), codec, None)


def todays_recipe(mixed_precision: str) -> MeddiffRecipe:
    """(a): the demo's and configs/brain_image.yaml's settings with meddiff 0.2's defaults (unweighted
    loss, Adam beta2 0.999), spelled out so that later defaults do not change it."""
    return MeddiffRecipe(
        "a",
        "today's (demo UNet 32-[1,2,2,4], v-prediction cosine, AdamW 1e-3 batch 8, EMA 0.995)",
        UNetConfig(base_channels=32, channel_mults=[1, 2, 2, 4], blocks_per_level=1, attention_levels=[2, 3]),
        NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction", loss_weighting="none"),
        TrainConfig(
            batch_size=8,
            lr=1e-3,
            adam_beta2=0.999,
            warmup_steps=50,
            ema_decay=0.995,
            mixed_precision=mixed_precision,  # type: ignore[arg-type]
            **BUDGET_RUN,
        ),
    )


def candidates(mixed_precision: str) -> dict[str, Recipe]:
    """Every recipe this benchmark knows: (a), (b), and the variants of (a) studied for (c)."""
    a = todays_recipe(mixed_precision)

    def variant(label: str, description: str, **changes) -> MeddiffRecipe:
        model = dataclasses.replace(a.model, **changes.pop("model", {}))
        noise = dataclasses.replace(a.noise, **changes.pop("noise", {}))
        train = dataclasses.replace(a.train, **changes.pop("train", {}))
        return MeddiffRecipe(label, description, model, noise, train)

    min_snr = {"loss_weighting": "min_snr", "snr_gamma": 5.0}  # explicit: the studies name gamma 5
    beta2 = {"adam_beta2": 0.99}
    c_noise = {**min_snr, "snr_floor": 1.0, "snr_gamma": 10.0}
    lean = {"base_channels": 16, "channel_mults": [1, 2, 4, 8]}
    recipes: list[Recipe] = [
        a,
        DiffusersRecipe(mixed_precision),
        variant("minsnr", "(a) + min-SNR-5 loss weighting", noise=min_snr),
        variant(
            "ema-warm", "(a) + EMA warm-up (power 2/3, at most 0.999)", train={"ema_power": 2 / 3, "ema_decay": 0.999}
        ),
        variant("lr2e-3", "(a) with lr 2e-3", train={"lr": 2e-3}),
        variant("batch4", "(a) with batch 4", train={"batch_size": 4}),
        variant("batch16", "(a) with batch 16 and lr 1.4e-3", train={"batch_size": 16, "lr": 1.4e-3}),
        variant("noattn0", "(a) with attention at the lowest level only", model={"attention_levels": [3]}),
        variant("wide-low", "(a) with channels 32-[1,2,4,8]", model={"channel_mults": [1, 2, 4, 8]}),
        variant("small", "(a) with base 24", model={"base_channels": 24}),
        variant("fp32", "(a) in fp32", train={"mixed_precision": "no"}),
        variant("minsnr-b2", "min-SNR + Adam beta2 0.99", noise=min_snr, train=beta2),
        variant("minsnr-eps", "min-SNR with epsilon prediction", noise={**min_snr, "prediction_type": "epsilon"}),
        variant("minsnr-g2", "min-SNR-2", noise={**min_snr, "snr_gamma": 2.0}),
        variant("minsnr-small", "min-SNR with base 24", noise=min_snr, model={"base_channels": 24}),
        variant(
            "c",
            "new: (a) + min-SNR loss weighting clamped to [1, 10] + Adam beta2 0.99 (convergence_study_floor.md)",
            noise={**min_snr, "snr_floor": 1.0, "snr_gamma": 10.0},
            train=beta2,
        ),
        variant("minsnr-ema", "min-SNR + EMA 0.999", noise=min_snr, train={"ema_decay": 0.999}),
        variant(
            "lean",
            "(c) with channels 16-[1,2,4,8]: width moved to the low-resolution levels, less than half the FLOPs",
            model=lean,
            noise=c_noise,
            train=beta2,
        ),
        variant(
            "lean-att3",
            "lean with attention at the lowest level only",
            model={**lean, "attention_levels": [3]},
            noise=c_noise,
            train=beta2,
        ),
        variant("lean-lr2e-3", "lean with lr 2e-3", model=lean, noise=c_noise, train={**beta2, "lr": 2e-3}),
        variant("b2", "(a) + Adam beta2 0.99", train=beta2),
        variant("minsnr-g20", "min-SNR-20 + Adam beta2 0.99", noise={**min_snr, "snr_gamma": 20.0}, train=beta2),
        variant("floor1", "min-SNR-5 floored at 1 + Adam beta2 0.99", noise={**min_snr, "snr_floor": 1.0}, train=beta2),
        variant(
            "floor1-g10",
            "min-SNR clamped to [1, 10] + Adam beta2 0.99 (the study's name of today's (c))",
            noise={**min_snr, "snr_floor": 1.0, "snr_gamma": 10.0},
            train=beta2,
        ),
    ]
    return {r.label: r for r in recipes}


# -- scoring ----------------------------------------------------------------------------------------------
@dataclass
class Scorer:
    """Everything fixed across recipes and budgets: feature network, held-out features, floor, judge."""

    data: Data
    feature_net: DomainCNN
    held_out_features: torch.Tensor
    floor: dict
    judge: nn.Module | None
    judge_real_miou: float | None

    def kid(self, images: torch.Tensor) -> dict:
        fake = extract_features(images, self.feature_net)
        return scores_from_features(self.held_out_features, fake, self.feature_net.name, kid_subsets=100, seed=SEED)


def make_scorer(data: Data, samples: int, judge_minutes: float, work: Path) -> Scorer:
    feature_net, _ = train_domain_net(data.train.images)
    held_out = extract_features(data.held_out, feature_net)
    pick = torch.linspace(0, len(data.train) - 1, min(samples, len(data.train))).long()
    train_features = extract_features(data.train.images[pick], feature_net)
    floor = scores_from_features(held_out, train_features, feature_net.name, kid_subsets=100, seed=SEED)
    halves = scores_from_features(held_out[0::2], held_out[1::2], feature_net.name, kid_subsets=100, seed=SEED)
    floor["halves_kid_mean"], floor["halves_kid_std"] = halves["kid_mean"], halves["kid_std"]
    judge, judge_real = None, None
    if data.joint:
        judge = train_judge(data.train, judge_minutes, work)
        k = data.setting.test.num_classes
        judge_real = float(
            miou_per_image(segmenter.predict(judge, data.setting.test.images), data.setting.test.masks, k).mean()
        )
    return Scorer(data, feature_net, held_out, floor, judge, judge_real)


def segmentation_miou(data: Data, run: Path, work: Path) -> float:
    """Few-label (5 slices) segmentation mIoU on the held-out test slices from ``run``'s decoder features."""
    setting = data.setting
    labelled = _subset(setting.pool, choose_labels(setting, 5, SEED))
    pixels = PixelConfig()
    results = fit_diffusion_features(
        setting, run, FeatureConfig(), labelled, setting.test, pixels, EnsembleConfig(), SEED, work
    )
    # the row of the default prior correction (5 ACDC slices at 64 px fit within max_pixels: no shift at all)
    return float(results[{"none": DIFFUSION, "prior": CORRECTED, "fitted": FITTED}[pixels.prior_correction]]["miou"])


def score(
    scorer: Scorer, trained: Trained, samples: int, size: int, work: Path
) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    started = time.monotonic()
    images, masks = generate.generate(
        trained.net,
        trained.diffusion,
        trained.codec,
        SAMPLER,
        samples,
        seed=SEED,
        size=(size, size),
        batch_size=32,
        autocast_bf16=True,
    )
    row = {"sample_s": time.monotonic() - started}
    kid = scorer.kid(images)
    row["KID x1000"], row["KID std x1000"] = 1000 * kid["kid_mean"], 1000 * kid["kid_std"]
    if scorer.judge is not None and masks is not None:
        k = scorer.data.train.num_classes
        row["judge mIoU"] = float(miou_per_image(segmenter.predict(scorer.judge, images), masks, k).mean())
    if not scorer.data.joint and trained.unet_run is not None:
        row["seg mIoU (5 labels)"] = segmentation_miou(scorer.data, trained.unet_run, work)
    return row, images, masks


# -- time-to-quality --------------------------------------------------------------------------------------
def minutes_to_reach(target: float, points: list[tuple[float, float]]) -> float | None:
    """The first training time at which the KID curve ``points`` ((minutes, KID), by minutes) reaches
    ``target``: linear in log-minutes between budgets; None if it never does."""
    previous = None
    for minutes, kid in points:
        if kid <= target:
            if previous is None:
                return minutes
            (m0, k0) = previous
            frac = (k0 - target) / (k0 - kid) if k0 != kid else 1.0
            return math.exp(math.log(m0) + frac * (math.log(minutes) - math.log(m0)))
        previous = (minutes, kid)
    return None


def time_to_quality(curves: dict[str, list[tuple[float, float]]], new: str, old: str) -> str:
    """``<ratio>x``: minutes ``old`` needs for its last-budget KID over minutes ``new`` needs for it."""
    if new not in curves or old not in curves:
        return "n/a"
    old_minutes, target = curves[old][-1]
    first = curves[new][0][0]
    reached = minutes_to_reach(target, curves[new])
    needed_by_old = minutes_to_reach(target, curves[old]) or old_minutes
    if reached is None:
        return f"< 1x ({new} does not reach {old}'s {target:.2f} within {curves[new][-1][0]:.1f} min)"
    if reached <= first and curves[new][0][1] <= target:
        return f"> {needed_by_old / first:.0f}x ({new} is there at the first budget, {first:.2f} min)"
    return f"{needed_by_old / reached:.2f}x"


def segmentation_goal(rows: list[dict], budgets: list[float]) -> list[str]:
    """The issue's segmentation goal: (c)'s few-label mIoU at the second budget against (a)'s at the last."""
    miou = {(r["recipe"], r["budget (min)"]): r.get("seg mIoU (5 labels)") for r in rows}
    early, late = budgets[min(1, len(budgets) - 1)], budgets[-1]
    new, old = miou.get(("c", early)), miou.get(("a", late))
    if new is None or old is None:
        return []
    verdict = "met" if new >= old else "not met"
    return [f"segmentation: (c) at {early:g} min {new:.3f} vs (a) at {late:g} min {old:.3f} ({verdict})"]


# -- main -------------------------------------------------------------------------------------------------
def bf16_pays() -> tuple[bool, float]:
    """Whether bf16 autocast trains recipe (a)'s UNet faster than fp32 on this CPU (ratio of step times)."""
    net = UNet(dataclasses.replace(todays_recipe("bf16").model, in_channels=5, out_channels=5))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    diffusion = Diffusion(NoiseConfig())
    x0 = torch.rand(8, 5, 64, 64) * 2 - 1

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.loss(net, x0, None, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {False: [], True: []}
    for _ in range(4):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    ratio = float(np.median(times[False][1:]) / np.median(times[True][1:]))
    return ratio > 1.05, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["brain", "acdc64", "acdc128"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[1.5, 3, 6, 12])
    parser.add_argument("--recipes", nargs="+", default=["a", "b", "c"])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every recipe (samples: seed 0)")
    parser.add_argument("--judge-minutes", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="tiny budgets and sample counts (a smoke test)")
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--name", default="convergence", help="results file name")
    parser.add_argument(
        "--update", action="store_true", help="keep the other datasets' sections of an existing results/<name>.json"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="FID on .* images is biased upward")  # KID is the measure here
    if args.quick:
        args.budgets, args.samples, args.judge_minutes = [0.1, 0.2], 8, 0.05
    started = time.monotonic()
    torch.manual_seed(SEED)
    pays, bf16_ratio = bf16_pays()
    precision = "bf16" if pays else "no"
    print(f"bf16 autocast trains {bf16_ratio:.2f}x as fast as fp32 here: mixed_precision {precision}", flush=True)
    known = candidates(precision)
    unknown = [r for r in args.recipes if r not in known]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {sorted(known)}")
    recipes = {label: known[label] for label in args.recipes}
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-convergence-"))

    loaders: dict[str, Callable[[], Data]] = {
        "brain": lambda: brain_data(args.quick),
        "acdc64": lambda: acdc_data(64, args.quick),
        "acdc128": lambda: acdc_data(128, args.quick),
    }
    numbers = {"bf16_train_speedup": bf16_ratio, "mixed_precision": precision, "datasets": {}}
    previous = RESULTS / f"{args.name}.json"
    if args.update and previous.exists():
        kept = json.loads(previous.read_text())["datasets"]
        numbers["datasets"] = {name: entry for name, entry in kept.items() if name not in args.datasets}
    for name in args.datasets:
        dataset_started = time.monotonic()
        data = loaders[name]()
        size = int(data.train.images.shape[-1])
        folder = work / name
        config = data_config(data, folder / "data")
        scorer = make_scorer(data, args.samples, args.judge_minutes, folder)
        print(f"{name}: floor KID x1000 {1000 * scorer.floor['kid_mean']:.2f}", flush=True)
        rows, trained_s = [], {label: 0.0 for label in recipes}
        steps = {label: 0 for label in recipes}
        for budget in args.budgets:
            for label, recipe in recipes.items():
                run = folder / f"run_{label}"
                remaining = budget - trained_s[label] / 60
                resume = budget != args.budgets[0]
                result = recipe.fit(config, data.joint, run, remaining, resume, args.seed)
                trained_s[label] += result.seconds
                steps[label] = result.step
                row, images, masks = score(scorer, recipe.load(run), args.samples, size, folder / "scratch")
                row = {
                    "recipe": label,
                    "budget (min)": budget,
                    "trained (min)": trained_s[label] / 60,
                    "steps": result.step,
                    **row,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                if data.name == "brain":
                    k = data.train.num_classes
                    grid = (
                        pairs_grid(images[:16], masks[:16], k, 4, scale=2)
                        if masks is not None
                        else image_grid(images[:16], 4, scale=2)
                    )
                    save_png(grid, RESULTS / f"{args.name}_{name}_{label}_{budget:g}min.png")
        curves = {
            label: [(r["trained (min)"], r["KID x1000"]) for r in rows if r["recipe"] == label] for label in recipes
        }
        lines = (
            [
                f"time-to-quality: {name} {time_to_quality(curves, 'c', 'a')} vs today, "
                f"{time_to_quality(curves, 'c', 'b')} vs diffusers"
            ]
            if "c" in recipes
            else []
        )
        lines += segmentation_goal(rows, args.budgets)
        columns = [
            "recipe",
            "budget (min)",
            "trained (min)",
            "steps",
            "KID x1000",
            "KID std x1000",
            "judge mIoU",
            "seg mIoU (5 labels)",
            "sample_s",
        ]
        floor = f"{1000 * scorer.floor['kid_mean']:.2f} ± {1000 * scorer.floor['kid_std']:.2f}"
        halves = f"{1000 * scorer.floor['halves_kid_mean']:.2f} ± {1000 * scorer.floor['halves_kid_std']:.2f}"
        section = (
            f"## {name}\n\n{data.description}. Real-vs-real KID x1000: training images vs the held-out images "
            f"({min(args.samples, len(data.train))} training images) {floor}; the held-out images' even vs odd "
            f"halves {halves}"
            + (f"; judge mIoU on real held-out slices: {scorer.judge_real_miou:.3f}" if scorer.judge_real_miou else "")
            + ".\n\n"
            + markdown_table(rows, [c for c in columns if any(c in r for r in rows)])
            + "\n\n"
            + "\n".join(f"- {line}" for line in lines)
            + f"\n\nMeasured by `{command_line()}` on {time.strftime('%Y-%m-%d')}, "
            f"{(time.monotonic() - dataset_started) / 60:.1f} min."
        )
        numbers["datasets"][name] = {
            "rows": rows,
            "floor": scorer.floor,
            "judge_real_miou": scorer.judge_real_miou,
            "section": section,
        }
        if args.work is None:
            shutil.rmtree(folder, ignore_errors=True)
        # written after every dataset, so an interrupted multi-dataset run keeps what it finished
        _write(args, recipes, numbers, loaders, bf16_ratio, precision, time.monotonic() - started)


def _write(
    args: argparse.Namespace,
    recipes: dict[str, Recipe],
    numbers: dict,
    loaders: dict,
    bf16_ratio: float,
    precision: str,
    wall_seconds: float,
) -> None:
    ordered = [name for name in loaders if name in numbers["datasets"]]
    recipe_lines = "\n".join(f"- ({label}) {recipe.description}" for label, recipe in recipes.items())
    body = (
        f"Recipes:\n{recipe_lines}\n\nbf16 autocast: {bf16_ratio:.2f}x the fp32 training speed of recipe (a)'s "
        f"UNet on this CPU, so every recipe trains with mixed_precision {precision}. Samples: {args.samples} per "
        f"recipe and budget, {SAMPLER.name} {SAMPLER.steps} steps, seed {SEED}.\n\n"
        + "\n\n".join(numbers["datasets"][name]["section"] for name in ordered)
    )
    write_result(
        args.name,
        "Quality per training minute: today's recipe, diffusers' reference and the new recipe",
        data=", ".join(ordered),
        seed=f"training {args.seed}, sampling {SEED}",
        wall_seconds=wall_seconds,
        body=body,
        numbers=numbers,
    )


if __name__ == "__main__":
    main()
