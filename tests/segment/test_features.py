"""Diffusion features: dimensions for a block/timestep choice, bilinear upsampling read at any pixels,
one fixed noise tensor for every image."""

import pytest
import torch
import torch.nn.functional as F

from meddiff.segment.features import FeatureConfig, FeatureExtractor


def test_feature_dimensions_and_map_shapes_follow_the_block_and_timestep_choice(tiny_unet, diffusion):
    blocks, timesteps = [0, 4, 8], [10, 250]
    extractor = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=blocks, timesteps=timesteps))
    info = tiny_unet.decoder_block_info()  # [(channels, downsampling)] bottom block first
    assert extractor.dims == sum(info[b][0] for b in blocks) * len(timesteps) == (16 + 16 + 8) * 2

    maps = extractor.maps(torch.rand(3, 1, 24, 20) * 2 - 1)
    assert len(maps.maps) == len(blocks) * len(timesteps)
    for feature_map, (b, _) in zip(maps.maps, [(b, t) for t in timesteps for b in blocks], strict=True):
        channels, factor = info[b]
        assert feature_map.shape == (3, channels, 24 // factor, 20 // factor)
    assert maps.at(2, torch.tensor([0, 23, 5]), torch.tensor([0, 19, 7])).shape == (3, extractor.dims)
    assert maps.rows(0, 4, 7).shape == (3 * 20, extractor.dims)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_features_at_pixels_are_the_bilinearly_upsampled_maps(tiny_unet, diffusion, scale):
    extractor = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[1, 5, 7], timesteps=[100], scale=scale))
    maps = extractor.maps(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert maps.input_size == (int(32 * scale),) * 2
    dense = torch.cat([F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False) for m in maps.maps], 1)
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    at_every_pixel = maps.at(1, ys.flatten(), xs.flatten())
    torch.testing.assert_close(at_every_pixel, dense[1].flatten(1).T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps.rows(1, 10, 13), dense[1, :, 10:13].flatten(1).T, rtol=1e-5, atol=1e-5)


def test_one_fixed_noise_tensor_is_reused_for_every_image(tiny_unet, diffusion):
    extractor = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[8], timesteps=[500], noise_seed=3))
    image = torch.rand(1, 1, 16, 16) * 2 - 1
    together = extractor.maps(torch.cat([image, image, torch.zeros_like(image)]))
    alone = extractor.maps(image)
    assert torch.equal(together.maps[0][0], together.maps[0][1])  # same image, same noise, same features
    torch.testing.assert_close(together.maps[0][:1], alone.maps[0])
    other_seed = FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[8], timesteps=[500], noise_seed=4))
    assert not torch.allclose(other_seed.maps(image).maps[0], alone.maps[0])


def test_blocks_and_timesteps_outside_the_model_are_refused(tiny_unet, diffusion):
    with pytest.raises(ValueError, match="blocks \\[9\\]"):
        FeatureExtractor(tiny_unet, diffusion, FeatureConfig(blocks=[2, 9]))
    with pytest.raises(ValueError, match="timesteps \\[1000\\]"):
        FeatureExtractor(tiny_unet, diffusion, FeatureConfig(timesteps=[1000]))
    with pytest.raises(ValueError, match="repeat"):
        FeatureConfig(blocks=[1, 1])
