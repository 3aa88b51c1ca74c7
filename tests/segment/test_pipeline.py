"""Fitting and predicting end to end on in-memory images: the memory-bounded path (class-balanced sample
on disk in fp16, features batch by batch, prediction tile by tile) against the all-pixels path."""

import torch

from meddiff.data.samples import brain_mri
from meddiff.segment.ensemble import EnsembleConfig
from meddiff.segment.features import FeatureConfig, FeatureExtractor
from meddiff.segment.pipeline import PixelClassifier, fit_classifier, flip_views
from meddiff.segment.pixels import PixelConfig

ENSEMBLE = EnsembleConfig(members=3, hidden=[16, 8], eval_every=20, patience=3, max_epochs=3, buffer_mb=1)


def _brain(size: int = 24):
    data = brain_mri(size)
    return data.images[20:110:30], data.masks[20:110:30], data.images[35:110:30]


def _fit(extractor, images, masks, pixels, scratch):
    outcome = fit_classifier(extractor, images, masks, 4, pixels, ENSEMBLE, seed=0, scratch=scratch)
    return PixelClassifier(extractor, outcome.ensemble), outcome


def test_memory_bounded_path_predicts_what_the_all_pixels_path_predicts(tiny_unet, diffusion, tmp_path):
    images, masks, test_images = _brain()
    every_pixel = int(masks.numel())
    # Batches of 2 images on both paths: the UNet's float32 results differ by ~1e-6 between batch sizes
    # (see test_features), enough to flip an fp16 rounding and so a training trajectory.
    extractor = FeatureExtractor(
        tiny_unet, diffusion, FeatureConfig(blocks=[2, 5, 8], timesteps=[50, 200], batch_size=2)
    )
    disk, outcome = _fit(extractor, images, masks, PixelConfig(max_pixels=every_pixel, storage="disk"), tmp_path)
    ram, _ = _fit(extractor, images, masks, PixelConfig(max_pixels=None, storage="memory"), None)
    assert outcome.store_bytes == (outcome.report.train_pixels + outcome.report.val_pixels) * extractor.dims * 2
    assert not any(tmp_path.iterdir())  # the feature file is scratch space
    tiled = disk.predict(test_images, tile_mb=4 * 24 * extractor.dims * 4 / 2**20)  # 4 rows at a time
    whole = ram.predict(test_images)
    assert torch.equal(tiled.labels, whole.labels)
    torch.testing.assert_close(tiled.entropy, whole.entropy)


def test_float16_storage_changes_almost_no_prediction(tiny_unet, diffusion):
    images, masks, test_images = _brain()
    extractor = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[2, 5, 8], timesteps=[50, 200]))
    half, _ = _fit(extractor, images, masks, PixelConfig(max_pixels=None, storage="memory", fp16=True), None)
    full, _ = _fit(extractor, images, masks, PixelConfig(max_pixels=None, storage="memory", fp16=False), None)
    agreement = (half.predict(test_images).labels == full.predict(test_images).labels).float().mean()
    assert agreement > 0.97


def test_flip_views_append_mirror_images_and_keep_held_out_pixels_aligned():
    images = torch.arange(2 * 3 * 4, dtype=torch.float).view(2, 1, 3, 4)
    masks = images[:, 0].long()
    held = masks % 5 == 0
    out_images, out_masks, out_held = flip_views(images, masks, held, hflip=True, vflip=True)
    assert out_images.shape == (6, 1, 3, 4)
    assert torch.equal(out_images[2:4], images.flip(-1)) and torch.equal(out_images[4:], images.flip(-2))
    assert torch.equal(out_held, out_masks % 5 == 0)
    assert len(flip_views(images, masks, held, False, False)[0]) == 2
