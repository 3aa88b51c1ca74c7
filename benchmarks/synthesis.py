"""Mask-to-image synthesis on real data: SPADE diffusion (meddiff `synthesize`, classifier-free guidance) vs
the joint image+mask generator (`generate`) vs pix2pix, all three trained on the same N labelled pairs
(diffusion models for a number of steps, pix2pix for as long as SPADE took), at 64 px.

    .venv/bin/python -m benchmarks.synthesis [--quick] [--datasets acdc brain isbi cataract] [--labels 20]
        [--synthetic 40] [--seeds 0 1 2] [--generator-steps 400] [--segmenter-steps 500] [--work DIR]

Results of datasets that a run does not redo are kept from the previous results file, so the datasets can
run in separate processes (each writes its own section under a lock) and the file still holds all four.

Splits come from benchmarks.segmentation (test patients / slice bands / images / videos never train
anything here). Per dataset:
1. N pool pairs (``choose_labels`` with seed 0; ACDC: at most 5 slices per patient) train the three
   generators; a U-Net "judge" segmenter trains on every pool pair.
2. Fidelity on test masks: one image per test mask (SPADE, pix2pix) or as many joint samples; KID against
   the real test images in the feature space of meddiff's domain network (trained on the pool images);
   PSNR/SSIM of the synthesised image against the real image of the same mask; memorisation fraction
   (pixel space, threshold = 1st percentile of test-to-train distances); diversity = mean pairwise RMS
   pixel distance (32 px) between samples of one mask.
3. Semantic consistency: the judge's mIoU on synthesised images against their input masks (joint: the
   generated masks), next to its mIoU on the real test images.
4. Downstream utility: a U-Net trained on the N real pairs vs N real + M synthetic pairs (SPADE and
   pix2pix: images for augmented copies of the N training masks, ``data.mask_sources``; joint: M sampled
   pairs, drawn once), tested on the real test pairs; 3 seeds of the segmenter.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, command_line, markdown_table, mean_std, write_result
from benchmarks.segmentation import DATA, Setting, acdc, brain, cataract, choose_labels, isbi
from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset, resize_image, resize_mask
from meddiff.data.build import DataConfig
from meddiff.data.mask_sources import MaskAugment, MaskSet
from meddiff.data.writers import write_pair_folder
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.domain_net import DomainTrainConfig
from meddiff.metrics.features import extract_features
from meddiff.metrics.generative import scores_from_features, select_feature_net
from meddiff.metrics.image import psnr, ssim
from meddiff.metrics.memorization import memorization_check, pixel_embedding
from meddiff.metrics.segmentation import segmentation_scores
from meddiff.nets.pix2pix import Pix2PixNetConfig
from meddiff.nets.segnet import SegNetConfig
from meddiff.nets.unet import UNetConfig
from meddiff.report.grids import pairs_grid, save_png
from meddiff.tasks import generate, pix2pix, segmenter, synthesize
from meddiff.tasks.runs import to_uint8
from meddiff.tasks.segmenter import SegmenterConfig, select_images
from meddiff.train.engine import TrainConfig

SIZE = 64
DATASETS = ("acdc", "brain", "isbi", "cataract")
GENERATORS = ("SPADE diffusion", "joint diffusion", "pix2pix")
DIVERSITY_MASKS, DIVERSITY_SAMPLES = 3, 4


# -- datasets at 64 px -----------------------------------------------------------------------------------------
def _pick(dataset: ArrayDataset, indices) -> ArrayDataset:
    return select_images(dataset, [dataset.names[i] for i in indices])


def _resized(dataset: ArrayDataset) -> ArrayDataset:
    return ArrayDataset(
        resize_image(dataset.images, (SIZE, SIZE)),
        resize_mask(dataset.masks.long(), (SIZE, SIZE)),
        dataset.names,
        dataset.class_names,
        dataset.hflip,
        vflip=dataset.vflip,
    )


def _tiles(dataset: ArrayDataset) -> tuple[ArrayDataset, list[str]]:
    """Non-overlapping SIZE-px tiles of every image, and the image each tile comes from."""
    h, w = dataset.images.shape[-2:]
    images, masks, names, sources = [], [], [], []
    for k, name in enumerate(dataset.names):
        for top in range(0, h - SIZE + 1, SIZE):
            for left in range(0, w - SIZE + 1, SIZE):
                images.append(dataset.images[k, :, top : top + SIZE, left : left + SIZE])
                masks.append(dataset.masks[k, top : top + SIZE, left : left + SIZE])
                names.append(f"{name}_y{top}x{left}")
                sources.append(name)
    return ArrayDataset(
        torch.stack(images), torch.stack(masks), names, dataset.class_names, dataset.hflip, vflip=dataset.vflip
    ), sources


def load_setting(name: str, quick: bool) -> Setting:
    """The split of benchmarks.segmentation for ``name``, brought to 64 px (ISBI: 64-px tiles of the 256-px
    images, so membranes stay visible; cataract: frames resized from 128 px)."""
    if name == "brain":
        return brain(quick)
    if name == "acdc":
        return acdc(quick, size=SIZE)
    if name == "isbi":
        setting = isbi(quick)
        pool, groups = _tiles(setting.pool)
        test, _ = _tiles(setting.test)
        test = _pick(test, range(0, len(test), 4)) if quick else test
        return dataclasses.replace(
            setting,
            pool=pool,
            groups=groups,
            test=test,
            description=(
                "ISBI-2012 EM membranes at 256 px (resized from 512) cut into non-overlapping 64-px tiles, 2 classes; "
                f"pool = {len(pool)} tiles of images 0-19, test = {len(test)} tiles of images 20-29"
            ),
        )
    if name == "cataract":
        setting = cataract(quick)
        return dataclasses.replace(
            setting,
            pool=_resized(setting.pool),
            test=_resized(setting.test),
            description=setting.description.replace("128 px", "64 px (resized from 128)"),
        )
    raise ValueError(name)


# -- budgets ------------------------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Model sizes, sampling settings and training budgets of a run (full or --quick). Diffusion models and
    segmenters train for a number of steps, so the scores do not depend on how busy the machine is; pix2pix
    trains for as long (wall time) as the SPADE model took."""

    generator_steps: int
    unet: UNetConfig
    pix2pix: Pix2PixNetConfig
    sampler_steps: int
    guidance: float
    segnet: SegNetConfig
    segmenter_train: TrainConfig
    judge_steps: int
    domain_steps: int
    fidelity_masks: int  # at most this many test masks are synthesised for fidelity/consistency


