"""Few-label segmentation from a diffusion model's decoder features (``task: segment``).

``fit`` trains the MLP-ensemble pixel classifier on the features that an image-only ``generate`` run
(``joint_mask: false``, trained on the unlabelled images) computes for a few labelled images; ``predict``
writes masks, colour overlays and uncertainty maps for a folder of images of any size; ``sweep`` scores
every decoder block at every timestep on validation images and writes a heat-map and a table, from which
``features.blocks`` / ``features.timesteps`` are chosen.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rich.console import Console

from meddiff import __version__
from meddiff.checkpoint import load_checkpoint, save_checkpoint
from meddiff.config import from_dict, save_config
from meddiff.data.arrays import ArrayDataset, pad_to_square, resize_image, resize_mask
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.fit import Fit
from meddiff.data.folders import to_channels
from meddiff.data.imagefiles import read_image
from meddiff.data.validate import list_images
from meddiff.devices import model_device
from meddiff.diffusion.objective import Diffusion
from meddiff.errors import UserError
from meddiff.files import atomic_folder, atomic_write, check_new_folder, write_json
from meddiff.metrics.segmentation import SegmentationMeter
from meddiff.nets.unet import UNet
from meddiff.report.grids import overlay, save_png
from meddiff.report.plots import heatmap
from meddiff.rundir import RunDir, resolve_checkpoint
from meddiff.runlock import releases_run_lock
from meddiff.segment.calibrate import fit_bias, held_out_logits, prior_bias
from meddiff.segment.ensemble import EnsembleConfig, MLPEnsemble, Vote, train_ensemble, vote
from meddiff.segment.features import FeatureConfig, FeatureExtractor
from meddiff.segment.islands import fill_islands, label_min_island, scaled_min_size
from meddiff.segment.pipeline import PixelClassifier, fill_store, fit_classifier, flip_views
from meddiff.segment.pixels import PixelConfig, PixelSample, PixelStore, balanced_sample, held_out_pixels
from meddiff.tasks import generate
from meddiff.tasks.runs import RunHandle, run_config
from meddiff.tasks.segmenter import select_images
from meddiff.train.engine import TrainResult

TASK = "segment"
console = Console(stderr=True)


@dataclass
class SweepConfig:
    """``meddiff segment sweep``: every decoder block at every timestep, one small ensemble each.

    val_data:  labelled validation images (default: hold out ``val_share`` of the labelled images)
    blocks:    decoder blocks to score (default: all)
    members, max_pixels: ensemble size and training pixels of each (block, timestep) classifier
    top_blocks, top_timesteps: how many of the best rows / columns the recommendation keeps
    """

    val_data: DataConfig | None = None
    val_share: float = 0.25
    timesteps: list[int] = field(default_factory=lambda: [20, 50, 100, 150, 250, 500])
    blocks: list[int] | None = None
    members: int = 2
    max_pixels: int = 20_000
    top_blocks: int = 4
    top_timesteps: int = 3

    def __post_init__(self):
        if not 0 < self.val_share < 1:
            raise ValueError(f"val_share must be in (0, 1), got {self.val_share}")
        if min(self.members, self.max_pixels, self.top_blocks, self.top_timesteps) < 1:
            raise ValueError("members, max_pixels, top_blocks and top_timesteps must be >= 1")


@dataclass
class SegmentConfig:
    """``meddiff segment fit`` / ``sweep`` config (``task: segment``).

    diffusion: run folder (or checkpoint) of a ``generate`` run trained with ``joint_mask: false``
    data:      the labelled images (image + mask folder, CaDIS, NIfTI ...); its size is the working size
               and its flips are used as augmentations
    images:    names of the labelled images to use (default: every image of ``data``)
    seed:      held-out pixels, pixel sampling, ensemble initialisation and shuffling
    tile_mb:   features held at once when predicting (a band of rows at a time)
    min_island: predicted masks keep no region of one class smaller than this many pixels at the working
               size (scaled with an image's area); such specks take the class around them
               (``meddiff.segment.islands``); 0 turns the filter off; default: the size the labelled masks
               support (``islands.label_min_island``, chosen at fit time and stored in the run)
    """

    diffusion: Path | None = None
    data: DataConfig = field(default_factory=DataConfig)
    images: list[str] | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    tile_mb: float = 64
    min_island: int | None = None

    def __post_init__(self):
        if self.diffusion is None:
            raise ValueError("'diffusion' is required: the run folder of a generate run with joint_mask: false")
        if self.tile_mb <= 0:
            raise ValueError(f"tile_mb must be > 0, got {self.tile_mb}")
        if self.min_island is not None and self.min_island < 0:
            raise ValueError(f"min_island must be >= 0, got {self.min_island}")


# -- inputs ------------------------------------------------------------------------------------------------
def load_diffusion(path: Path, device: str | torch.device = "cpu") -> tuple[UNet, Diffusion, dict]:
    """The EMA UNet (on ``device``), diffusion process and stored config of an image-only ``generate`` run."""
    model, diffusion, codec, stored, checkpoint = generate.load(path, device)
    if codec.num_classes:
        raise UserError(
            f"{checkpoint}: this generator was trained with joint_mask: true (image + label "
            "channels); features need an image-only model: train one with joint_mask: false"
        )
    return model, diffusion, {**stored, "checkpoint": str(checkpoint.resolve())}


def make_extractor(model: UNet, diffusion: Diffusion, config: FeatureConfig) -> FeatureExtractor:
    try:
        return FeatureExtractor(model, diffusion, config)
    except ValueError as exc:
        raise UserError(f"'features': {exc}") from None


def labelled_dataset(
    data: DataConfig, images: list[str] | None, image_channels: int, where: str = "data"
) -> ArrayDataset:
    """The labelled images of ``data`` (restricted to ``images``), checked against the diffusion model."""
    dataset = select_images(build_dataset(data), images)
    if dataset.masks is None or dataset.num_classes < 2:
        raise UserError(f"'{where}' has no masks (or fewer than 2 classes); the classifier needs labelled images")
    if dataset.in_channels != image_channels:
        raise UserError(
            f"'{where}' images have {dataset.in_channels} channel(s) but the diffusion model was "
            f"trained on {image_channels}; set {where}.channels: {image_channels}"
        )
    return dataset


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: VmHWM where Linux has it (ru_maxrss would also
    count the memory of a large parent process that started this one), else ru_maxrss (kilobytes)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- fit -----------------------------------------------------------------------------------------------------
@releases_run_lock
def fit(config: SegmentConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the pixel classifier; writes config.yaml, the classifier's checkpoint (``checkpoints/step_N``,
    N the ensemble's training steps), logs/train.jsonl and metrics.json under ``run_dir``."""
    if resume:
        raise UserError("segment fit does not resume (it retrains in minutes); choose a new output folder")
    run = RunDir(run_dir)
    if run.list_checkpoints():
        raise UserError(f"{run.root}: already holds a trained classifier; choose another output folder")
    started = time.monotonic()
    model, diffusion, stored = load_diffusion(config.diffusion)
    dataset = labelled_dataset(config.data, config.images, stored["codec"]["image_channels"])
    extractor = make_extractor(model, diffusion, config.features)
    run.prepare(config, resume=False)
    run.start_log(0)

    def log(step: int, train_loss: float, val_losses: list[float]) -> None:
        record = {"step": step, "loss": train_loss, "val": float(np.mean(val_losses))}
        run.log(record)
        if progress:
            console.print(f"step {step}: training loss {train_loss:.4f}, held-out loss {record['val']:.4f}")

    if progress:
        console.print(f"{len(dataset)} labelled images, {extractor.dims} feature dimensions per pixel")
    outcome = fit_classifier(
        extractor,
        dataset.images,
        dataset.masks,
        dataset.num_classes,
        config.pixels,
        config.ensemble,
        config.seed,
        scratch=run.root / "scratch",
        hflip=dataset.hflip,
        vflip=dataset.vflip,
        progress=log,
        mirror=dataset.mirror,
    )
    if (run.root / "scratch").is_dir():
        (run.root / "scratch").rmdir()
    report = dataclasses.asdict(outcome.report)
    state = {
        **run_config(TASK, config),
        "diffusion_checkpoint": stored["checkpoint"],
        "dims": extractor.dims,
        "class_names": dataset.class_names,
        "image_channels": dataset.in_channels,
        "report": report,
        # log(true prior / training prior) added to the logits at prediction; None: no correction
        "logit_bias": outcome.logit_bias.tolist() if outcome.logit_bias is not None else None,
        "min_island": label_min_island(dataset.masks) if config.min_island is None else config.min_island,
    }
    seconds = time.monotonic() - started
    metrics = {
        "labelled_images": len(dataset),
        "feature_dims": extractor.dims,
        "class_names": dataset.class_names,
        "class_weights": outcome.class_weights,
        "logit_bias": state["logit_bias"],
        "min_island": state["min_island"],
        # both shifts, whichever pixels.prior_correction chose: how far the held-out pixels moved the prior's
        "prior_bias": outcome.prior_bias.tolist(),
        "fitted_bias": outcome.fitted_bias.tolist(),
        "feature_store_mb": outcome.store_bytes / 2**20,
        "fit_seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        **report,
    }
    run.write_metrics(metrics)
    # the checkpoint comes last: a folder holding one is complete, and a rerun refuses it
    checkpoint = save_checkpoint(
        run.checkpoint(outcome.report.steps),
        {"ensemble": outcome.ensemble.state_dict()},
        {"step": outcome.report.steps, "meddiff_version": __version__, "config": state},
    )
    return TrainResult(
        step=outcome.report.steps,
        seconds=seconds,
        stopped_early=outcome.report.stopped_early,
        checkpoint=checkpoint,
        best_step=max(outcome.report.best_step),
        best_score=float(np.mean(outcome.report.best_val_loss)),
    )


def load(run: Path, device: str | torch.device = "cpu") -> tuple[PixelClassifier, dict]:
    """A trained classifier (with its diffusion feature extractor, both on ``device``) and its stored state."""
    path = resolve_checkpoint(Path(run))
    groups, state = load_checkpoint(path)
    stored = state["config"]
    if stored.get("task") != TASK or "ensemble" not in groups:
        raise UserError(f"{path}: checkpoint of task '{stored.get('task')}', not '{TASK}'")
    config = from_dict(
        SegmentConfig, {k: v for k, v in stored.items() if k in {f.name for f in dataclasses.fields(SegmentConfig)}}
    )
    model, diffusion, _ = load_diffusion(Path(stored["diffusion_checkpoint"]), device)
    extractor = make_extractor(model, diffusion, config.features)
    if extractor.dims != stored["dims"]:
        raise UserError(
            f"{stored['diffusion_checkpoint']}: the diffusion model gives {extractor.dims} feature "
            f"dimensions, the classifier was trained on {stored['dims']}"
        )
    ensemble = MLPEnsemble(config.ensemble.members, stored["dims"], config.ensemble.hidden, len(stored["class_names"]))
    ensemble.load_state_dict(groups["ensemble"])
    device = model_device(model)
    bias = stored.get("logit_bias")  # absent from runs fitted before the prior correction existed
    bias = torch.tensor(bias, device=device) if bias is not None else None
    islands = stored.get("min_island", 0)  # runs fitted before the island filter predicted without it
    return PixelClassifier(extractor, ensemble.eval().to(device), bias), {
        **stored,
        "config": config,
        "min_island": islands,
    }


# -- predict on a folder ------------------------------------------------------------------------------------
def to_working(image: torch.Tensor, fit_: Fit) -> torch.Tensor:
    """A native ``[C, H, W]`` image in [0, 1] at the working scale of ``fit_`` (whole image, never cropped):
    resize -> size x size; pad -> padded square at size x size; crops -> shorter side at short_side."""
    if fit_.mode == "pad":
        image = pad_to_square(image, 0.0)
    if fit_.mode in ("resize", "pad"):
        shape = (fit_.size, fit_.size)
    else:  # the scale a crop mode reads images at (as data.fit does before cropping)
        scale = (fit_.short_side or fit_.size) / min(image.shape[-2:])
        shape = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
    return image if tuple(image.shape[-2:]) == shape else resize_image(image, shape).clamp(0, 1)


def to_native(values: torch.Tensor, native: tuple[int, int], fit_: Fit) -> torch.Tensor:
    """Undo ``to_working`` for a ``[h, w]`` map: class ids by nearest neighbour, floats bilinearly."""
    labels = not values.is_floating_point()
    side = max(native)
    shape = (side, side) if fit_.mode == "pad" else native
    if labels:
        values = resize_mask(values, shape)
    else:
        values = resize_image(values[None], shape)[0].clamp(0, 1)
    if fit_.mode == "pad":
        top, left = (side - native[0]) // 2, (side - native[1]) // 2
        values = values[top : top + native[0], left : left + native[1]]
    return values


def predict_folder(
    run: Path,
    images_dir: Path,
    out_dir: Path,
    tile_mb: float | None = None,
    progress: bool = True,
    device: str = "cpu",
    min_island: int | None = None,
) -> Path:
    """Segment every image in ``images_dir`` (any size) into ``out_dir``: masks/ (class ids), overlays/
    (colour overlays), uncertainty/ (entropy of the ensemble's mean prediction, 0-255), disagreement/
    (share of outvoted members, 0-255) and manifest.json. Every image is read and checked first.
    ``min_island``: the island filter's size (default: the run's, chosen at fit time; 0 = off)."""
    out_dir = Path(out_dir)
    classifier, stored = load(run, device)
    config: SegmentConfig = stored["config"]
    files = list_images(Path(images_dir))
    check_new_folder(out_dir)
    stems = [p.stem for p in files]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate is not None:
        raise UserError(f"{images_dir}: two images are named '{duplicate}' (different extensions); rename one")
    for path in files:  # check every file before writing anything
        read_image(path, config.data.intensity)
    fit_ = Fit(config.data.size, config.data.fit, config.data.short_side)
    channels, classes = stored["image_channels"], stored["class_names"]
    islands = stored["min_island"] if min_island is None else min_island
    with atomic_folder(out_dir) as tmp:
        folders = {name: tmp / name for name in ("masks", "overlays", "uncertainty", "disagreement")}
        for folder in folders.values():
            folder.mkdir()
        records = [
            _predict_file(
                classifier,
                path,
                folders,
                fit_,
                config.data.intensity,
                channels,
                classes,
                tile_mb or config.tile_mb,
                islands,
            )
            for path in files
        ]
        manifest = {
            "model": {
                "run": str(Path(run).resolve()),
                "task": TASK,
                "class_names": classes,
                "diffusion_checkpoint": stored["diffusion_checkpoint"],
            },
            "uncertainty": "entropy of the mean ensemble prediction / log(classes), x255",
            "disagreement": "share of ensemble members outvoted by the majority, x255",
            "min_island": islands,
            "files": records,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if progress:
        console.print(f"{len(files)} images: mean uncertainty {np.mean([r['mean_uncertainty'] for r in records]):.3f}")
    return out_dir


def _predict_file(
    classifier: PixelClassifier,
    path: Path,
    folders: dict[str, Path],
    fit_: Fit,
    intensity: str,
    channels: int,
    classes: list[str],
    tile_mb: float,
    min_island: int,
) -> dict:
    native = to_channels(torch.from_numpy(read_image(path, intensity)), channels)
    labels, disagreement, entropy = segment_native(classifier, native, fit_, tile_mb, min_island)
    name = f"{path.stem}.png"
    save_png(labels.numpy().astype(np.uint8), folders["masks"] / name)
    save_png(overlay(native * 2 - 1, labels, len(classes)), folders["overlays"] / name)
    save_png((entropy * 255).round().to(torch.uint8).numpy(), folders["uncertainty"] / name)
    save_png((disagreement * 255).round().to(torch.uint8).numpy(), folders["disagreement"] / name)
    fractions = torch.bincount(labels.flatten(), minlength=len(classes)).float() / labels.numel()
    return {
        "image": path.name,
        **{k: f"{k}/{name}" for k in folders},
        "mean_uncertainty": round(float(entropy.mean()), 4),
        "mean_disagreement": round(float(disagreement.mean()), 4),
        "class_fractions": [round(float(v), 4) for v in fractions],
    }


def segment_native(
    classifier: PixelClassifier, native: torch.Tensor, fit_: Fit, tile_mb: float, min_island: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, disagreement and entropy ``[H, W]`` for one ``[C, H, W]`` image in [0, 1] of any size,
    predicted at the working scale of ``fit_`` and brought back to the image's own size; the labels keep no
    region smaller than ``min_island`` pixels at the working size (``islands.fill_islands``)."""
    result = classifier.predict((to_working(native, fit_) * 2 - 1)[None], tile_mb)
    hw = tuple(native.shape[-2:])
    labels, disagreement, entropy = (
        to_native(getattr(result, k)[0], hw, fit_) for k in ("labels", "disagreement", "entropy")
    )
    return fill_islands(labels, scaled_min_size(min_island, fit_.size, hw)), disagreement, entropy


@dataclass(repr=False)
class PixelSegmenter(RunHandle):
    """A trained few-label segmenter (diffusion features + MLP ensemble): ``meddiff.load(run).segment(x)``."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = SegmentConfig
    classifier: PixelClassifier
    stored: dict
    path: Path

    def networks(self) -> list[torch.nn.Module]:
        return [self.classifier.extractor.model, self.classifier.ensemble]

    @property
    def config(self) -> SegmentConfig:
        return self.stored["config"]

    def segment(
        self, images: torch.Tensor | Sequence[torch.Tensor], tile_mb: float | None = None, min_island: int | None = None
    ) -> Vote:
        """Masks (int64), disagreement and entropy (0-1) for images ``[N, C, H, W]`` in [-1, 1], or a list of
        ``[C, H, W]`` images of different sizes; each output has its image's own size (a list when sizes
        differ, else a stacked ``[N, H, W]`` tensor). ``min_island``: the island filter's size (default:
        the run's; 0 = off)."""
        config = self.config
        fit_ = Fit(config.data.size, config.data.fit, config.data.short_side)
        channels = self.stored["image_channels"]
        islands = self.stored["min_island"] if min_island is None else min_island
        outputs = [
            segment_native(
                self.classifier,
                to_channels((x.float().cpu() + 1) / 2, channels),
                fit_,
                tile_mb or config.tile_mb,
                islands,
            )
            for x in images
        ]
        parts = list(zip(*outputs, strict=True))
        same = len({p.shape for p in parts[0]}) == 1
        return Vote(*(torch.stack(p) if same else list(p) for p in parts))


# -- sweep ---------------------------------------------------------------------------------------------------
class _ColumnSplit:
    """Writes each block's columns of a feature row to that block's own store."""

    def __init__(self, stores: list[PixelStore]):
        self.stores = stores
        self.bounds = np.cumsum([0] + [s.dims for s in stores])

    def write(self, start: int, features: torch.Tensor) -> None:
        for store, lo, hi in zip(self.stores, self.bounds[:-1], self.bounds[1:], strict=True):
            store.write(start, features[:, lo:hi])


def _sweep_split(
    config: SegmentConfig, dataset: ArrayDataset, image_channels: int
) -> tuple[ArrayDataset, ArrayDataset]:
    if config.sweep.val_data is not None:
        val = labelled_dataset(config.sweep.val_data, None, image_channels, where="sweep.val_data")
        if val.num_classes != dataset.num_classes:
            raise UserError(f"'sweep.val_data' has {val.num_classes} classes, 'data' has {dataset.num_classes}")
        return dataset, val
    if len(dataset) < 2:
        raise UserError("the sweep needs validation images: set sweep.val_data or label at least 2 images")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = min(len(dataset) - 1, max(1, round(len(dataset) * config.sweep.val_share)))
    names = [dataset.names[i] for i in order]
    return select_images(dataset, names[n_val:]), select_images(dataset, names[:n_val])


def sweep(config: SegmentConfig, out_dir: Path, progress: bool = True) -> Path:
    """Score each decoder block at each timestep (mIoU on validation images, one small ensemble per cell);
    writes figures/sweep.png (heat-map), sweep.md (table), sweep.json (scores and the recommended
    ``features.blocks`` / ``features.timesteps``) and config.yaml under ``out_dir``. Returns sweep.md."""
    out_dir = Path(out_dir)
    if (out_dir / "sweep.json").exists():
        raise UserError(f"{out_dir}: already holds a sweep; choose another output folder")
    model, diffusion, stored = load_diffusion(config.diffusion)
    image_channels = stored["codec"]["image_channels"]
    train_set, val_set = _sweep_split(
        config, labelled_dataset(config.data, config.images, image_channels), image_channels
    )
    return run_sweep(model, diffusion, config, train_set, val_set, out_dir, progress)


def _cell_bias(
    pixels: PixelConfig, ensemble: MLPEnsemble, store: PixelStore, train: PixelSample, val: PixelSample
) -> torch.Tensor | None:
    """The logit shift ``pixels.prior_correction`` gives a sweep cell's classifier (as ``fit_classifier``)."""
    if pixels.prior_correction == "none":
        return None
    prior = prior_bias(train)
    if pixels.prior_correction == "prior":
        return prior
    return fit_bias(held_out_logits(ensemble, store, len(train)), val.labels, val.class_weights, prior)


def run_sweep(
    model: UNet,
    diffusion: Diffusion,
    config: SegmentConfig,
    train_set: ArrayDataset,
    val_set: ArrayDataset,
    out_dir: Path,
    progress: bool = False,
) -> Path:
    """The sweep on in-memory labelled training and validation images (``sweep`` reads them from the
    config); ``config.data`` / ``images`` / ``diffusion`` are only recorded."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    s = config.sweep
    blocks = s.blocks if s.blocks is not None else list(range(model.num_decoder_blocks))
    for t in s.timesteps:
        make_extractor(model, diffusion, replace(config.features, blocks=blocks, timesteps=[t]))  # validates
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, RunDir(out_dir).config_file)

    num_classes = train_set.num_classes
    held = held_out_pixels(train_set.masks, config.pixels.val_fraction, config.seed)
    images, masks, held = flip_views(
        train_set.images, train_set.masks, held, train_set.hflip, train_set.vflip, train_set.mirror
    )
    generator = torch.Generator().manual_seed(config.seed)
    train = balanced_sample(masks, ~held, s.max_pixels, num_classes, generator)
    val = balanced_sample(masks, held, config.pixels.val_pixels, num_classes, generator)
    weights = train.class_weights if config.pixels.reweight else None
    ensemble_config = replace(config.ensemble, members=s.members)
    miou = np.full((len(blocks), len(s.timesteps)), np.nan)
    dice = np.full_like(miou, np.nan)
    for column, t in enumerate(s.timesteps):
        extractor = make_extractor(model, diffusion, replace(config.features, blocks=blocks, timesteps=[t]))
        labels = torch.cat([train.labels, val.labels])
        stores = [
            PixelStore(out_dir / "scratch" / f"block{b}.bin", len(labels), channels, labels, fp16=config.pixels.fp16)
            for b, channels in zip(blocks, extractor.block_channels, strict=True)
        ]
        classifiers, biases = [], []
        try:
            fill_store(extractor, images, [train, val], _ColumnSplit(stores))
            for store in stores:
                ensemble, _ = train_ensemble(store, len(train), num_classes, ensemble_config, config.seed, weights)
                classifiers.append(ensemble)
                biases.append(_cell_bias(config.pixels, ensemble, store, train, val))  # scored as predict would
        finally:
            for store in stores:
                store.close()
        meters = [SegmentationMeter(num_classes) for _ in blocks]
        bounds = np.cumsum([0, *extractor.block_channels])
        for first in range(0, len(val_set), config.features.batch_size):
            maps = extractor.maps(val_set.images[first : first + config.features.batch_size])
            height, width = maps.size
            rows = max(1, int(config.tile_mb * 2**20 // (4 * width * maps.dims)))
            for i in range(maps.maps[0].shape[0]):
                truth = val_set.masks[first + i].long()
                for top in range(0, height, rows):
                    features = maps.rows(i, top, min(top + rows, height))
                    target = truth[top : top + rows].reshape(-1)
                    with torch.no_grad():
                        cells = zip(meters, classifiers, biases, bounds[:-1], bounds[1:], strict=True)
                        for meter, ensemble, bias, lo, hi in cells:
                            meter.update(vote(ensemble(features[:, lo:hi]), bias).labels, target)
        for row, meter in enumerate(meters):
            scores = meter.compute()
            miou[row, column], dice[row, column] = scores.miou, scores.mean_dice
        if progress:
            console.print(
                f"t={t}: best block {blocks[int(np.nanargmax(miou[:, column]))]} "
                f"(mIoU {np.nanmax(miou[:, column]):.3f})"
            )
    if (out_dir / "scratch").is_dir():
        (out_dir / "scratch").rmdir()
    return _write_sweep(out_dir, model, blocks, s, miou, dice, len(train_set), len(val_set), time.monotonic() - started)


def recommend(
    miou: np.ndarray, blocks: list[int], timesteps: list[int], top_blocks: int, top_timesteps: int
) -> tuple[list[int], list[int]]:
    """The blocks with the best mean mIoU over timesteps and the timesteps with the best mean over blocks
    (each list sorted)."""
    block_order = np.argsort(-np.nanmean(miou, axis=1), kind="stable")[:top_blocks]
    step_order = np.argsort(-np.nanmean(miou, axis=0), kind="stable")[:top_timesteps]
    return sorted(blocks[i] for i in block_order), sorted(timesteps[j] for j in step_order)


def _write_sweep(
    out_dir: Path,
    model: UNet,
    blocks: list[int],
    s: SweepConfig,
    miou: np.ndarray,
    dice: np.ndarray,
    n_train: int,
    n_val: int,
    seconds: float,
) -> Path:
    info = model.decoder_block_info()
    labels = [f"block {b} ({info[b][0]} ch, 1/{info[b][1]})" for b in blocks]
    best_blocks, best_steps = recommend(miou, blocks, s.timesteps, s.top_blocks, s.top_timesteps)
    heatmap(
        miou,
        labels,
        s.timesteps,
        out_dir / "figures" / "sweep.png",
        xlabel="timestep t",
        ylabel="decoder block (channels, resolution)",
        colorbar_label="validation mIoU",
        title="Validation mIoU per decoder block and timestep",
        size=(max(6.5, 0.8 * len(s.timesteps) + 4.0), max(3.0, 0.45 * len(blocks) + 1.5)),
    )
    header = "| block | " + " | ".join(f"t={t}" for t in s.timesteps) + " | mean |"
    lines = [header, "|" + "---|" * (len(s.timesteps) + 2)]
    for label, row in zip(labels, miou, strict=True):
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {np.nanmean(row):.3f} |")
    lines.append("| mean | " + " | ".join(f"{v:.3f}" for v in np.nanmean(miou, axis=0)) + " | |")
    body = (
        f"# Decoder block x timestep sweep\n\nValidation mIoU (all classes) of a {s.members}-member ensemble "
        f"per cell, trained on {s.max_pixels} class-balanced pixels of {n_train} labelled images, scored on "
        f"{n_val} validation images; {seconds / 60:.1f} min.\n\n"
        + "\n".join(lines)
        + f"\n\nRecommended: `features.blocks: {best_blocks}`, `features.timesteps: {best_steps}` (the "
        f"{s.top_blocks} best blocks by mean over timesteps, the {s.top_timesteps} best timesteps by mean "
        "over blocks).\n\n![sweep](figures/sweep.png)\n"
    )
    atomic_write(out_dir / "sweep.md", body.encode())
    result = {
        "blocks": blocks,
        "block_info": [list(info[b]) for b in blocks],
        "timesteps": s.timesteps,
        "miou": miou.tolist(),
        "mean_dice": dice.tolist(),
        "train_images": n_train,
        "val_images": n_val,
        "seconds": seconds,
        "recommended": {"blocks": best_blocks, "timesteps": best_steps},
    }
    write_json(out_dir / "sweep.json", result)
    return out_dir / "sweep.md"
