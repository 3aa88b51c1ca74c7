"""Few-label segmentation: an MLP ensemble on diffusion-decoder features (Baranchuk et al.) vs a U-Net
trained from scratch on the same labelled images, on four real datasets, 5/10/20 labels, 3 seeds.

    .venv/bin/python -m benchmarks.segmentation [--quick] [--datasets brain acdc isbi cataract]
                                                [--labels 5 10 20] [--seeds 0 1 2] [--work DIR]

Per dataset: (1) an image-only diffusion model (meddiff `generate`, joint_mask: false) trains on unlabelled
images that exclude every test image; (2) `run_sweep` scores each decoder block at each timestep on
validation images (never test images) and its recommendation is the feature set of every fit; (3) for
each label count and seed both methods train on the same labelled images (same flips, early stopping on
the same held-out pixels) and are scored on the held-out test images: per-class IoU and Dice (pooled over
the test set, background included in mIoU; "fg mIoU" leaves it out), mean and sample std over seeds,
wall time and peak resident memory (VmHWM, reset before each phase) of fit and predict.
Two more experiments on ACDC: memory of `meddiff segment fit` / `predict` at 20 labelled 256-px images
with 8,064-dim features, and the bounded path (class-balanced sample, fp16 on disk) vs training on every
pixel in float32 RAM with the same step budget (3 seeds). The full run takes about an hour on one core;
the results file lists what that cuts. Stage times go to stdout as the run progresses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.common import RESULTS, markdown_table, mean_std, write_result
from meddiff.config import from_dict, to_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.labels import IGNORE_INDEX
from meddiff.data.samples import brain_mri
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.segmentation import SegmentationMeter
from meddiff.nets.segnet import SegNetConfig
from meddiff.nets.unet import UNetConfig
from meddiff.segment.ensemble import EnsembleConfig
from meddiff.segment.features import FeatureConfig
from meddiff.segment.islands import CANDIDATE_SIZES, fill_islands, label_min_island
from meddiff.segment.pipeline import PixelClassifier, fit_classifier
from meddiff.segment.pixels import PixelConfig
from meddiff.tasks import generate, segmenter
from meddiff.tasks.segment import SegmentConfig, SweepConfig, load_diffusion, make_extractor, run_sweep
from meddiff.tasks.segmenter import SegmenterConfig, select_images
from meddiff.train.engine import TrainConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLASSMAPS = Path(__file__).resolve().parents[1] / "configs" / "data" / "classmaps"
ACDC_SLICE = re.compile(r"(patient\d+)_frame\d+_slice_\d+")


# -- measuring -------------------------------------------------------------------------------------------
def _reset_peak() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process, so a phase's own peak is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(field_name: str) -> float | None:
    try:
        return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    # Not Linux: the lifetime peak is all there is.
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Phase:
    """Wall time, peak RSS and the RSS it started from, of a ``with`` block."""

    seconds: float = 0.0
    peak_mb: float = 0.0
    start_mb: float = 0.0

    def __enter__(self) -> Phase:
        _reset_peak()
        self.start_mb = _status_mb("VmRSS") or 0.0
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds, self.peak_mb = time.monotonic() - self._start, _peak_mb()

    @property
    def added_mb(self) -> float:
        return self.peak_mb - self.start_mb


# -- datasets ----------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One dataset: labelled training pool, test and sweep-validation images (all at the working size), the
    unlabelled images for the diffusion model and how it trains on them."""

    name: str
    description: str
    pool: ArrayDataset
    groups: list[str]  # patient / video / region of each pool image
    per_group: int | None  # labels come from few groups: at most this many images per group
    test: ArrayDataset
    sweep_val: ArrayDataset
    unlabelled: torch.Tensor  # [N, C, H, W] in [-1, 1]
    diffusion_data: dict  # DataConfig of the folder the unlabelled images are written to
    max_labels: int


DIFFUSION = "diffusion features + MLP ensemble"
CORRECTED = "diffusion features + MLP ensemble, prior-corrected"
FITTED = "diffusion features + MLP ensemble, held-out-fitted shift"
ISLANDS = "diffusion features + MLP ensemble, prior-corrected, island filter"
UNET = "U-Net from scratch"


def _load(**data) -> ArrayDataset:
    return build_dataset(from_dict(DataConfig, data))


def _subset(dataset: ArrayDataset, indices) -> ArrayDataset:
    return select_images(dataset, [dataset.names[i] for i in indices])


