"""The training objective: an oracle that knows x0 has zero loss, for each prediction type and time input."""

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
