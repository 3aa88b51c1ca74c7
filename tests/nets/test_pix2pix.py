"""pix2pix networks: shapes at any size, the label map drives the image, dropout is the noise."""

import pytest
import torch

from meddiff.nets.pix2pix import Discriminator, Generator, Pix2PixNetConfig, num_parameters

SMALL = Pix2PixNetConfig(base_channels=8, max_channels=32, depth=4, disc_channels=8, norm_groups=4)


def _maps(batch, k, h, w, seed=0):
    ids = torch.randint(0, k, (batch, h, w), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.one_hot(ids, k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_generator_maps_a_label_map_to_an_image_of_its_size_in_range(size):
    generator = Generator(5, 3, SMALL).eval()
    out = generator(_maps(2, 5, *size))
    assert out.shape == (2, 3, *size) and out.abs().max() <= 1


def test_patch_discriminator_scores_overlapping_patches():
    discriminator = Discriminator(5, 1, SMALL)
    logits = discriminator(_maps(2, 5, 64, 64), torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 1, 6, 6)  # 3 strided layers + 2 stride-1 layers of 4x4: the 70x70 PatchGAN layout


def test_the_label_map_changes_the_image_and_dropout_adds_noise():
    generator = Generator(4, 1, SMALL).eval()
    a, b = _maps(1, 4, 32, 32, seed=1), _maps(1, 4, 32, 32, seed=2)
    with torch.no_grad():
        assert (generator(a) - generator(b)).abs().mean() > 1e-3
        generator.train()
        torch.manual_seed(0)
        first = generator(a)
        torch.manual_seed(1)
        assert not torch.allclose(first, generator(a))


def test_sizes_follow_the_config():
    small, wide = Generator(4, 1, SMALL), Generator(4, 1, Pix2PixNetConfig(base_channels=16, max_channels=64, depth=4))
    assert num_parameters(wide) > 3 * num_parameters(small)
    with pytest.raises(ValueError, match="dropout"):
        Pix2PixNetConfig(dropout=1.0)
