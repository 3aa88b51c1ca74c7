"""Sampler study for mask-to-image synthesis: how few steps keep the quality of 1000-step DDPM?

    .venv/bin/python -m benchmarks.samplers [--quick] [--steps 600] [--minutes 6] [--masks 16] [--seeds 1]
        [--guidance 1.5]

A SPADE mask-to-image model (meddiff ``synthesize``, v-prediction, cosine schedule, guidance dropout 0.2)
trains ``--steps`` steps (about 3 minutes on 2 free cores; ``--minutes`` caps it on a busy machine) on the
brain slices of ``benchmarks.segmentation.brain`` (the training side: pool and sweep-validation slices); the
test side (3 bands of consecutive slices, 2-slice gap to any training slice) is never trained on. For
``--masks`` test masks, every sampler draws one image per mask and seed from the *same* start noise
(seed ``i`` -> the same x_T whatever the sampler), with classifier-free guidance ``--guidance``. Per sampler:
- PSNR / SSIM of each image against the real slice of its mask (paired; a sample is one draw from the
  conditional distribution, so this rewards the mean as well as fidelity);
- KID (x1000) against all real test slices, in the feature space of meddiff's domain network trained on the
  training slices;
- semantic consistency: mIoU of a U-Net judge (trained on the training slices) on the synthesised images
  against their input masks, next to its mIoU on the real test slices;
- wall time per image (batched, bf16 autocast, this process's threads).
"Matches DDPM" = none of PSNR, SSIM and judge mIoU is significantly worse than DDPM 1000 (95% paired interval
of the per-image difference reaches 0) and KID is within DDPM's KID + 2 std (over KID subsets).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.common import RESULTS, markdown_table, write_result
from benchmarks.segmentation import brain
from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig
from meddiff.data.samples import brain_mri
from meddiff.data.writers import write_pair_folder
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.domain_net import DomainTrainConfig, train_domain_net
from meddiff.metrics.features import extract_features
from meddiff.metrics.generative import scores_from_features
from meddiff.metrics.image import psnr, ssim
from meddiff.metrics.segmentation import SegmentationMeter
from meddiff.nets.segnet import SegNetConfig
from meddiff.nets.unet import UNetConfig
from meddiff.report.grids import image_grid, save_png
from meddiff.tasks import segmenter, synthesize
from meddiff.tasks.runs import to_uint8
from meddiff.tasks.segmenter import SegmenterConfig, select_images
from meddiff.train.engine import TrainConfig

SAMPLERS = [
    ("ddpm", 1000),
    ("ddim", 100),
    ("ddim", 50),
    ("ddim", 20),
    ("ddim", 10),
    ("ddim", 5),
    ("dpm++", 20),
    ("dpm++", 10),
    ("dpm++", 5),
]
QUICK_SAMPLERS = [("ddpm", 50), ("ddim", 10), ("ddim", 5), ("dpm++", 5)]
UNET = UNetConfig(
    base_channels=16,
    channel_mults=[1, 2, 2, 4],
    blocks_per_level=1,
    attention_levels=[3],
    norm_groups=8,
    spade_hidden=16,
)


@dataclass
class Split:
    train: ArrayDataset
    test: ArrayDataset


def split() -> Split:
    """The brain split of the segmentation benchmark: training side = pool + sweep-validation slices."""
    setting = brain(quick=False)
    data = brain_mri(64, hflip=True)
    train = select_images(data, sorted([*setting.pool.names, *setting.sweep_val.names]))
    return Split(train, setting.test)


def pair_folder(data: ArrayDataset, folder: Path) -> DataConfig:
    """Write ``data`` as an image+mask folder and return the data config that reads it back."""
    arrays = to_uint8(data.images)[:, 0].numpy()
    write_pair_folder(
        folder,
        arrays,
        data.masks.numpy().astype(np.uint8),
        data.names,
        {"model": {"class_names": list(data.class_names)}, "files": []},
    )
    return from_dict(
        DataConfig,
        {
            "kind": "image_mask_folder",
            "root": str(folder),
            "size": 64,
            "class_names": list(data.class_names),
            "hflip": True,
        },
    )


def train_synthesizer(
    train: ArrayDataset, steps: int, minutes: float, work: Path, quick: bool
) -> tuple[synthesize.Synthesizer, dict]:
    config = synthesize.SynthesizeConfig(
        data=pair_folder(train, work / "pairs"),
        model=UNetConfig(
            base_channels=8,
            channel_mults=[1, 2],
            blocks_per_level=1,
            attention_levels=[],
            norm_groups=4,
            spade_hidden=8,
        )
        if quick
        else UNET,
        noise=NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction"),
        train=TrainConfig(
            steps=steps,
            batch_size=8,
            lr=1e-3,
            warmup_steps=50,
            ema_decay=0.995,
            mixed_precision="bf16",
            max_minutes=minutes,
            log_every=25,
            sample_every=100_000,
            checkpoint_every=100_000,
            keep_checkpoints=1,
        ),
        grid_samples=4,
    )
    started = time.monotonic()
    result = synthesize.fit(config, work / "spade", progress=False)
    synth = synthesize.load(work / "spade")
    return synth, {
        "train_steps": result.step,
        "train_minutes": (time.monotonic() - started) / 60,
        "final_loss": float(np.mean(list(result.losses.values())[-50:])),
        "parameters": synth.model.num_parameters(),
        "gflop_per_eval": synth.model.flops(64, 64) / 1e9,
    }


def train_judge(train: ArrayDataset, minutes: float, work: Path):
    config = SegmenterConfig(
        model=SegNetConfig(base_channels=16, depth=3),
        train=TrainConfig(
            steps=3000,
            batch_size=8,
            lr=1e-3,
            warmup_steps=50,
            ema_decay=0.99,
            eval_every=25,
            patience=8,
            checkpoint_every=100_000,
            keep_checkpoints=1,
            log_every=25,
            max_minutes=minutes,
            mixed_precision="bf16",
        ),
    )
    segmenter.fit_dataset(config, work / "judge", train, progress=False)
    return segmenter.load(work / "judge")[0]


def miou_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mIoU of each image (classes absent from both prediction and target skipped)."""
    scores = []
    for p, t in zip(pred, target, strict=True):
        meter = SegmentationMeter(num_classes)
        meter.update(p[None], t[None].long())
        scores.append(float(meter.compute().miou))
    return torch.tensor(scores)