def brain_bands(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The brain split of every benchmark over ``n`` ordered axial slices: each slice's band (8 bands of
    consecutive slices), test = bands 1, 4 and 6, train = neither test nor within 2 slices of a test slice."""
    band = torch.arange(n) * 8 // n
    test = torch.isin(band, torch.tensor([1, 4, 6]))
    near = torch.zeros(n, dtype=torch.bool)
    for shift in (-2, -1, 1, 2):
        near |= torch.roll(test, shift)
    return band, test, ~test & ~near


def brain(quick: bool) -> Setting:
    """MNI152 axial slices at 64 px in 8 bands of consecutive slices; bands 1, 4 and 6 are test, and the
    two slices next to a test band on either side are dropped, so no test slice has a training neighbour."""
    data = brain_mri(64, hflip=True)
    band, test, train = brain_bands(len(data))
    pool_all = torch.nonzero(train)[:, 0].tolist()
    rng = np.random.default_rng(123)
    sweep_val = sorted(rng.choice(pool_all, size=12, replace=False).tolist())
    pool = [i for i in pool_all if i not in sweep_val]
    test_index = torch.nonzero(test)[:, 0].tolist()
    if quick:
        test_index = test_index[::6]
    return Setting(
        "brain",
        f"MNI152 T1 axial slices (nilearn), 64 px, 4 tissue classes; {len(pool)} pool / "
        f"{len(sweep_val)} sweep-validation / {len(test_index)} test slices, test = 3 bands of "
        "consecutive slices with a 2-slice gap to any training slice",
        _subset(data, pool),
        [str(int(band[i])) for i in pool],
        None,
        _subset(data, test_index),
        _subset(data, sweep_val),
        data.images[pool + sweep_val],
        {"size": 64, "hflip": True},
        20,
    )


def acdc(quick: bool, size: int = 64) -> Setting:
    """ACDC by split.csv: pool = training patients, sweep validation = validation patients, test = test
    patients (every 5th slice); the diffusion model sees every training-patient slice, unlabelled."""
    common = dict(
        kind="image_mask_folder",
        root=str(DATA / "acdc"),
        class_map=str(CLASSMAPS / "acdc.yaml"),
        split_file=str(DATA / "acdc" / "split.csv"),
        size=size,
        fit="pad",
    )
    train = _load(**common, split="train")
    val = _load(**common, split="val")
    test = _load(**common, split="test")
    test_index = list(range(0, len(test), 5))
    val_index = list(range(0, len(val), 10))
    unlabelled = train.images
    if quick:
        test_index, val_index, unlabelled = test_index[:4], val_index[:4], train.images[:64]
    return Setting(
        "acdc",
        f"ACDC cine-MRI, padded to a square and resized to {size} px, 4 classes; pool = "
        f"{len(train)} slices of 70 training patients, sweep validation = {len(val_index)} slices of "
        f"10 validation patients, test = {len(test_index)} slices (every 5th) of the 20 test patients",
        train,
        [ACDC_SLICE.match(n).group(1) for n in train.names],
        5,
        _subset(test, test_index),
        _subset(val, val_index),
        unlabelled,
        {"size": size},
        20,
    )


def isbi(quick: bool) -> Setting:
    """ISBI-2012 EM at 128 px (resized from 512): pool = images 0-19, test = 20-29 (never labelled, never
    seen by the diffusion model), which also trains on the 30 unlabelled challenge test images. The
    diffusion model and the U-Net train on random 64-px crops (the U-Net predicts whole images)."""
    data = _load(
        kind="image_mask_folder",
        root=str(DATA / "isbi2012_em_membrane"),
        remap={0: [255], 1: [0]},
        class_names=["cell interior", "membrane"],
        size=128,
        fit="resize",
        hflip=True,
        vflip=True,
    )
    order = sorted(range(len(data)), key=lambda i: int(data.names[i]))
    extra = _load(kind="image_folder", root=str(DATA / "isbi2012_em_membrane" / "test_images"), size=128)
    pool = _subset(data, order[:20])
    pool.crop = 64
    test = _subset(data, order[20:24] if quick else order[20:])
    return Setting(
        "isbi",
        "ISBI-2012 EM membranes, 128 px (resized from 512), 2 classes; pool = images 0-19, "
        "sweep validation = the pool images the sweep does not train on, test = images 20-29; the "
        "U-Net trains on random 64-px crops (flips as well), the diffusion model on 64-px crops",
        pool,
        [str(i) for i in range(20)],
        None,
        test,
        pool,
        torch.cat([pool.images, extra.images]),
        {"size": 64, "fit": "random_crop", "short_side": 128, "hflip": True, "vflip": True},
        20,
    )


def cataract(quick: bool) -> Setting:
    """Binary instrument masks from three datasets at 64 px. Test = Cataract-1K video 53153 and CatInstSeg
    video 11-07-49: no frame of a test video is labelled or seen by the diffusion model, which trains on the
    100 unlabelled frames and the 17 pool frames."""
    common = dict(
        kind="image_mask_folder",
        class_names=["background", "instrument"],
        size=64,
        fit="resize",
        hflip=True,
        channels=3,
    )
    parts = [
        _load(**common, root=str(DATA / "cataract1k_samples"), masks_dir="masks_L"),
        _load(**common, root=str(DATA / "catinstseg_samples")),
        _load(**common, root=str(DATA / "cadis_samples_mt"), unpaired="skip"),
    ]
    images = torch.cat([p.images for p in parts])
    masks = torch.cat([p.masks.long() for p in parts])
    names = [n for p in parts for n in p.names]
    video = [_video(n) for n in names]
    data = ArrayDataset(images, masks, names, parts[0].class_names, hflip=True)
    test_videos = {"case_53153", "2019-10-16_11-07-49"}
    pool = [i for i, v in enumerate(video) if v not in test_videos]
    test = [i for i, v in enumerate(video) if v in test_videos]
    unlabelled = _load(
        kind="image_folder", root=str(DATA / "cataract_frames_unlabeled_csam2" / "images"), size=64, fit="resize"
    )
    return Setting(
        "cataract",
        "instrument vs background, 64 px (resized); pool = 17 frames (Cataract-1K videos 5013, "
        "5014, 5316; CatInstSeg video 10-13-16; CaDIS video 3), test = 7 frames of two other videos "
        "(Cataract-1K 53153, CatInstSeg 11-07-49); the sweep validates on pool frames it does not "
        "train on",
        _subset(data, pool),
        [video[i] for i in pool],
        None,
        _subset(data, test[:3] if quick else test),
        _subset(data, pool),
        torch.cat([unlabelled.images[:20] if quick else unlabelled.images, images[pool]]),
        {"size": 64, "hflip": True},
        17,
    )


def _video(name: str) -> str:
    """The video a cataract frame comes from, from its file name."""
    for pattern, form in (
        (r"case_?(\d+)", "case_{}"),
        (r"(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)", "{}"),
        (r"(Video\d+)", "{}"),
    ):
        found = re.search(pattern, name)
        if found:
            return form.format(found.group(1))
    raise ValueError(f"no video id in {name}")


SETTINGS = {"brain": brain, "acdc": acdc, "isbi": isbi, "cataract": cataract}


# -- the pieces of one dataset ------------------------------------------------------------------------------
@dataclass
class Budget:
    """Sizes and budgets of a run (full or --quick). The memory experiment has its own pixels / ensemble
    (its 8,000-dim features make each optimiser step ~10x dearer) and timesteps (enough for 8,000 dims)."""

    quick: bool
    diffusion_steps: int
    unet: UNetConfig
    sweep: SweepConfig
    pixels: PixelConfig
    ensemble: EnsembleConfig
    segnet: SegNetConfig
    segmenter_train: TrainConfig
    sweep_ensemble: EnsembleConfig  # training of each (block, timestep) cell's ensemble (members: sweep's)
    memory_timesteps: list[int]
    memory_pixels: PixelConfig
    memory_ensemble: EnsembleConfig
    memory_size: int
    memory_test: int


def budget(quick: bool, diffusion_steps: int, unet_steps: int) -> Budget:
    # Every trainer in the process uses bf16: accelerate keeps one precision per process.
    if quick:
        return Budget(
            True,
            8,
            UNetConfig(base_channels=8, channel_mults=[1, 2], blocks_per_level=1, attention_levels=[], norm_groups=4),
            SweepConfig(timesteps=[50, 250], blocks=[1, 3], members=1, max_pixels=1000, top_blocks=2, top_timesteps=1),
            PixelConfig(max_pixels=2000, val_pixels=400),
            EnsembleConfig(members=2, hidden=[16, 8], eval_every=20, patience=2, max_epochs=2),
            SegNetConfig(base_channels=8, depth=3),
            TrainConfig(
                steps=6,
                batch_size=4,
                warmup_steps=0,
                eval_every=3,
                patience=2,
                checkpoint_every=1000,
                log_every=3,
                mixed_precision="bf16",
            ),
            EnsembleConfig(hidden=[16, 8], eval_every=20, patience=2, max_epochs=2),
            memory_timesteps=[50, 150],
            memory_pixels=PixelConfig(max_pixels=2000, val_pixels=400),
            memory_ensemble=EnsembleConfig(members=2, hidden=[16, 8], eval_every=20, patience=2, max_epochs=1),
            memory_size=64,
            memory_test=4,
        )
    # Sized for ~1 hour on one core (see the results file): a 3.1 M-parameter UNet without attention (576
    # feature channels per timestep over its 8 decoder blocks), 20,000 training pixels per fit, at most 10
    # passes over them (held-out early stopping ends it: the earlier cap of 3 passes stopped every fit before
    # that); a base-16 U-Net baseline trained until its held-out loss stops improving. Budgets
    # are steps, not minutes, so that the scores do not depend on how busy the machine is.
    return Budget(
        False,
        diffusion_steps,
        UNetConfig(base_channels=32, channel_mults=[1, 2, 2, 4], blocks_per_level=1, attention_levels=[]),
        SweepConfig(timesteps=[20, 50, 100, 150, 250, 500], members=2, max_pixels=8000, top_blocks=3, top_timesteps=2),
        # the sweep scores its cells with the held-out-fitted shift; every method row uses the blocks it picks
        PixelConfig(max_pixels=20_000, val_pixels=4000, prior_correction="fitted"),
        EnsembleConfig(eval_every=100, patience=3, max_epochs=10),
        SegNetConfig(base_channels=16, depth=4),
        TrainConfig(
            steps=unet_steps,
            batch_size=4,
            lr=1e-3,
            warmup_steps=20,
            ema_decay=0.99,
            eval_every=25,
            patience=8,
            checkpoint_every=100_000,
            keep_checkpoints=1,
            log_every=25,
            mixed_precision="bf16",
        ),
        EnsembleConfig(batch_size=256, eval_every=25, patience=2, max_epochs=3),
        memory_timesteps=[10, 20, 50, 75, 100, 150, 200, 250, 300, 350, 400, 500, 600, 700],
        memory_pixels=PixelConfig(max_pixels=20_000, val_pixels=4000),
        memory_ensemble=EnsembleConfig(eval_every=100, patience=2, max_epochs=1),
        memory_size=256,
        memory_test=2,
    )


def _write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(arrays):
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i:05d}.png")
    return folder


def train_diffusion(setting: Setting, b: Budget, work: Path) -> tuple[Path, dict]:
    """The image-only diffusion model of a dataset (reused if ``work`` already holds it)."""
    run = work / setting.name / "diffusion"
    info_file = run / "bench.json"
    if info_file.is_file():
        return run, json.loads(info_file.read_text())
    folder = _write_pngs(setting.unlabelled, work / setting.name / "unlabelled")
    config = generate.GenerateConfig(
        data=from_dict(DataConfig, {"kind": "image_folder", "root": str(folder), **setting.diffusion_data}),
        model=b.unet,
        noise=NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction"),
        train=TrainConfig(
            steps=b.diffusion_steps,
            batch_size=8,
            lr=1e-3,
            warmup_steps=0 if b.quick else 20,
            ema_decay=0.995,
            mixed_precision="bf16",
            sample_every=100_000,
            checkpoint_every=100_000,
            keep_checkpoints=1,
            log_every=50,
        ),
        sampler=SamplerConfig(name="dpm++", steps=20),
        joint_mask=False,
        grid_samples=4,
    )
    result = generate.fit(config, run, progress=False)
    shutil.rmtree(folder)
    info = {
        "steps": result.step,
        "minutes": result.seconds / 60,
        "final_loss": float(np.mean(list(result.losses.values())[-50:])),
        "images": len(setting.unlabelled),
        "train_size": setting.diffusion_data["size"],
    }
    info_file.write_text(json.dumps(info))
    return run, info


def choose_labels(setting: Setting, n: int, seed: int) -> list[int]:
    """``n`` pool images drawn by ``seed``; with ``per_group`` from as few groups (patients) as that allows."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(setting.pool)).tolist()
    if setting.per_group is None:
        return sorted(order[:n])
    groups = list(dict.fromkeys(setting.groups[i] for i in order))
    chosen: list[int] = []
    for group in groups:
        members = [i for i in order if setting.groups[i] == group]
        chosen += members[: min(setting.per_group, n - len(chosen))]
        if len(chosen) == n:
            break
    return sorted(chosen)


