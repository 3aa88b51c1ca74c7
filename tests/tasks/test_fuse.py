"""The fuse task: colour handling and sizes of fused outputs, the training loss, config checks."""

import numpy as np
import pytest
import torch

from meddiff.config import from_dict
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.fusion.colour import chroma, luma
from meddiff.nets.restormer import FusionDenoiser, FusionNetConfig
from meddiff.tasks import fuse


def _pet_like(h, w):
    """A smooth pseudo-colour image in [-1, 1] with moderate saturation (inside the RGB gamut)."""
    y = torch.linspace(-0.6, 0.6, w).expand(h, w)
    return torch.stack([y + 0.25, y - 0.1, y - 0.15])[None]


def test_rule_fusion_keeps_odd_sizes_and_puts_the_colour_back():
    mri = torch.rand(1, 1, 250, 301) - 1  # dark enough that the fused colours stay inside the RGB gamut
    pet = _pet_like(250, 301)
    image, levels = fuse.fuse_image(fuse.rule_fuser("max"), mri, pet)
    assert image.shape == (1, 3, 250, 301) and levels.shape == (250, 301) and levels.dtype == np.uint8
    expected = torch.maximum(luma(mri), luma(pet))[0, 0]
    np.testing.assert_array_equal(levels, ((expected.double() + 1) * 127.5).round().clamp(0, 255).byte().numpy())
    torch.testing.assert_close(chroma(image), chroma(pet), atol=1e-5, rtol=0)  # the PET's colour is put back


def test_grey_pairs_stay_grey_and_the_array_is_ready_to_save():
    a, b = torch.rand(1, 1, 17, 23) * 2 - 1, torch.rand(1, 1, 17, 23) * 2 - 1
    array, levels = fuse.fuse_pair(fuse.rule_fuser("average"), a, b)
    assert array.shape == (17, 23) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, levels)
    colour, _ = fuse.fuse_pair(fuse.rule_fuser("average"), a, _pet_like(17, 23))
    assert colour.shape == (17, 23, 3)


def test_unknown_rule_or_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither a fusion rule"):
        fuse.load_fuser("median")
    with pytest.raises(UserError, match="neither a fusion rule"):
        fuse.load_fuser(tmp_path / "no_run")


def _tiny_net():
    return FusionDenoiser(FusionNetConfig(channels=[4, 8, 8], heads=[2, 2], blocks=[1, 1], emb_dim=8))


@pytest.mark.parametrize("prediction", ["sample", "v_prediction", "epsilon"])
def test_training_loss_is_finite_and_reaches_every_weight(prediction):
    torch.manual_seed(0)
    net = _tiny_net()
    diffusion = Diffusion(from_dict(NoiseConfig, {"prediction_type": prediction}))
    batch = {"image": torch.rand(2, 3, 20, 20) * 2 - 1}
    loss = fuse.fusion_loss(net, batch, torch.Generator().manual_seed(0), diffusion, fuse.FidelityConfig())
    assert torch.isfinite(loss)
    loss.backward()
    assert net.out[-1].weight.grad.abs().sum() > 0


def test_fidelity_losses_vanish_only_for_the_ideal_fusion():
    a = torch.rand(2, 1, 24, 24) * 2 - 1
    sources = torch.cat([a, a], 1)
    weights = fuse.FidelityConfig()
    torch.testing.assert_close(fuse.ssim_per_image(a, a), torch.ones(2))
    torch.testing.assert_close(fuse.fidelity_losses(a, sources, weights), torch.zeros(2), atol=1e-5, rtol=0)
    assert (fuse.fidelity_losses(-a, sources, weights) > 0.5).all()


def test_config_checks_refuse_what_the_task_cannot_do():
    with pytest.raises(UserError, match="paired_folder"):
        fuse._check(fuse.FuseConfig())
    config = from_dict(fuse.FuseConfig, {"data": {"kind": "paired_folder", "root": "x"}, "prior_rules": ["median"]})
    with pytest.raises(UserError, match="prior_rules"):
        fuse._check(config)
    weighted = from_dict(
        fuse.FuseConfig, {"data": {"kind": "paired_folder", "root": "x"}, "noise": {"loss_weighting": "min_snr"}}
    )
    with pytest.raises(UserError, match="loss_weighting"):  # fusion_loss is not SNR-weighted
        fuse._check(weighted)


@pytest.mark.parametrize("keep_background", [True, False])
def test_sampled_fusion_keeps_common_black_background_black_when_asked(keep_background):
    torch.manual_seed(0)
    net = _tiny_net().eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    diffusion = Diffusion(from_dict(NoiseConfig, {"prediction_type": "sample"}))
    y_a, y_b = torch.rand(1, 1, 13, 17) * 2 - 1, torch.rand(1, 1, 13, 17) * 2 - 1
    y_a[..., :5, :], y_b[..., :5, :] = -1, -1  # a black band in both sources
    y = fuse._sample_y(net, diffusion, SamplerConfig(name="ddim", steps=2), 0, keep_background, y_a, y_b)
    assert y.shape == (1, 1, 13, 17)
    assert bool((y[..., :5, :] == -1).all()) is keep_background