def budget(quick: bool, generator_steps: int, segmenter_steps: int) -> Budget:
    # accelerate keeps one precision per process, so every Trainer of this process runs bf16.
    if quick:
        return Budget(
            6,
            UNetConfig(base_channels=16, channel_mults=[1, 2], blocks_per_level=1, attention_levels=[]),
            Pix2PixNetConfig(base_channels=8, max_channels=32, depth=6, norm_groups=8),
            4,
            1.5,
            SegNetConfig(base_channels=8, depth=3),
            TrainConfig(
                steps=8,
                batch_size=4,
                warmup_steps=0,
                eval_every=4,
                patience=2,
                checkpoint_every=1000,
                log_every=4,
                mixed_precision="bf16",
            ),
            8,
            10,
            12,
        )
    # Sized for ~20 min per dataset on one core: ~2 M-parameter generators (SPADE UNet 1.9 M, joint UNet
    # 1.1 M, pix2pix generator 1.8 M), DPM++ 10 steps.
    return Budget(
        generator_steps,
        UNetConfig(base_channels=32, channel_mults=[1, 2, 2], blocks_per_level=1, attention_levels=[], spade_hidden=32),
        Pix2PixNetConfig(base_channels=16, max_channels=128, depth=6, disc_channels=32),
        10,
        1.5,
        SegNetConfig(base_channels=16, depth=3),
        TrainConfig(
            steps=segmenter_steps,
            batch_size=8,
            lr=1e-3,
            warmup_steps=50,
            ema_decay=0.99,
            eval_every=25,
            patience=8,
            checkpoint_every=100_000,
            keep_checkpoints=1,
            log_every=25,
            mixed_precision="bf16",
        ),
        3 * segmenter_steps,
        200,
        32,
    )