def _scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    meter = SegmentationMeter(num_classes)
    meter.update(pred, target.long())
    scores = meter.compute()
    valid = target != IGNORE_INDEX
    return {
        "miou": scores.miou,
        "fg_miou": float(scores.iou[1:].nanmean()),
        "mean_dice": scores.mean_dice,
        "iou": scores.iou.tolist(),
        "dice": scores.dice.tolist(),
        # share of the scored pixels labelled as any class but the first (background / cell interior)
        "fg_fraction": float((pred[valid] > 0).float().mean()),
        "true_fg_fraction": float((target[valid] > 0).float().mean()),
    }


def run_sweep_for(setting: Setting, diffusion_run: Path, b: Budget, work: Path, n_labels: int) -> dict:
    model, diffusion, _ = load_diffusion(diffusion_run)
    labelled = _subset(setting.pool, choose_labels(setting, n_labels, 0))
    val = setting.sweep_val
    if val is setting.pool:  # validate on the pool images the sweep does not train on
        val = _subset(
            setting.pool, [i for i in range(len(setting.pool)) if setting.pool.names[i] not in set(labelled.names)]
        )
    config = SegmentConfig(
        diffusion=diffusion_run, features=FeatureConfig(), pixels=b.pixels, ensemble=b.sweep_ensemble, sweep=b.sweep
    )
    out = work / setting.name / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    with Phase() as phase:
        run_sweep(model, diffusion, config, labelled, val, out)
    figure = RESULTS / f"segmentation{'_quick' if b.quick else ''}_sweep_{setting.name}.png"
    shutil.copy(out / "figures" / "sweep.png", figure)
    result = json.loads((out / "sweep.json").read_text())
    return {
        **result,
        "figure": figure.name,
        "labelled": len(labelled),
        "validation": len(val),
        "seconds": phase.seconds,
        "peak_mb": phase.peak_mb,
    }