def paired(values: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean per-image difference to the reference and the half-width of its 95% interval."""
    diff = (values - reference).double()
    half = 1.96 * float(diff.std()) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), half


def plot(rows: list[dict], reference: dict, real_miou: float, out: Path) -> None:
    fig = Figure(figsize=(10, 6.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    panels = [
        ("PSNR (dB)", "PSNR"),
        ("SSIM", "SSIM"),
        ("judge mIoU", "mIoU"),
        ("KID x1000", "KID x1000"),
        ("seconds per image", "s/img"),
    ]
    axes = fig.subplots(2, 3).flatten()
    for ax, (label, key) in zip(axes, panels, strict=True):
        for family, marker in (("ddim", "o"), ("dpm++", "s")):
            pts = sorted((r["steps"], r[key]) for r in rows if r["sampler"] == family)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=family)
        ax.axhline(reference[key], color="0.3", linestyle="--", label=f"ddpm {reference['steps']}")
        if key == "mIoU":
            ax.axhline(real_miou, color="tab:green", linestyle=":", label="real test slices")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(label, fontsize=10)
        ax.grid(True, color="0.9")
        if key == "s/img":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[-1].axis("off")
    fig.savefig(out, facecolor="white")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end run; writes samplers_quick.*")
    parser.add_argument("--steps", type=int, default=600, help="training steps of the SPADE model")
    parser.add_argument("--minutes", type=float, default=6.0, help="cap on the SPADE training time")
    parser.add_argument("--judge-minutes", type=float, default=0.75)
    parser.add_argument("--masks", type=int, default=16, help="test masks (evenly spread over the test slices)")
    parser.add_argument("--seeds", type=int, default=1, help="images per mask")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.minutes, args.judge_minutes, args.masks = 15, 0.5, 0.05, 6
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-samplers-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = split()
    k = data.train.num_classes

    synth, info = train_synthesizer(data.train, args.steps, args.minutes, work, args.quick)
    judge = train_judge(data.train, args.judge_minutes, work)
    feature_net, _ = train_domain_net(
        data.train.images, train_config=DomainTrainConfig(steps=20) if args.quick else None
    )
    real_features = extract_features(data.test.images, feature_net)
    real_miou = float(miou_per_image(segmenter.predict(judge, data.test.images), data.test.masks, k).mean())

    pick = torch.linspace(0, len(data.test) - 1, min(args.masks, len(data.test))).round().long()
    masks = data.test.masks[pick].long().repeat_interleave(args.seeds, dim=0)
    real = data.test.images[pick].repeat_interleave(args.seeds, dim=0)
    seeds = list(range(len(masks)))  # image i starts from the noise of seed i for every sampler

    per_image, rows, samples = {}, [], {}
    for name, steps in QUICK_SAMPLERS if args.quick else SAMPLERS:
        settings = SamplerConfig(name=name, steps=steps, guidance_scale=args.guidance)
        t0 = time.monotonic()
        fake = synthesize.synthesize(synth, masks, settings, seeds, batch_size=32, autocast_bf16=True)
        seconds = (time.monotonic() - t0) / len(masks)
        with warnings.catch_warnings():  # the FID of a few images is biased; KID is what is reported
            warnings.simplefilter("ignore", UserWarning)
            scores = scores_from_features(
                real_features, extract_features(fake, feature_net), feature_net.name, kid_subsets=100
            )
        tag = f"{name} {steps}"
        per_image[tag] = {
            "PSNR": psnr(fake, real, reduction="none"),
            "SSIM": ssim(fake, real, reduction="none"),
            "mIoU": miou_per_image(segmenter.predict(judge, fake), masks, k),
        }
        samples[tag] = fake
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                "s/img": seconds,
                **{key: float(v.mean()) for key, v in per_image[tag].items()},
                "KID x1000": 1000 * scores["kid_mean"],
                "KID std": 1000 * scores["kid_std"],
            }
        )
        print(f"{tag}: {rows[-1]}", flush=True)

    reference = rows[0]
    ref_tag = f"{reference['sampler']} {reference['steps']}"
    for row in rows:
        tag = f"{row['sampler']} {row['steps']}"
        ok = row["KID x1000"] <= reference["KID x1000"] + 2 * reference["KID std"]
        for key in ("PSNR", "SSIM", "mIoU"):
            mean, half = paired(per_image[tag][key], per_image[ref_tag][key])
            row[f"d{key}"] = f"{mean:+.3f} ± {half:.3f}" if row is not reference else "-"
            ok &= row is reference or mean + half >= 0
        row["matches DDPM"] = "-" if row is reference else ("yes" if ok else "no")
        row["speed-up"] = reference["s/img"] / row["s/img"]

    prefix = "samplers_quick" if args.quick else "samplers"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, reference, real_miou, RESULTS / f"{prefix}.png")
    show = min(6, len(pick))
    grid = torch.cat(
        [
            data.test.images[pick[:show]],
            *(samples[f"{n} {s}"][:: args.seeds][:show] for n, s in (QUICK_SAMPLERS if args.quick else SAMPLERS)),
        ]
    )
    save_png(image_grid(grid, nrow=show, scale=2), RESULTS / f"{prefix}_grid.png")

    matching = [r for r in rows[1:] if r["matches DDPM"] == "yes"]
    fewest = min(matching, key=lambda r: (r["steps"], r["s/img"])) if matching else None
    headline = (
        f"Fewest steps matching {ref_tag}: **{fewest['sampler']} {fewest['steps']}** "
        f"({fewest['speed-up']:.0f}x faster: {fewest['s/img']:.2f} s/img vs {reference['s/img']:.1f})"
        if fewest
        else f"No sampler matched {ref_tag} on every metric."
    )
    columns = [
        "sampler",
        "steps",
        "PSNR",
        "dPSNR",
        "SSIM",
        "dSSIM",
        "mIoU",
        "dmIoU",
        "KID x1000",
        "KID std",
        "s/img",
        "speed-up",
        "matches DDPM",
    ]
    body = (
        f"{headline}\n\n"
        f"SPADE UNet ({info['parameters'] / 1e6:.2f}M parameters, {info['gflop_per_eval']:.2f} GFLOP per "
        f"evaluation), trained {info['train_minutes']:.1f} min ({info['train_steps']} steps, final loss "
        f"{info['final_loss']:.4f}) on {len(data.train)} training slices; {len(pick)} held-out test masks x "
        f"{args.seeds} seed(s) = {len(masks)} images per sampler, guidance {args.guidance} (two UNet "
        f"evaluations per step). d<metric> = mean per-image difference to {ref_tag} ± 95% interval. "
        f"KID against all {len(data.test)} real test slices (domain net `{feature_net.name}`). "
        f"Judge mIoU on the real test slices: {real_miou:.3f}. Wall times are for batches of up to 32 images "
        f"on this machine, with whatever else was running (see machine line).\n\n"
        + markdown_table(rows, columns)
        + f"\n\n![metrics against steps]({prefix}.png)\n\nSamples (top row: real test slices; then one row per "
        f"sampler in table order, same start noise):\n\n![samples]({prefix}_grid.png)\n"
    )
    write_result(
        prefix,
        "Sampler study: mask-to-image synthesis quality and time against sampling steps",
        data=f"embedded MNI152 T1 axial slices (nilearn), 64 px; {len(data.train)} training / "
        f"{len(data.test)} test slices (benchmarks.segmentation brain split)",
        seed=0,
        wall_seconds=time.monotonic() - started,
        body=body,
        numbers={
            "rows": rows,
            "model": info,
            "real_miou": real_miou,
            "guidance": args.guidance,
            "masks": len(pick),
            "seeds": args.seeds,
            "feature_net": feature_net.name,
            "fewest_matching": None if fewest is None else f"{fewest['sampler']} {fewest['steps']}",
        },
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
