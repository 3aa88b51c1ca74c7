"""Few-label segmentation end to end on in-memory labelled images: sample pixels, extract their features
batch by batch into a pixel store, train the MLP ensemble, predict tile by tile.

Memory while fitting: the labelled images and masks, one batch of low-resolution decoder maps, the
pixel store (on disk by default) and one shuffle buffer; never all pixel features of all images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from meddiff.data.mirror import NO_MIRROR, Mirror, flip_mask
from meddiff.devices import model_device
from meddiff.segment.calibrate import fit_bias, held_out_logits, prior_bias
from meddiff.segment.ensemble import EnsembleConfig, MLPEnsemble, TrainReport, Vote, predict_maps, train_ensemble
from meddiff.segment.features import FeatureExtractor
from meddiff.segment.pixels import PixelConfig, PixelSample, PixelStore, balanced_sample, held_out_pixels


def flip_views(
    images: torch.Tensor,
    masks: torch.Tensor,
    held_out: torch.Tensor,
    hflip: bool,
    vflip: bool,
    mirror: Mirror = NO_MIRROR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The labelled images plus their left-right and/or top-bottom mirror images (the augmentations the
    data config asks for, made once: features of a flipped image are not the flipped features); the masks'
    mirrored classes swap (``flip_mask``). The held-out mask is flipped along, so a held-out pixel stays held
    out in every view."""
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    return (
        torch.cat([images, *(images.flip(d) for d in dims)]),
        torch.cat([masks, *(flip_mask(masks, d, mirror) for d in dims)]),
        torch.cat([held_out, *(held_out.flip(d) for d in dims)]),
    )


def fill_store(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    samples: list[PixelSample],
    store: PixelStore,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the features of every ``samples[k]`` pixel into ``store``, sample after sample (rows of
    sample k follow those of sample k-1), with one UNet pass per timestep per batch of images."""
    offsets, start = [], 0
    for sample in samples:
        image_rows = torch.bincount(sample.flat // (sample.shape[1] * sample.shape[2]), minlength=len(images))
        offsets.append(start + torch.cat([torch.zeros(1, dtype=torch.long), image_rows.cumsum(0)]))
        start += len(sample)
    batch = extractor.config.batch_size
    for first in range(0, len(images), batch):
        maps = extractor.maps(images[first : first + batch])
        for i in range(maps.maps[0].shape[0]):
            for sample, offset in zip(samples, offsets, strict=True):
                ys, xs = sample.of_image(first + i)
                if len(ys):
                    store.write(int(offset[first + i]), maps.at(i, ys, xs))
        if progress is not None:
            progress(min(first + batch, len(images)))


@dataclass
class FitOutcome:
    """A trained ensemble, how its training went, and the pixels it saw."""

    ensemble: MLPEnsemble
    report: TrainReport
    class_weights: list[float]
    store_bytes: int
    prior_bias: torch.Tensor  # log(true prior / training prior), calibrate.prior_bias
    fitted_bias: torch.Tensor  # that shift fitted on the held-out pixels, calibrate.fit_bias
    logit_bias: torch.Tensor | None  # the one pixels.prior_correction applies at prediction (None: none)


def fit_classifier(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    pixels: PixelConfig,
    ensemble: EnsembleConfig,
    seed: int,
    scratch: Path | None = None,
    hflip: bool = False,
    vflip: bool = False,
    progress: Callable[[int, float, list[float]], None] | None = None,
    mirror: Mirror = NO_MIRROR,
) -> FitOutcome:
    """Train the pixel classifier on labelled working-size ``images`` ``[N, C, H, W]`` / ``masks``
    ``[N, H, W]``. ``pixels.storage == "disk"`` puts the feature rows in a file under ``scratch`` (deleted
    afterwards). The held-out pixels are ``held_out_pixels(masks, pixels.val_fraction, seed)``. The ensemble
    trains on the diffusion model's device. ``hflip`` / ``vflip`` add flipped views, swapping ``mirror``'s
    class pairs."""
    held = held_out_pixels(masks, pixels.val_fraction, seed)
    images, masks, held = flip_views(images, masks, held, hflip, vflip, mirror)
    generator = torch.Generator().manual_seed(seed)
    train = balanced_sample(masks, ~held, pixels.max_pixels, num_classes, generator)
    val = balanced_sample(masks, held, pixels.val_pixels, num_classes, generator)
    if not len(train) or not len(val):
        raise ValueError("no labelled pixels to train on or to hold out: are all masks 255 (ignore)?")
    if pixels.storage == "disk" and scratch is None:
        raise ValueError("disk storage needs a scratch folder")
    path = Path(scratch) / "pixel_features.bin" if pixels.storage == "disk" else None
    store = PixelStore(
        path, len(train) + len(val), extractor.dims, torch.cat([train.labels, val.labels]), fp16=pixels.fp16
    )
    try:
        fill_store(extractor, images, [train, val], store)
        weights = train.class_weights if pixels.reweight else None
        device = model_device(extractor.model)
        model, report = train_ensemble(store, len(train), num_classes, ensemble, seed, weights, progress, device)
        prior = prior_bias(train)
        fitted = fit_bias(held_out_logits(model, store, len(train)), val.labels, val.class_weights, prior)
    finally:
        store.close()
    chosen = {"none": None, "prior": prior, "fitted": fitted}[pixels.prior_correction]
    return FitOutcome(model, report, train.class_weights.tolist(), store.nbytes, prior, fitted, chosen)


@dataclass
class PixelClassifier:
    """A diffusion feature extractor with a trained ensemble on its features, and the per-class logit shift
    applied when predicting (None: the ensemble's own, class-balanced prior)."""

    extractor: FeatureExtractor
    ensemble: MLPEnsemble
    logit_bias: torch.Tensor | None = None

    def predict(self, images: torch.Tensor, tile_mb: float = 64) -> Vote:
        """Vote, disagreement and entropy maps ``[N, H, W]`` for working-size images ``[N, C, H, W]``."""
        votes = []
        batch = self.extractor.config.batch_size
        for first in range(0, len(images), batch):
            maps = self.extractor.maps(images[first : first + batch])
            count = maps.maps[0].shape[0]
            votes += [predict_maps(self.ensemble, maps, i, tile_mb, self.logit_bias) for i in range(count)]
        return Vote(
            *(torch.stack([getattr(v, name).cpu() for v in votes]) for name in ("labels", "disagreement", "entropy"))
        )