def fit_diffusion_features(
    setting: Setting,
    diffusion_run: Path,
    features: FeatureConfig,
    labelled: ArrayDataset,
    test: ArrayDataset,
    pixels: PixelConfig,
    ensemble: EnsembleConfig,
    seed: int,
    work: Path,
) -> dict[str, dict]:
    """One fit of the pixel classifier, scored three times on the test images: as trained (the balanced
    sample's prior), with the prior correction and with the held-out-fitted shift
    (``PixelConfig.prior_correction`` prior / fitted); keyed by method name."""
    model, diffusion, _ = load_diffusion(diffusion_run)
    extractor = make_extractor(model, diffusion, features)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    with Phase() as fit_phase:
        outcome = fit_classifier(
            extractor,
            labelled.images,
            labelled.masks,
            labelled.num_classes,
            pixels,
            ensemble,
            seed,
            scratch=scratch,
            hflip=labelled.hflip,
            vflip=labelled.vflip,
            mirror=labelled.mirror,
        )
    results = {}
    predictions = {}
    for method, bias in ((DIFFUSION, None), (CORRECTED, outcome.prior_bias), (FITTED, outcome.fitted_bias)):
        with Phase() as predict_phase:
            pred = PixelClassifier(extractor, outcome.ensemble, bias).predict(test.images).labels
        predictions[method] = pred
        results[method] = {
            **_scores(pred, test.masks, test.num_classes),
            "fit_s": fit_phase.seconds,
            "fit_peak_mb": fit_phase.peak_mb,
            "fit_added_mb": fit_phase.added_mb,
            "predict_s": predict_phase.seconds,
            "predict_peak_mb": predict_phase.peak_mb,
            "predict_added_mb": predict_phase.added_mb,
            "dims": extractor.dims,
            "train_pixels": outcome.report.train_pixels,
            "steps": outcome.report.steps,
            "stopped_early": outcome.report.stopped_early,
            "store_mb": outcome.store_bytes / 2**20,
        }
    # segment predict's island filter on the default (prior-corrected) prediction: at the size the labelled
    # masks support (the default, chosen from the labels alone) and at every candidate size
    chosen = label_min_island(labelled.masks)
    filtered = {
        size: torch.stack([fill_islands(labels, size) for labels in predictions[CORRECTED]])
        for size in sorted({*CANDIDATE_SIZES, chosen})
    }
    results[ISLANDS] = {
        **results[CORRECTED],
        **_scores(filtered[chosen], test.masks, test.num_classes),
        "min_island": chosen,
        "island_miou": {
            str(size): _scores(pred, test.masks, test.num_classes)["miou"] for size, pred in filtered.items()
        },
    }
    return results


def fit_unet(labelled: ArrayDataset, test: ArrayDataset, b: Budget, seed: int, work: Path) -> dict:
    run = work / "unet"
    shutil.rmtree(run, ignore_errors=True)
    config = SegmenterConfig(
        model=b.segnet, train=dataclasses.replace(b.segmenter_train, seed=seed), val_fraction=b.pixels.val_fraction
    )
    with Phase() as fit_phase:
        result = segmenter.fit_dataset(config, run, labelled, progress=False)
    model, _ = segmenter.load(run)
    with Phase() as predict_phase:
        pred = segmenter.predict(model, test.images)
    shutil.rmtree(run, ignore_errors=True)
    return {
        **_scores(pred, test.masks, test.num_classes),
        "fit_s": fit_phase.seconds,
        "fit_peak_mb": fit_phase.peak_mb,
        "fit_added_mb": fit_phase.added_mb,
        "predict_s": predict_phase.seconds,
        "predict_peak_mb": predict_phase.peak_mb,
        "predict_added_mb": predict_phase.added_mb,
        "steps": result.step,
        "best_step": result.best_step,
        "stopped_early": result.step < b.segmenter_train.steps,
    }


# -- ACDC-only experiments --------------------------------------------------------------------------------
# The child reports its own VmHWM: the ru_maxrss that wait4 returns would include this (large) process's
# resident memory, which Linux carries into a forked child's peak across exec.
_CHILD = """
import re, sys
from pathlib import Path
from meddiff.cli import main
peak_file = sys.argv.pop(1)
try:
    main()
finally:
    Path(peak_file).write_text(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
"""


def _run_cli(log: Path, *args) -> tuple[float, float]:
    """Run ``meddiff ARGS`` in a child process: its wall time and peak resident memory (MB, its VmHWM)."""
    started = time.monotonic()
    peak_file = log.with_suffix(".peak")
    with open(log, "w") as err:
        code = subprocess.call([sys.executable, "-c", _CHILD, str(peak_file), *map(str, args)], stdout=err, stderr=err)
    if code:
        raise RuntimeError(f"meddiff {' '.join(map(str, args))} failed:\n{log.read_text()}")
    return time.monotonic() - started, int(peak_file.read_text()) / 1024


def _link_pairs(names: list[str], folder: Path, masks: bool) -> Path:
    """A dataset folder of symbolic links to ACDC files (nothing is copied)."""
    for sub in ("images", "masks") if masks else ("images",):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / sub / f"{name}.png").symlink_to(DATA / "acdc" / sub / f"{name}.png")
    return folder


