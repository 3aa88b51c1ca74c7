"""The sampling loop: every sampler, guidance arithmetic, reproducibility and DDIM inversion."""

import pytest
import torch

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import ddim_invert, guided_prediction, sample
from meddiff.diffusion.schedulers import SAMPLERS, NoiseConfig, SamplerConfig
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.tasks import generate


@pytest.fixture(scope="module")
def spade_model():
    torch.manual_seed(0)
    model = UNet(
        UNetConfig(base_channels=16, channel_mults=[1, 2], attention_levels=[1], norm_groups=8, spade_classes=3)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _label_map(batch=2, size=16):
    ids = torch.randint(0, 3, (batch, size, size), generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float()


def _sample(model, prediction_type, **sampler):
    return sample(
        model,
        Diffusion(NoiseConfig(prediction_type=prediction_type)),
        SamplerConfig(steps=5, guidance_scale=1.5, **sampler),
        (2, 1, 16, 16),
        Conditioning(label_map=_label_map()),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_every_sampler_clips_its_predictions_into_the_data_range(spade_model, name, prediction_type):
    # No final clamp in ``sample``: the range comes from each diffusers scheduler's own x0 clipping.
    x = _sample(spade_model, prediction_type, name=name)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all() and x.abs().max() <= 1


@pytest.mark.parametrize("name", SAMPLERS)
def test_without_clipping_an_untrained_epsilon_model_leaves_the_range(spade_model, name):
    # the untrained model's x0 estimates at high noise are far outside [-1, 1]: clipping is what holds them
    assert _sample(spade_model, "epsilon", name=name, clip_sample=False).abs().max() > 2


def test_an_unknown_sampler_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'; choose one of ddpm, ddim"):
        SamplerConfig(name="euler")  # type: ignore[arg-type]


def test_fewer_than_one_step_is_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SamplerConfig(name="ddim", steps=0)


def test_guidance_scale_one_equals_the_conditional_pass_and_zero_the_unconditional(spade_model):
    diffusion = Diffusion(NoiseConfig())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([500, 20])
    cond = Conditioning(label_map=_label_map())
    with torch.no_grad():
        conditional = spade_model(x, t, label_map=cond.label_map)
        unconditional = spade_model(x, t, label_map=torch.zeros_like(cond.label_map))
        # The batched [cond; uncond] path, evaluated at scales where the answer is known:
        at_one = guided_prediction(spade_model, diffusion, x, t, cond, guidance_scale=1.0 + 1e-9)
        at_zero = guided_prediction(spade_model, diffusion, x, t, cond, guidance_scale=0.0)
        at_two = guided_prediction(spade_model, diffusion, x, t, cond, guidance_scale=2.0)
    torch.testing.assert_close(at_one, conditional, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(at_zero, unconditional, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(at_two, 2 * conditional - unconditional, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(conditional, unconditional, atol=1e-4)


class _MapCounter(torch.nn.Module):
    """A hand-made "model": predicts x plus the label map summed over classes, and counts its calls."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, t, label_map):
        self.calls += 1
        return x + label_map.sum(1, keepdim=True)


@pytest.mark.parametrize("scale, expected", [(0.0, 0.0), (1.0, 1.0), (1.5, 1.5), (4.0, 4.0)])
def test_guidance_scale_zero_is_unconditional_one_conditional_and_above_one_extrapolates(scale, expected):
    model, x = _MapCounter(), torch.randn(2, 1, 4, 4)
    cond = Conditioning(label_map=torch.ones(2, 3, 4, 4))  # conditional output x + 3, unconditional x
    out = guided_prediction(model, Diffusion(NoiseConfig()), x, torch.tensor(10), cond, guidance_scale=scale)
    torch.testing.assert_close(out, x + 3 * expected)
    assert model.calls == 1  # one (batched, for s != 1) call per prediction


def test_per_sample_generators_make_samples_independent_of_batching(spade_model):
    diffusion, settings = Diffusion(NoiseConfig()), SamplerConfig(name="ddpm", steps=5)
    cond = Conditioning(label_map=_label_map())
    both = sample(
        spade_model,
        diffusion,
        settings,
        (2, 1, 16, 16),
        cond,
        generator=[torch.Generator().manual_seed(s) for s in (7, 8)],
    )
    second = sample(
        spade_model,
        diffusion,
        settings,
        (1, 1, 16, 16),
        Conditioning(label_map=cond.label_map[1:]),
        generator=[torch.Generator().manual_seed(8)],
    )
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-4)


def test_ddim_inversion_then_sampling_reconstructs_the_input(trained_generator):
    run, _ = trained_generator
    model, diffusion, codec, _, _ = generate.load(run)
    real = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    batch = {"image": real.images[60:62], "mask": real.masks[60:62]}
    x0 = codec.encode(batch)
    errors = {}
    for steps in (10, 50):
        noise = ddim_invert(model, diffusion, x0, steps)
        rebuilt = sample(
            model, diffusion, SamplerConfig(name="ddim", steps=steps, clip_sample=False), x0.shape, x_T=noise
        )
        errors[steps] = (rebuilt - x0).abs().mean().item()
    assert errors[50] < 0.03 and errors[50] < errors[10]


class _Overshooting(torch.nn.Module):
    """Predicts v = 2 x: its x0 estimate leaves [-1, 1] at most noise levels, so clipping is active."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, t):
        return self.scale * x


def test_clipped_ddim_is_consistent_first_order_dpm_solver():
    """DDIM with a clipped x0 must derive its noise estimate from the clipped x0 (else guided samples drift):
    then eta-0 DDIM is exactly first-order DPM-Solver++ with the same clipping."""
    from diffusers import DPMSolverMultistepScheduler

    noise = NoiseConfig(beta_schedule="linear", prediction_type="v_prediction")
    diffusion, model = Diffusion(noise), _Overshooting()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ddim = sample(model, diffusion, SamplerConfig(name="ddim", steps=10), x_T.shape, x_T=x_T.clone())
    solver = DPMSolverMultistepScheduler(
        beta_schedule="linear",
        prediction_type="v_prediction",
        solver_order=1,
        timestep_spacing="trailing",
        thresholding=True,
        sample_max_value=1.0,
    )
    solver.set_timesteps(10)
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(x, t).detach(), t, x).prev_sample
    torch.testing.assert_close(ddim, x.clamp(-1, 1), atol=1e-4, rtol=1e-4)
