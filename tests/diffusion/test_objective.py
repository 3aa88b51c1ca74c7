"""The training objective: an oracle that knows x0 has zero loss, for each prediction type and time input."""

import dataclasses

import pytest
import torch
from torch import nn

from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig


class Oracle(nn.Module):
    """Predicts the exact target from x_t because it knows x0 and how time is encoded."""

    def __init__(self, diffusion: Diffusion, x0: torch.Tensor):
        super().__init__()
        self.diffusion, self.x0 = diffusion, x0

    def forward(self, x_t, time):
        config = self.diffusion.config
        if config.time_input == "timestep":
            gamma = self.diffusion.alphas_cumprod[time.long()].sqrt()
        else:
            gamma = time / 1000.0
        gamma = gamma.view(-1, 1, 1, 1)
        sigma = (1 - gamma**2).sqrt()
        eps = (x_t - gamma * self.x0) / sigma
        return eps if config.prediction_type == "epsilon" else gamma * eps - sigma * self.x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("time_input", ["timestep", "noise_level"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_oracle_has_zero_loss(prediction_type, time_input, beta_schedule):
    diffusion = Diffusion(
        NoiseConfig(beta_schedule=beta_schedule, prediction_type=prediction_type, time_input=time_input)
    )
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    loss = diffusion.loss(Oracle(diffusion, x0), x0, None, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-6


def test_a_wrong_prediction_type_is_penalised():
    eps_process = Diffusion(NoiseConfig(prediction_type="epsilon"))
    v_process = Diffusion(NoiseConfig(prediction_type="v_prediction"))
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    assert v_process.loss(Oracle(eps_process, x0), x0, None, torch.Generator().manual_seed(0)).item() > 0.1


def test_model_time_is_the_step_or_the_scaled_noise_level():
    t = torch.tensor([0, 500, 999])
    assert torch.equal(Diffusion(NoiseConfig(time_input="timestep")).model_time(t), t)
    levels = Diffusion(NoiseConfig(time_input="noise_level")).model_time(t)
    assert levels[0] > 999.0 and levels[1] > levels[2] > 0


class ZeroGuesser(nn.Module):
    """Believes x0 is 0: predicts the target (epsilon, v or x0) that follows from that belief, and records
    the times it was asked about, so the error of each sample in x0 space is exactly ``mean(x0 ** 2)``."""

    def __init__(self, diffusion: Diffusion):
        super().__init__()
        self.diffusion, self.seen = diffusion, None

    def forward(self, x_t, time):
        self.seen = time
        config = self.diffusion.config
        gamma = _gamma(self.diffusion, time).view(-1, 1, 1, 1)
        sigma = (1 - gamma**2).sqrt()
        eps = x_t / sigma  # x_t = gamma * 0 + sigma * eps
        return {"epsilon": eps, "v_prediction": gamma * eps, "sample": torch.zeros_like(x_t)}[config.prediction_type]


def _gamma(diffusion: Diffusion, time: torch.Tensor) -> torch.Tensor:
    if diffusion.config.time_input == "timestep":
        return diffusion.alphas_cumprod[time.long()].sqrt()
    return time / 1000.0


@pytest.mark.parametrize(
    ("prediction_type", "snr_floor"), [("epsilon", 0.0), ("v_prediction", 0.0), ("sample", 0.0), ("v_prediction", 1.0)]
)
@pytest.mark.parametrize("time_input", ["timestep", "noise_level"])
def test_min_snr_weighting_is_the_clamped_snr_times_the_x0_error(prediction_type, snr_floor, time_input):
    """Hang et al. 2023 define the weighting in x0 space: loss = mean over samples of min(SNR, gamma) times the
    sample's x0 error, whatever the network predicts; ``snr_floor`` raises the weight of the noisiest samples
    to at least the floor."""
    noise = NoiseConfig(prediction_type=prediction_type, time_input=time_input, loss_weighting="min_snr")
    diffusion = Diffusion(dataclasses.replace(noise, snr_gamma=5.0, snr_floor=snr_floor))
    x0 = torch.rand(256, 1, 4, 4) * 2 - 1
    model = ZeroGuesser(diffusion)
    loss = diffusion.loss(model, x0, None, torch.Generator().manual_seed(0))
    gamma = _gamma(diffusion, model.seen)
    snr = gamma**2 / (1 - gamma**2)
    expected = (snr.clamp(min=snr_floor, max=5.0) * x0.pow(2).mean(dim=(1, 2, 3))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert snr.max() > 5.0 and snr.min() < 0.5  # both bounds were exercised


def test_an_snr_floor_is_refused_for_epsilon_prediction_and_above_gamma():
    with pytest.raises(ValueError, match="1/SNR"):
        NoiseConfig(prediction_type="epsilon", loss_weighting="min_snr", snr_floor=1.0)
    with pytest.raises(ValueError, match="below snr_gamma"):
        NoiseConfig(loss_weighting="min_snr", snr_gamma=2.0, snr_floor=2.0)


def test_without_weighting_the_loss_is_the_plain_mse_of_the_target():
    diffusion = Diffusion(NoiseConfig(prediction_type="sample"))
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    loss = diffusion.loss(ZeroGuesser(diffusion), x0, None, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(x0.pow(2).mean().item(), rel=1e-5)