def memory_experiment(setting: Setting, diffusion_run: Path, b: Budget, work: Path) -> dict:
    """What a user runs: `meddiff segment fit` on a folder of 20 labelled ACDC slices at ``b.memory_size``
    px with every decoder block at ``b.memory_timesteps`` (8,064 dims in the full run), then `meddiff
    segment predict` on ``b.memory_test`` test slices showing every class, each in its own process; masks
    are scored at native resolution. The UNet runs at the pixel scale it was trained at (64 px for a 256-px
    image)."""
    size = b.memory_size
    labelled = [setting.pool.names[i] for i in choose_labels(setting, 20, 0)]
    present = [len(mask.unique()) for mask in setting.test.masks]
    complete = [i for i, k in enumerate(present) if k == max(present)]  # slices with every class (if any)
    test = [setting.test.names[i] for i in complete[:: max(1, len(complete) // b.memory_test)][: b.memory_test]]
    root = work / "memory"
    shutil.rmtree(root, ignore_errors=True)
    model, _, _ = load_diffusion(diffusion_run)
    config = {
        "task": "segment",
        "diffusion": str(diffusion_run),
        "data": {
            "kind": "image_mask_folder",
            "root": str(_link_pairs(labelled, root / "labelled", True)),
            "class_map": str(CLASSMAPS / "acdc.yaml"),
            "size": size,
            "fit": "pad",
        },
        "features": {
            "blocks": list(range(model.num_decoder_blocks)),
            "timesteps": b.memory_timesteps,
            "scale": setting.diffusion_data["size"] / size,
        },
        "pixels": to_dict(b.memory_pixels),
        "ensemble": to_dict(b.memory_ensemble),
        "seed": 0,
    }
    (root / "segment.yaml").write_text(yaml.safe_dump(config))
    fit_s, fit_mb = _run_cli(root / "fit.log", "segment", "fit", root / "segment.yaml", "--out", root / "run")
    predict_s, predict_mb = _run_cli(
        root / "predict.log",
        "segment",
        "predict",
        root / "run",
        "--images",
        _link_pairs(test, root / "test", False) / "images",
        "--out",
        root / "predicted",
    )
    meter = SegmentationMeter(setting.test.num_classes)
    for name in test:
        truth = torch.from_numpy(np.array(Image.open(DATA / "acdc" / "masks" / f"{name}.png"))).long()
        meter.update(torch.from_numpy(np.array(Image.open(root / "predicted" / "masks" / f"{name}.png"))).long(), truth)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    scores = meter.compute()
    result = {
        "size": size,
        "labelled": len(labelled),
        "test": len(test),
        "dims": metrics["feature_dims"],
        "train_pixels": metrics["train_pixels"],
        "store_mb": metrics["feature_store_mb"],
        "fit_s": fit_s,
        "fit_peak_mb": fit_mb,
        "predict_s": predict_s,
        "predict_peak_mb": predict_mb,
        "miou": scores.miou,
        "fg_miou": float(scores.iou[1:].nanmean()),
    }
    result["all_pixels_float32_gb"] = len(labelled) * size * size * result["dims"] * 4 / 2**30
    shutil.rmtree(root / "scratch", ignore_errors=True)
    return result


def fidelity_experiment(
    setting: Setting,
    diffusion_run: Path,
    features: FeatureConfig,
    b: Budget,
    seeds: list[int],
    work: Path,
    bounded_rows: list[dict],
) -> list[dict]:
    """Every labelled pixel in float32 RAM (Baranchuk et al.'s way) vs the bounded path at the largest label
    count of the run. The bounded path is refitted with as many optimiser steps as the every-pixel fit may
    take (its epochs scaled up by the pixel ratio), so only the pixel sample and the fp16 disk storage
    differ; the main grid's bounded fit (fewer steps) is listed too."""
    n = max(r["labels"] for r in bounded_rows)
    every_pixel = dataclasses.replace(b.pixels, max_pixels=None, storage="memory", fp16=False)
    rows = []
    for seed in seeds:
        labelled = _subset(setting.pool, choose_labels(setting, n, seed))
        full = fit_diffusion_features(
            setting, diffusion_run, features, labelled, setting.test, every_pixel, b.ensemble, seed, work
        )[DIFFUSION]
        epochs = math.ceil(b.ensemble.max_epochs * full["train_pixels"] / b.pixels.max_pixels)
        matched = fit_diffusion_features(
            setting,
            diffusion_run,
            features,
            labelled,
            setting.test,
            b.pixels,
            dataclasses.replace(b.ensemble, max_epochs=epochs),
            seed,
            work,
        )[DIFFUSION]
        grid = next(r for r in bounded_rows if r["seed"] == seed and r["labels"] == n)
        rows.append(
            {
                "dataset": setting.name,
                "seed": seed,
                "labels": n,
                "every-pixel mIoU": full["miou"],
                "bounded mIoU (same step budget)": matched["miou"],
                "difference (points)": 100 * (matched["miou"] - full["miou"]),
                "bounded mIoU (main grid)": grid["miou"],
                "every-pixel train pixels": full["train_pixels"],
                "bounded train pixels": matched["train_pixels"],
                "every-pixel steps": full["steps"],
                "bounded steps (same budget / grid)": f"{matched['steps']} / {grid['steps']}",
                "every-pixel fit peak MB": full["fit_peak_mb"],
                "bounded fit peak MB": matched["fit_peak_mb"],
                "every-pixel feature MB": full["store_mb"],
                "bounded feature MB": matched["store_mb"],
                "every-pixel fit s": full["fit_s"],
                "bounded fit s": matched["fit_s"],
            }
        )
    return rows


# -- report ----------------------------------------------------------------------------------------------------
def summarise(rows: list[dict], class_names: dict[str, list[str]]) -> tuple[str, list[dict]]:
    table = []
    keys = sorted(
        {(r["dataset"], r["labels"], r["method"]) for r in rows},
        key=lambda k: (list(class_names).index(k[0]), k[1], k[2]),
    )
    for dataset, labels, method in keys:
        group = [r for r in rows if (r["dataset"], r["labels"], r["method"]) == (dataset, labels, method)]
        line = {
            "dataset": dataset,
            "labels": labels,
            "method": method,
            "seeds": len(group),
            "mIoU": mean_std([r["miou"] for r in group]),
            "fg mIoU": mean_std([r["fg_miou"] for r in group]),
            "mean Dice": mean_std([r["mean_dice"] for r in group]),
            "fg fraction (true)": f"{statistics.mean(r['fg_fraction'] for r in group):.3f} "
            f"({group[0]['true_fg_fraction']:.3f})",
        }
        for k, name in enumerate(class_names[dataset]):
            line[f"IoU/Dice {name}"] = (
                f"{mean_std([r['iou'][k] for r in group])} / {mean_std([r['dice'][k] for r in group])}"
            )
        line.update(
            {
                "steps": round(statistics.mean(r["steps"] for r in group)),
                "stopped early": f"{sum(r['stopped_early'] for r in group)}/{len(group)}",
                "fit s": statistics.mean(r["fit_s"] for r in group),
                "fit peak MB (+added)": f"{max(r['fit_peak_mb'] for r in group):.0f} "
                f"(+{max(r['fit_added_mb'] for r in group):.0f})",
                "predict s": statistics.mean(r["predict_s"] for r in group),
                "predict peak MB (+added)": f"{max(r['predict_peak_mb'] for r in group):.0f} "
                f"(+{max(r['predict_added_mb'] for r in group):.0f})",
            }
        )
        table.append(line)
    parts = []
    for dataset in class_names:
        lines = [t for t in table if t["dataset"] == dataset]
        if lines:
            columns = list(lines[0])[1:]
            parts.append(f"### {dataset}\n\n" + markdown_table(lines, columns))
    return "\n\n".join(parts), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, one label count and seed (smoke test)")
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--labels", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--diffusion-steps",
        type=int,
        default=800,
        help="optimiser steps of each dataset's diffusion model (batches of 8)",
    )
    parser.add_argument(
        "--unet-steps",
        type=int,
        default=800,
        help="at most this many steps per U-Net baseline fit (it stops early before that)",
    )
    parser.add_argument(
        "--fidelity-seeds",
        type=int,
        default=3,
        help="seeds (the first N of --seeds) of the bounded vs every-pixel comparison on ACDC",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep diffusion models here (reused on rerun)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other datasets' results from the existing results file (run only --datasets anew)",
    )
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    labels, seeds = ([5], [0]) if args.quick else (args.labels, args.seeds)
    b = budget(args.quick, args.diffusion_steps, args.unet_steps)
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-segmentation-"))
    started = time.monotonic()
    rows, diffusion_info, sweeps, class_names, descriptions, fidelity, memory = [], {}, {}, {}, {}, [], None
    stages: dict[str, dict[str, float]] = {}
    provenance: list[str] = []  # where --update kept datasets from

    cpu = [time.process_time()]

    def stage(name: str, what: str, since: float) -> float:
        now, cpu_now = time.monotonic(), time.process_time()
        stages.setdefault(name, {})[what] = now - since
        print(
            f"[{(now - started) / 60:5.1f} min] {name}: {what} took {now - since:.0f} s (CPU {cpu_now - cpu[0]:.0f} s)",
            flush=True,
        )
        cpu[0] = cpu_now
        return now

    def report(complete: bool) -> None:
        """Write the results file from what has run so far (after every dataset, so that a run cut short
        still leaves its finished datasets)."""
        body, table = summarise(rows, class_names)
        description_lines = "\n".join(f"- **{n}**: {d}" for n, d in descriptions.items())
        diffusion_lines = "\n".join(
            f"- **{n}**: {i['images']} unlabelled images, trained at {i['train_size']} px for {i['steps']} steps "
            f"({i['minutes']:.1f} min), final loss {i['final_loss']:.4f}"
            for n, i in diffusion_info.items()
        )
        sweep_lines = "\n\n".join(
            f"**{n}** ({s['labelled']} labelled / {s['validation']} validation images, {s['seconds'] / 60:.1f} min): "
            f"recommended blocks {s['recommended']['blocks']}, timesteps {s['recommended']['timesteps']}; "
            f"best cell mIoU {np.nanmax(np.array(s['miou'])):.3f}.\n\n![{n} sweep]({s['figure']})"
            for n, s in sweeps.items()
        )
        text = (
            ""
            if complete
            else f"**Partial result**: the run has finished {len(descriptions)} of "
            f"{len(args.datasets)} datasets so far (this file is rewritten after each dataset).\n\n"
        )
        text += "".join(provenance)
        text += (
            f"Methods: **diffusion features + MLP ensemble** = meddiff `segment` with the sweep's recommended "
            f"blocks and timesteps, {b.ensemble.members} MLPs (hidden {b.ensemble.hidden}), "
            f"{b.pixels.max_pixels} class-balanced training pixels in fp16 on disk; **{CORRECTED}** = the same "
            f"fit predicting with the prior correction (`pixels.prior_correction: prior`: logits shifted by "
            f"log(labelled pixels' class frequency / balanced sample's), Menon et al. 2021); **{FITTED}** = the "
            f"same fit with that shift moved per class to the best mIoU of its held-out labelled pixels "
            f"(`prior_correction: fitted`); **{ISLANDS}** = the prior-corrected prediction with `segment "
            f"predict`'s island filter at its default size (regions of one class under `min_island` pixels "
            f"refilled from their surroundings; the size is the largest of {list(CANDIDATE_SIZES)} that changes "
            f"at most 0.2% of the labelled masks' own pixels, else off); **U-Net from scratch** = "
            f"`segmenter` (base {b.segnet.base_channels}, depth {b.segnet.depth}), "
            f"{_unet_budget(b.segmenter_train)} per fit. Both use the data's flips and stop early on the "
            f"same held-out {b.pixels.val_fraction:.0%} of the labelled pixels. Scores: mean ± sample std over "
            f"seeds {seeds}; fit/predict peak MB = peak resident memory of the benchmark process during that "
            f"phase (VmHWM reset before it; includes the loaded datasets and models), +added = above the "
            f"resident memory at the phase's start. 'fg fraction (true)': the share of test pixels predicted as any "
            f"class but the first (background, or cell interior on isbi), mean over seeds, and the true share; "
            f"'stopped early': fits that ended by early stopping, not at their cap.\n\n"
            f"## Datasets and splits\n\n{description_lines}\n\n## Diffusion models\n\n{diffusion_lines}\n\n"
            f"## Block x timestep sweeps\n\n{sweep_lines}\n\n## Results\n\n{body}\n"
        )
        islands = island_table(rows)
        if islands:
            text += (
                "\n## Island filter\n\nmIoU of the prior-corrected prediction (test images at the working size) "
                "with the island filter off, at each candidate size (pixels) and at the default size each fit's "
                "labelled masks chose, mean over seeds.\n\n" + islands + "\n"
            )
        if fidelity:
            gap = statistics.mean(r["difference (points)"] for r in fidelity)
            verdict = "met" if abs(gap) <= 1 else "NOT met"
            text += (
                f"\n## Bounded memory vs every pixel (ACDC, {fidelity[0]['labels']} labels)\n\nThe same features "
                f"and ensemble trained on every labelled pixel held in float32 RAM (the reference implementation's "
                f"way) vs the bounded path ({b.pixels.max_pixels} class-balanced pixels stored in fp16 on disk), "
                f"given the same budget of optimiser steps (the bounded path's epochs scaled up by the pixel "
                f"ratio; both stop early on the same held-out pixels). Mean difference bounded - every pixel: "
                f"{gap:+.2f} mIoU points over {len(fidelity)} seed(s) (target: within 1 point; {verdict}); "
                f"for scale, every-pixel mIoU over these seeds: {mean_std([r['every-pixel mIoU'] for r in fidelity])}. "
                f"The balanced sample is trained on as drawn (`PixelConfig.reweight` off). "
                f'"main grid" is the bounded fit of the results table, which has at most '
                f"{b.ensemble.max_epochs} passes over its {b.pixels.max_pixels} pixels.\n\n"
                + markdown_table(fidelity, list(fidelity[0]))
                + "\n"
            )
        if memory:
            m = memory
            target = "met" if max(m["fit_peak_mb"], m["predict_peak_mb"]) <= 4096 else "NOT met"
            text += (
                f"\n## Memory at {m['labelled']} labelled images of {m['size']} px\n\nWhat a user runs, each command "
                f"in its own process (peak RSS = the child's VmHWM, imports included): `meddiff segment fit` on a "
                f"folder of {m['labelled']} labelled ACDC slices (padded, {m['size']} px) with every decoder block "
                f"at {len(b.memory_timesteps)} timesteps {b.memory_timesteps} = {m['dims']} feature dimensions per "
                f"pixel and the bounded path ({m['train_pixels']} class-balanced training pixels, a "
                f"{m['store_mb']:.0f} MB fp16 feature file on disk, {b.memory_ensemble.members} MLPs, at most "
                f"{b.memory_ensemble.max_epochs} pass(es) over the pixels to fit the time budget): "
                f"{m['fit_s'] / 60:.1f} min, peak RSS {m['fit_peak_mb']:.0f} MB (4 GiB target: {target}). "
                f"`meddiff segment predict` on {m['test']} test slices that show as many classes as any test "
                f"slice (all four in the full run; tile by tile, masks at native resolution): "
                f"{m['predict_s']:.0f} s, peak RSS {m['predict_peak_mb']:.0f} MB; mIoU {m['miou']:.3f} (foreground "
                f"{m['fg_miou']:.3f}) at native resolution. Holding every pixel's features of these images in "
                f"float32, as the reference implementation does, would take {m['all_pixels_float32_gb']:.1f} GB.\n"
            )
        if stages:
            names = list(dict.fromkeys(k for v in stages.values() for k in v))
            stage_rows = [{"dataset": n, **{k: v.get(k, "") for k in names}} for n, v in stages.items()]
            text += "\n## Wall time per stage (s)\n\n" + markdown_table(stage_rows, ["dataset", *names]) + "\n"
        if not args.quick:
            text += "\n## Scope: what was cut to fit the time budget\n\n" + scope_note(b, labels) + "\n"
        text += "\n## Closing note\n\n" + closing_note(table, memory, labels) + "\n"
        write_result(
            "segmentation_quick" if args.quick else "segmentation",
            "Few-label segmentation: diffusion features + MLP ensemble vs U-Net from scratch",
            data=", ".join(args.datasets) + " (../shared/data and nilearn's MNI152)",
            seed=str(seeds),
            wall_seconds=time.monotonic() - started,
            body=text,
            numbers={
                "rows": rows,
                "summary": table,
                "sweeps": sweeps,
                "diffusion": diffusion_info,
                "fidelity": fidelity,
                "memory": memory,
                "stage_seconds": stages,
            },
        )

    if args.update:
        kept = _kept_results(args.quick, args.datasets)
        rows, diffusion_info, sweeps, stages = kept["rows"], kept["diffusion"], kept["sweeps"], kept["stage_seconds"]
        fidelity, memory = kept["fidelity"], kept["memory"]
        class_names, descriptions = kept["class_names"], kept["descriptions"]
        provenance.append(
            f"**Kept from the previous results file** (`--update`): {', '.join(class_names)}, measured by "
            f"`{kept['command']}` ({kept['wall_seconds'] / 60:.1f} min); the header's command and wall time are "
            f"this run's.\n\n"
        )
        args.datasets = [*class_names, *(n for n in args.datasets if n not in class_names)]

    for name in args.datasets:
        if name in class_names:
            continue  # kept from the results file (--update)
        mark = time.monotonic()
        setting = SETTINGS[name](args.quick)
        class_names[name], descriptions[name] = setting.pool.class_names, setting.description
        mark = stage(name, "load", mark)
        run, diffusion_info[name] = train_diffusion(setting, b, work)
        mark = stage(name, "diffusion", mark)
        sweeps[name] = run_sweep_for(setting, run, b, work, min(10, setting.max_labels))
        mark = stage(name, "sweep", mark)
        features = dataclasses.replace(FeatureConfig(), **sweeps[name]["recommended"])
        for n in labels:
            n = min(n, setting.max_labels)
            for seed in seeds:
                labelled = _subset(setting.pool, choose_labels(setting, n, seed))
                common = {"dataset": name, "labels": n, "seed": seed, "images": labelled.names}
                fits = fit_diffusion_features(
                    setting, run, features, labelled, setting.test, b.pixels, b.ensemble, seed, work
                )
                fits[UNET] = fit_unet(labelled, setting.test, b, seed, work)
                rows += [{**common, "method": method, **result} for method, result in fits.items()]
                print(
                    f"{name} {n} labels seed {seed}: "
                    + ", ".join(
                        f"{method} {r['miou']:.3f}, fg {r['fg_fraction']:.3f} (true {r['true_fg_fraction']:.3f}; "
                        f"fit {r['fit_s']:.0f} s, predict {r['predict_s']:.0f} s)"
                        for method, r in fits.items()
                    ),
                    flush=True,
                )
        mark = stage(name, "fits", mark)
        if name == "acdc":
            bounded = [r for r in rows if r["dataset"] == name and r["method"] == DIFFUSION]
            fidelity = fidelity_experiment(setting, run, features, b, seeds[: args.fidelity_seeds], work, bounded)
            mark = stage(name, "bounded vs every pixel", mark)
            memory = memory_experiment(setting, run, b, work)
            stage(name, f"memory at {b.memory_size} px", mark)
        report(complete=name == args.datasets[-1])

    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _kept_results(quick: bool, rerun: list[str]) -> dict:
    """The existing results file's rows and sections of every dataset not in ``rerun`` (``--update``); their
    class names and descriptions are read from the datasets themselves."""
    numbers = json.loads((RESULTS / f"segmentation{'_quick' if quick else ''}.json").read_text())
    kept = [n for n in dict.fromkeys(r["dataset"] for r in numbers["rows"]) if n not in rerun]
    settings = {n: SETTINGS[n](quick) for n in kept}
    return {
        "rows": [r for r in numbers["rows"] if r["dataset"] in kept],
        **{
            key: {n: v for n, v in numbers[key].items() if n in kept}
            for key in ("diffusion", "sweeps", "stage_seconds")
        },
        "fidelity": [] if "acdc" in rerun else numbers["fidelity"],
        "memory": None if "acdc" in rerun else numbers["memory"],
        "class_names": {n: s.pool.class_names for n, s in settings.items()},
        "descriptions": {n: s.description for n, s in settings.items()},
        "command": numbers["command"],
        "wall_seconds": numbers["wall_seconds"],
    }


def _unet_budget(train: TrainConfig) -> str:
    return f"at most {train.steps} steps (early stopping: every {train.eval_every} steps, patience {train.patience})"


def scope_note(b: Budget, labels: list[int]) -> str:
    """What this run leaves out of issue 5's evaluation, and why (read from the budget actually used)."""
    dropped = [n for n in (5, 10, 20) if n not in labels]
    return "\n".join(
        ([f"- Label counts {dropped} were left out of this run (it had to fit a shorter slot)."] if dropped else [])
        + [
            f"- The whole run is sized for about an hour on one CPU core, so every model is small and briefly "
            f"trained: each dataset's diffusion model trains {b.diffusion_steps} steps of 8 images (a "
            f"{b.unet.base_channels}-base UNet, mults {b.unet.channel_mults}, no attention), far below the days of "
            f"GPU training behind Baranchuk et al.'s models; diffusion features from a better-trained model would "
            f"likely score higher.",
            "- Images are 64 px (ACDC padded to a square, brain, cataract) and 128 px for ISBI (its membranes are "
            "only a few pixels wide even there); Baranchuk et al. work at 256 px. Only the memory experiment runs at "
            "256 px.",
            f"- Pixel classifier: {b.pixels.max_pixels} class-balanced training pixels per fit (the bounded path), "
            f"at most {b.ensemble.max_epochs} passes, held-out loss every {b.ensemble.eval_every} steps, patience "
            f"{b.ensemble.patience}; the sweep uses {b.sweep.members}-member ensembles on {b.sweep.max_pixels} pixels "
            f"(batches of {b.sweep_ensemble.batch_size}, at most {b.sweep_ensemble.max_epochs} passes) "
            f"and keeps the {b.sweep.top_blocks} best blocks x {b.sweep.top_timesteps} best timesteps.",
            f"- U-Net baseline: base {b.segnet.base_channels}, depth {b.segnet.depth}, "
            f'{_unet_budget(b.segmenter_train)}; the "steps" column is the mean number it ran (the MLP '
            "ensemble's optimiser steps for the other method).",
            "- ACDC tests on every 5th slice of the 20 test patients (sweep: every 10th validation slice); "
            "cataract has 17 labelled pool frames, so its "
            "largest label count is 17, not 20.",
            f"- Memory experiment: {b.memory_pixels.max_pixels} training pixels and at most "
            f"{b.memory_ensemble.max_epochs} pass(es) (to keep its 8,000-dim fit to minutes), prediction on "
            f"{b.memory_test} test slices; its mIoU is a by-product, not a tuned result.",
        ]
    )


def island_table(rows: list[dict]) -> str:
    """mIoU of the prior-corrected prediction without and with the island filter at each size, per dataset
    and label count (mean over seeds)."""
    lines = []
    groups = dict.fromkeys((r["dataset"], r["labels"]) for r in rows if r["method"] == ISLANDS)
    for dataset, labels in groups:
        group = [r for r in rows if (r["dataset"], r["labels"], r["method"]) == (dataset, labels, ISLANDS)]
        plain = [r["miou"] for r in rows if (r["dataset"], r["labels"], r["method"]) == (dataset, labels, CORRECTED)]
        line = {"dataset": dataset, "labels": labels, "off": statistics.mean(plain)}
        for size in CANDIDATE_SIZES:
            line[f"{size} px"] = statistics.mean(r["island_miou"][str(size)] for r in group)
        line["default: sizes chosen"] = ", ".join(str(r["min_island"]) for r in group)
        line["default"] = statistics.mean(r["miou"] for r in group)
        line["default - off, points"] = 100 * (line["default"] - line["off"])
        lines.append(line)
    return markdown_table(lines, list(lines[0])) if lines else ""


def closing_note(table: list[dict], memory: dict | None, labels: list[int]) -> str:
    lines = []
    for dataset in dict.fromkeys(t["dataset"] for t in table):
        top = max(t["labels"] for t in table if t["dataset"] == dataset)
        pair = {t["method"]: t for t in table if t["dataset"] == dataset and t["labels"] == top}
        base = pair.get(UNET)
        for method in (DIFFUSION, CORRECTED, FITTED, ISLANDS):
            ours = pair.get(method)
            if ours and base:
                lines.append(
                    f"- {dataset}, {top} labels: {method} mIoU {ours['mIoU']} vs U-Net baseline {base['mIoU']} "
                    f"(foreground mIoU {ours['fg mIoU']} vs {base['fg mIoU']}; foreground fraction "
                    f"{ours['fg fraction (true)']} vs {base['fg fraction (true)']})"
                )
        by_labels = {
            method: [t["mIoU"] for t in table if t["dataset"] == dataset and t["method"] == method]
            for method in (DIFFUSION, CORRECTED, FITTED, ISLANDS, UNET)
        }
        lines.append(
            f"- {dataset}, mIoU by label count {sorted({t['labels'] for t in table if t['dataset'] == dataset})}: "
            + "; ".join(f"{m} {', '.join(v.split(' ')[0] for v in values)}" for m, values in by_labels.items())
        )
    if memory:
        lines.append(
            f"- peak resident memory fitting {memory['labelled']} labelled {memory['size']}-px images with "
            f"{memory['dims']}-dim features: {memory['fit_peak_mb'] / 1024:.2f} GiB (prediction "
            f"{memory['predict_peak_mb'] / 1024:.2f} GiB)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