def _diffusion_train(b: Budget) -> TrainConfig:
    return TrainConfig(
        steps=b.generator_steps,
        batch_size=8,
        lr=5e-4,
        warmup_steps=min(50, b.generator_steps // 4),
        ema_decay=0.995,
        mixed_precision="bf16",
        sample_every=100_000,
        checkpoint_every=100_000,
        keep_checkpoints=1,
        log_every=50,
    )


def _mask_augment(setting: Setting) -> MaskAugment:
    return MaskAugment(hflip=setting.pool.hflip, vflip=setting.pool.vflip, rotate=10.0, elastic=3.0)


# -- training the generators -----------------------------------------------------------------------------------
@dataclass
class Generators:
    spade: synthesize.Synthesizer
    joint: tuple  # generate.load(...) = (model, diffusion, codec, stored, path)
    gan: pix2pix.Pix2Pix
    info: dict


def _pair_folder(labelled: ArrayDataset, folder: Path) -> dict:
    """Write the labelled pairs as a dataset folder; returns the DataConfig dict that reads it back."""
    arrays = to_uint8(labelled.images).permute(0, 2, 3, 1).numpy()
    arrays = arrays[..., 0] if arrays.shape[-1] == 1 else arrays
    shutil.rmtree(folder, ignore_errors=True)
    write_pair_folder(
        folder,
        arrays,
        labelled.masks.numpy().astype(np.uint8),
        labelled.names,
        {"model": {"class_names": labelled.class_names}, "files": []},
    )
    return {
        "kind": "image_mask_folder",
        "root": str(folder),
        "size": SIZE,
        "class_names": labelled.class_names,
        "hflip": labelled.hflip,
        "vflip": labelled.vflip,
    }


def _loss(result) -> float:
    return float(np.mean(list(result.losses.values())[-50:]))


def train_generators(labelled: ArrayDataset, b: Budget, work: Path) -> Generators:
    data = from_dict(DataConfig, _pair_folder(labelled, work / "pairs"))
    noise = NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction")
    sampler = SamplerConfig(name="dpm++", steps=b.sampler_steps, guidance_scale=b.guidance)
    info = {}
    runs = {name: work / name for name in ("spade", "joint", "pix2pix")}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    started = time.monotonic()
    result = synthesize.fit(
        synthesize.SynthesizeConfig(
            data=data, model=b.unet, noise=noise, train=_diffusion_train(b), sampler=sampler, grid_samples=4
        ),
        runs["spade"],
        progress=False,
    )
    info["SPADE diffusion"] = {
        "steps": result.step,
        "minutes": (time.monotonic() - started) / 60,
        "final_loss": _loss(result),
    }
    started = time.monotonic()
    result = generate.fit(
        generate.GenerateConfig(
            data=data,
            model=b.unet,
            noise=noise,
            train=_diffusion_train(b),
            sampler=dataclasses.replace(sampler, guidance_scale=1.0),
            grid_samples=4,
        ),
        runs["joint"],
        progress=False,
    )
    info["joint diffusion"] = {
        "steps": result.step,
        "minutes": (time.monotonic() - started) / 60,
        "final_loss": _loss(result),
    }
    started = time.monotonic()
    train = pix2pix.Pix2PixTrainConfig(
        steps=100_000,
        batch_size=8,
        max_minutes=info["SPADE diffusion"]["minutes"],
        sample_every=100_000,
        checkpoint_every=100_000,
        keep_checkpoints=1,
        log_every=50,
    )
    result = pix2pix.fit(
        pix2pix.Pix2PixConfig(data=data, model=b.pix2pix, train=train, grid_samples=4), runs["pix2pix"], progress=False
    )
    info["pix2pix"] = {"steps": result.step, "minutes": (time.monotonic() - started) / 60, "final_loss": _loss(result)}
    spade, joint, gan = synthesize.load(runs["spade"]), generate.load(runs["joint"]), pix2pix.load(runs["pix2pix"])
    for net in (spade.model, joint[0], gan.generator):
        net.to(memory_format=torch.channels_last)
    info["SPADE diffusion"]["parameters"] = spade.model.num_parameters()
    info["joint diffusion"]["parameters"] = joint[0].num_parameters()
    info["pix2pix"]["parameters"] = sum(p.numel() for p in gan.generator.parameters())
    return Generators(spade, joint, gan, info)


# -- drawing samples ---------------------------------------------------------------------------------------------
def _spade_sampler(g: Generators) -> SamplerConfig:
    return from_dict(SamplerConfig, g.spade.stored["sampler"], "sampler.")


def draw(g: Generators, which: str, masks: torch.Tensor | None, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images for ``masks`` (SPADE, pix2pix; image i drawn with seed ``seed + i``) or ``n`` joint pairs."""
    if which == "SPADE diffusion":
        return synthesize.synthesize(
            g.spade, masks, _spade_sampler(g), range(seed, seed + n), batch_size=32, autocast_bf16=True
        ), masks
    if which == "pix2pix":
        return pix2pix.translate(g.gan.generator, masks, len(g.gan.class_names), list(range(seed, seed + n))), masks
    model, diffusion, codec, stored, _ = g.joint
    sampler = from_dict(SamplerConfig, stored["sampler"], "sampler.")
    return generate.generate(model, diffusion, codec, sampler, n, seed, (SIZE, SIZE), batch_size=32, autocast_bf16=True)


def augmented_masks(labelled: ArrayDataset, setting: Setting, m: int, seed: int) -> torch.Tensor:
    """``m`` augmented copies of the training masks (``data.mask_sources``), drawn with ``seed``."""
    mask_set = MaskSet(
        labelled.masks.to(torch.uint8), list(labelled.names), list(labelled.names), tuple(labelled.class_names)
    )
    per_mask = math.ceil(m / len(mask_set))
    job = synthesize.plan(mask_set, per_mask, seed, _mask_augment(setting))
    order = torch.randperm(len(job.masks), generator=torch.Generator().manual_seed(seed))[:m]
    return job.masks[order]


# -- measuring -----------------------------------------------------------------------------------------------------
def _seg(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    scores = segmentation_scores(pred, target.long(), num_classes)
    return {"miou": scores.miou, "fg_miou": float(scores.iou[1:].nanmean()), "mean_dice": scores.mean_dice}


def _segmenter_config(b: Budget, seed: int) -> SegmenterConfig:
    return SegmenterConfig(model=b.segnet, train=dataclasses.replace(b.segmenter_train, seed=seed))


def _judge_config(b: Budget) -> SegmenterConfig:
    """The downstream U-Net with a longer budget and rarer validation (it validates on every pool image)."""
    train = b.segmenter_train
    return SegmenterConfig(
        model=b.segnet,
        train=dataclasses.replace(
            train, steps=b.judge_steps, eval_every=4 * train.eval_every, patience=max(2, train.patience // 2)
        ),
    )


def fit_segmenter(dataset: ArrayDataset, config: SegmenterConfig, run: Path):
    shutil.rmtree(run, ignore_errors=True)
    result = segmenter.fit_dataset(config, run, dataset, progress=False)
    model, _ = segmenter.load(run)
    shutil.rmtree(run, ignore_errors=True)
    return model, result


def mean_pairwise(images: torch.Tensor) -> float:
    """Mean pairwise RMS pixel distance (images at 32 px, [-1, 1] units) between the rows of ``images``."""
    emb = pixel_embedding(images)
    d = torch.cdist(emb.double(), emb.double())
    n = len(images)
    return float(d.sum() / (n * (n - 1)))


def fidelity(
    setting: Setting, g: Generators, labelled: ArrayDataset, judge, feature_net, b: Budget
) -> tuple[list[dict], dict]:
    """KID, PSNR/SSIM, memorisation, diversity and semantic consistency of the three generators on test masks."""
    test = setting.test
    index = torch.linspace(0, len(test) - 1, min(b.fidelity_masks, len(test))).round().long().unique()
    real, masks, k = test.images[index], test.masks[index].long(), test.num_classes
    real_features = extract_features(real, feature_net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FID-on-few-images warning: FID is not reported
        reference = scores_from_features(
            real_features, extract_features(labelled.images, feature_net), feature_net.name, kid_subsets=50
        )
    judge_real = _seg(segmenter.predict(judge, test.images), test.masks, k)
    rows = [
        {
            "images": f"real: the {len(labelled)} training images (judge: all {len(test)} real test images)",
            "n": len(labelled),
            "KID ×1e3": 1e3 * reference["kid_mean"],
            "KID std ×1e3": 1e3 * reference["kid_std"],
            "judge mIoU": judge_real["miou"],
            "judge fg mIoU": judge_real["fg_miou"],
            "all-pairs distance": mean_pairwise(labelled.images),
        }
    ]
    samples = {}
    for which in GENERATORS:
        started = time.monotonic()
        fake, fake_masks = draw(g, which, masks, len(index), 10_000)
        seconds = time.monotonic() - started
        samples[which] = (fake, fake_masks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            kid = scores_from_features(
                real_features, extract_features(fake, feature_net), feature_net.name, kid_subsets=50
            )
        consistency = _seg(segmenter.predict(judge, fake), fake_masks, k)
        memo = memorization_check(fake, labelled.images, heldout=test.images).summary()
        row = {
            "images": which,
            "n": len(fake),
            "KID ×1e3": 1e3 * kid["kid_mean"],
            "KID std ×1e3": 1e3 * kid["kid_std"],
            "judge mIoU": consistency["miou"],
            "judge fg mIoU": consistency["fg_miou"],
            "memorised": memo["fraction_copies"],
            "all-pairs distance": mean_pairwise(fake),
            "sample s/image": seconds / len(fake),
        }
        if which != "joint diffusion":
            row["PSNR dB"] = float(psnr(fake, real))
            row["SSIM"] = float(ssim(fake, real))
            chosen = masks[torch.linspace(0, len(masks) - 1, DIVERSITY_MASKS).round().long()]
            repeated = chosen.repeat_interleave(DIVERSITY_SAMPLES, dim=0)
            many, _ = draw(g, which, repeated, len(repeated), 20_000)
            row["per-mask diversity"] = statistics.mean(mean_pairwise(group) for group in many.split(DIVERSITY_SAMPLES))
            samples[which + " diversity"] = (many, repeated)
        rows.append(row)
    return rows, {"real": (real, masks), **samples}


def with_synthetic(labelled: ArrayDataset, images: torch.Tensor, masks: torch.Tensor) -> ArrayDataset:
    """The labelled pairs followed by synthetic ``images`` for ``masks`` (named ``synthetic_<i>``)."""
    return ArrayDataset(
        torch.cat([labelled.images, images]),
        torch.cat([labelled.masks.long(), masks.long()]),
        list(labelled.names) + [f"synthetic_{i}" for i in range(len(images))],
        labelled.class_names,
        labelled.hflip,
        vflip=labelled.vflip,
    )


def downstream(
    setting: Setting, g: Generators, labelled: ArrayDataset, m: int, seeds: list[int], b: Budget, work: Path
) -> list[dict]:
    """Segmenter trained on the N real pairs vs N real + M synthetic, per generator and seed, on the real test
    set. Each generator's M synthetic pairs are drawn once (sampling is the expensive part); seeds vary the
    segmenter."""
    test, rows = setting.test, []
    aug = augmented_masks(labelled, setting, m, 1000)
    sets = {"real only": labelled}
    for which in GENERATORS:
        fake, fake_masks = draw(g, which, aug if which != "joint diffusion" else None, m, 1000)
        sets[f"real + {which}"] = with_synthetic(labelled, fake, fake_masks)
    for seed in seeds:
        for name, data in sets.items():
            started = time.monotonic()
            model, result = fit_segmenter(data, _segmenter_config(b, seed), work / "segmenter")
            scores = _seg(segmenter.predict(model, test.images), test.masks, test.num_classes)
            rows.append(
                {
                    "training data": name,
                    "seed": seed,
                    "pairs": len(data),
                    **scores,
                    "steps": result.step,
                    "fit s": time.monotonic() - started,
                }
            )
            print(f"  {setting.name} seed {seed} {name}: mIoU {scores['miou']:.3f}", flush=True)
    return rows


def sample_figures(setting: Setting, samples: dict, prefix: str) -> list[str]:
    """Two PNGs: [real | SPADE | pix2pix] per test mask (with overlays), and joint samples + SPADE diversity."""
    k = setting.test.num_classes
    scale = max(1, 128 // SIZE)
    real, masks = samples["real"]
    rows = torch.linspace(0, len(masks) - 1, min(6, len(masks))).round().long()
    stack = torch.stack([real[rows], samples["SPADE diffusion"][0][rows], samples["pix2pix"][0][rows]], dim=1)
    first = RESULTS / f"{prefix}_{setting.name}.png"
    save_png(pairs_grid(stack.flatten(0, 1), masks[rows].repeat_interleave(3, dim=0), k, ncol=3, scale=scale), first)
    joint, joint_masks = samples["joint diffusion"]
    many, many_masks = samples["SPADE diffusion diversity"]
    second = RESULTS / f"{prefix}_{setting.name}_joint_diversity.png"
    n = min(8, len(joint))
    both = torch.cat([joint[:n], many[: 2 * DIVERSITY_SAMPLES]])
    both_masks = torch.cat([joint_masks[:n].long(), many_masks[: 2 * DIVERSITY_SAMPLES].long()])
    save_png(pairs_grid(both, both_masks, k, ncol=DIVERSITY_SAMPLES, scale=scale), second)
    return [first.name, second.name]


# -- one dataset, report -----------------------------------------------------------------------------------------
def run_dataset(name: str, args, b: Budget, work: Path, prefix: str) -> dict:
    timings, started = {}, time.monotonic()
    setting = load_setting(name, args.quick)
    n = min(args.labels, len(setting.pool))
    labelled = _pick(setting.pool, choose_labels(setting, n, 0))
    folder = work / name
    timings["load"] = time.monotonic() - started

    t = time.monotonic()
    g = train_generators(labelled, b, folder)
    timings["generators"] = time.monotonic() - t

    t = time.monotonic()
    feature_net = select_feature_net(
        setting.pool.images, cache_dir=folder / "domain_net", train_config=DomainTrainConfig(steps=b.domain_steps)
    )
    timings["domain net"] = time.monotonic() - t

    t = time.monotonic()
    judge, judge_result = fit_segmenter(setting.pool, _judge_config(b), folder / "judge")
    timings["judge"] = time.monotonic() - t

    t = time.monotonic()
    fid_rows, samples = fidelity(setting, g, labelled, judge, feature_net, b)
    figures = sample_figures(setting, samples, prefix)
    timings["fidelity"] = time.monotonic() - t
    print(f"{name}: fidelity " + ", ".join(f"{r['images']} KID {r['KID ×1e3']:.1f}" for r in fid_rows), flush=True)

    t = time.monotonic()
    down = downstream(setting, g, labelled, args.synthetic, args.seeds, b, folder)
    timings["downstream"] = time.monotonic() - t
    timings["total"] = time.monotonic() - started
    print(f"{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "description": setting.description,
        "class_names": setting.test.class_names,
        "labelled": labelled.names,
        "test": len(setting.test),
        "pool": len(setting.pool),
        "generators": g.info,
        "feature_net": feature_net.name,
        "judge_steps": judge_result.step,
        "fidelity": fid_rows,
        "downstream": down,
        "figures": figures,
        "timings_s": timings,
    }


def summarise_downstream(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["training data"] for r in rows):
        group = [r for r in rows if r["training data"] == name]
        table.append(
            {
                "training data": name,
                "pairs": group[0]["pairs"],
                "seeds": len(group),
                "mIoU": mean_std([r["miou"] for r in group]),
                "fg mIoU": mean_std([r["fg_miou"] for r in group]),
                "mean Dice": mean_std([r["mean_dice"] for r in group]),
                "steps": statistics.mean(r["steps"] for r in group),
            }
        )
    return table


def verdicts(rows: list[dict]) -> str:
    """Plain sentences: which synthetic additions beat real-only (mean over seeds, and in how many seeds)."""
    base = {r["seed"]: r["miou"] for r in rows if r["training data"] == "real only"}
    lines = []
    for name in dict.fromkeys(r["training data"] for r in rows if r["training data"] != "real only"):
        diffs = [r["miou"] - base[r["seed"]] for r in rows if r["training data"] == name]
        mean = 100 * statistics.mean(diffs)
        word = "gains" if mean > 0 else "loses"
        lines.append(
            f"{name} {word} {abs(mean):.1f} mIoU points over real only on average "
            f"(better in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds)"
        )
    return "; ".join(lines)


def caveats(r: dict, segmenter_steps: int) -> list[str]:
    """What a dataset's numbers cannot show, read off the numbers themselves."""
    real, notes = r["fidelity"][0], []
    if real["judge fg mIoU"] < 0.1:
        notes.append(
            f"The judge failed on the real test images (foreground mIoU {real['judge fg mIoU']:.2f} after "
            f"{r['judge_steps']} steps): it did not learn the foreground classes, so this dataset's "
            "semantic-consistency numbers say nothing about the generators."
        )
    below = [row["images"] for row in r["fidelity"][1:] if row["KID ×1e3"] <= real["KID ×1e3"]]
    if below:
        notes.append(
            f"{', '.join(below)} score a KID at or below the real training images. SPADE and pix2pix draw "
            "from the test masks and so share the test images' anatomy, which the training images (other "
            f"patients / slices) do not; and at {r['fidelity'][1]['n']} images the domain network's KID does not "
            "separate the unrealistic samples in the figures from real ones. Read KID only as a comparison between the "
            "generators of one dataset, not as closeness to real images."
        )
    short = {g: i["steps"] for g, i in r["generators"].items() if "diffusion" in g and i["steps"] < 1000}
    if short:
        notes.append(
            "The diffusion models trained only "
            + ", ".join(f"{s} steps ({g})" for g, s in short.items())
            + f" (pix2pix, in the same wall time as SPADE: {r['generators']['pix2pix']['steps']} steps): far "
            "from converged, so these numbers measure the methods at this CPU budget, not at convergence."
        )
    capped = sum(row["steps"] >= segmenter_steps for row in r["downstream"])
    if capped:
        notes.append(
            f"{capped} of the {len(r['downstream'])} downstream U-Nets ran all {segmenter_steps} steps without "
            "stopping early: still improving, so a longer budget could change the gaps."
        )
    copied = [f"{row['images']} ({row['memorised']:.0%})" for row in r["fidelity"][1:] if row["memorised"] > 0.05]
    if copied:
        notes.append(f"Likely copies of training images: {', '.join(copied)}.")
    return notes


def merged(previous: Path, results: dict) -> dict:
    """``results`` plus the datasets of the ``previous`` results JSON that this run did not redo (each keeps the
    command, date and budget it ran with)."""
    if not previous.is_file():
        return dict(results)
    kept = {
        k: v
        for k, v in json.loads(previous.read_text()).get("datasets", {}).items()
        if k not in results and "command" in v
    }  # sections written before datasets named their command: dropped
    everything = {**kept, **results}
    return {name: everything[name] for name in DATASETS if name in everything}


def report(results: dict, args, b: Budget, prefix: str) -> None:
    """Rewrite ``results/<prefix>.md/json`` with ``results`` merged into what is there (under a lock, so
    processes running different datasets can share the file)."""
    with open(RESULTS / f".{prefix}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        everything = merged(RESULTS / f"{prefix}.json", results)
        _write_report(everything, args, b, prefix)


def _write_report(results: dict, args, b: Budget, prefix: str) -> None:
    parts = []
    for name, r in results.items():
        gens = "; ".join(
            f"{g}: {i['parameters'] / 1e6:.2f} M parameters, {i['steps']} steps in {i['minutes']:.1f} min, "
            f"final loss {i['final_loss']:.4f}"
            for g, i in r["generators"].items()
        )
        fid_columns = [
            "images",
            "n",
            "KID ×1e3",
            "KID std ×1e3",
            "PSNR dB",
            "SSIM",
            "judge mIoU",
            "judge fg mIoU",
            "memorised",
            "per-mask diversity",
            "all-pairs distance",
            "sample s/image",
        ]
        down = summarise_downstream(r["downstream"])
        timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["timings_s"].items())
        parts.append(
            f"## {name}\n\nRun by `{r['command']}` on {r['date']} ({r['threads']} torch thread(s), 1-minute load "
            f"average {r['load'][0]:.1f} at its start, {r['load'][1]:.1f} at its end). {r['description']}. Generators "
            f"and the downstream real set: {len(r['labelled'])} pool pairs; judge: every pool pair ({r['pool']}), "
            f"{r['judge_steps']} steps. Feature network for KID: `{r['feature_net']}`. Time: {timing}.\n\n"
            f"Generators: {gens}.\n\n"
            f"### Fidelity and semantic consistency (test masks)\n\n{markdown_table(r['fidelity'], fid_columns)}\n\n"
            f"### Downstream utility ({len(r['labelled'])} real pairs + {r['synthetic']} synthetic, test = "
            f"{r['test']} real test pairs)\n\n{markdown_table(down, list(down[0]))}\n\n{verdicts(r['downstream'])}.\n\n"
            + "".join(f"- {note}\n" for note in caveats(r, b.segmenter_train.steps))
            + "\n"
            + "".join(f"![{name} samples]({f})\n\n" for f in r["figures"])
        )
    missing = [d for d in DATASETS if d not in results]
    cut_note = (
        f"**Not run yet:** {', '.join(missing)} (run `--datasets {' '.join(missing)}` to add them). " if missing else ""
    )
    text = (
        f"{cut_note}All at 64 px; 128 px was not run (the time budget does not allow it). Each dataset section "
        f"names the command that produced it (the header's command is the last one to write this file, its "
        f"wall time the sum of the dataset runs, which may run side by side); sample figures of ACDC, ISBI and "
        f"cataract images are written next "
        f"to this file but not committed (the data licences do not allow copies in the repository).\n\n"
        f"**Setup.** Each generator trains on the same N = {args.labels} labelled pool pairs: SPADE diffusion = "
        f"meddiff `synthesize` for {b.generator_steps} steps of 8 pairs (UNet base {b.unet.base_channels}, "
        f"mults {b.unet.channel_mults}, SPADE label map, 20% map dropout, sampled with DPM++ {b.sampler_steps} "
        f"steps, guidance {b.guidance}); joint diffusion = meddiff `generate` with `joint_mask` ({b.generator_steps} "
        f"steps, same UNet, one-hot mask channels, DPM++ {b.sampler_steps} steps); pix2pix = meddiff `pix2pix` "
        f"for as long as the SPADE model trained (wall time; U-Net generator base "
        f"{b.pix2pix.base_channels}, PatchGAN, L1 weight 100). Splits are those of `benchmarks.segmentation` "
        f"(test patients/bands/images/videos and the slices next to them never train anything; the 'sweep "
        f"validation' images named below belong to that benchmark and are unused here).\n\n"
        f"**Fidelity** on at most {b.fidelity_masks} evenly spaced test masks (one image each; joint: as many "
        f"unconditional pairs): KID ×1e3 (mean and std over 50 subsets) against the same real test images in the "
        f"features of meddiff's domain network (`metrics.domain_net`, a SimCLR CNN trained on the dataset's pool "
        f"images; its name is given per dataset, numbers are not comparable with Inception KIDs). "
        f"FID is not reported: with {b.fidelity_masks} or fewer images per set it is strongly biased and its "
        f"256-dimensional covariance is rank-deficient (the metrics core wants >= 2048). PSNR/SSIM compare the "
        f"synthesised image with the real image of the same mask (not defined for joint samples, which have no "
        f"input mask). KID std is over random subsets of min(n real, n synthesised) images: when that is the whole "
        f"set (32 vs 32) every subset is the same and the std is ~0, meaningless. "
        f"First row = the real training images against the test images (a reference, not a floor: they show "
        f"other patients / slices than the test masks). **Memorised** = fraction of samples closer (RMS pixels "
        f"at 32 px) to a training image than 99% of the real test images are. **Per-mask diversity** = mean "
        f"pairwise RMS distance of {DIVERSITY_SAMPLES} samples of one mask ({DIVERSITY_MASKS} masks); all-pairs "
        f"distance = the same over all samples of the row.\n\n"
        f"**Semantic consistency**: the judge (U-Net segmenter, base {b.segnet.base_channels}, trained on every "
        f"real pool pair, at most {b.judge_steps} steps) on the synthesised images, mIoU against their input masks "
        f"(joint: against the generated masks); first row = the judge on the real test images.\n\n"
        f"**Downstream utility**: the same U-Net trained (at most {b.segmenter_train.steps} steps, early stopping "
        f"every {b.segmenter_train.eval_every} steps with patience {b.segmenter_train.patience} on "
        f"10% held-out pixels of its own training images) on the N real pairs vs the N real + M = {args.synthetic} "
        f"synthetic pairs: SPADE and pix2pix draw images for augmented copies of the N training masks "
        f"(`data.mask_sources`: flips as the data, rotation ±10°, elastic 3 px), the joint model draws M pairs. "
        f"mIoU / Dice (background included; fg = without it) on all real test pairs, mean ± sample std over seeds "
        f"{args.seeds} (each seed: a new segmenter initialisation and data order; the generators are trained "
        f"once and each draws its M synthetic pairs once).\n\n" + "\n".join(parts)
    )
    write_result(
        prefix,
        "Mask-to-image synthesis: SPADE diffusion vs joint diffusion vs pix2pix",
        data=", ".join(results) + " (../shared/data and nilearn's MNI152)",
        seed=str(args.seeds),
        wall_seconds=sum(r["timings_s"]["total"] for r in results.values()),
        body=text,
        numbers={"datasets": results, "not_run": missing, "budget": dataclasses.asdict(b)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and budgets (end-to-end smoke test)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--labels", type=int, default=20, help="N real labelled pairs")
    parser.add_argument("--synthetic", type=int, default=40, help="M synthetic pairs added per generator")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--generator-steps",
        type=int,
        default=400,
        help="training steps of each diffusion generator (pix2pix trains as long, in wall time)",
    )
    parser.add_argument(
        "--segmenter-steps",
        type=int,
        default=500,
        help="at most this many steps per downstream U-Net (it stops early before that)",
    )
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--rewrite-report",
        action="store_true",
        help="only rewrite the results file from its JSON (after a change to the report's text)",
    )
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    if args.quick:
        args.labels, args.synthetic, args.seeds = min(args.labels, 6), min(args.synthetic, 6), args.seeds[:2]
    b = budget(args.quick, args.generator_steps, args.segmenter_steps)
    prefix = "synthesis_quick" if args.quick else "synthesis"
    if args.rewrite_report:
        report({}, args, b, prefix)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-synthesis-"))
    command = command_line()
    for name in args.datasets:
        load_start = os.getloadavg()[0]
        result = run_dataset(name, args, b, work, prefix)
        result.update(
            command=command,
            date=time.strftime("%Y-%m-%d"),
            threads=torch.get_num_threads(),
            load=[load_start, os.getloadavg()[0]],
            synthetic=args.synthetic,
        )
        # written after every dataset, so an interrupted run still leaves its finished datasets
        report({name: result}, args, b, prefix)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
