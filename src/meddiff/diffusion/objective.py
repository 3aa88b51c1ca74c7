"""The training objective: noise an image, predict epsilon, v or x0, mean squared error (optionally
min-SNR-gamma weighted)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr
from torch import nn

from meddiff.devices import rand, randint, randn
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.schedulers import NoiseConfig, training_scheduler


class Diffusion:
    """The forward process of ``NoiseConfig``: noising, model time input and the training loss."""

    def __init__(self, config: NoiseConfig):
        self.config = config
        self.scheduler = training_scheduler(config)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the UNet receives as time for integer steps ``t`` (the step, or its scaled noise level)."""
        if self.config.time_input == "timestep":
            return t
        return 1000.0 * self.alphas_cumprod.to(t.device)[t.long()].sqrt()

    def loss(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        cond: Conditioning | None,
        generator: torch.Generator,
        cond_drop_prob: float = 0.0,
    ) -> torch.Tensor:
        """Denoising loss for a batch ``x0`` in [-1, 1]. ``cond_drop_prob`` of the samples get the null
        conditioning (classifier-free guidance training). All randomness comes from ``generator``
        (a CPU generator; the draws move to ``x0``'s device, see ``meddiff.devices``)."""
        b, weighted = x0.shape[0], self.config.loss_weighting != "none"
        t = randint(self.config.num_train_timesteps, (b,), generator, x0.device)
        noise = randn(tuple(x0.shape), generator, x0.device, x0.dtype)
        if self.config.time_input == "timestep":
            x_t = self.scheduler.add_noise(x0, noise, t)
            target = {"epsilon": noise, "sample": x0}.get(self.config.prediction_type)
            if target is None:
                target = self.scheduler.get_velocity(x0, noise, t)
            time = t
            snr = compute_snr(self.scheduler, t) if weighted else None
        else:
            # SR3's continuous noise level, drawn between neighbouring discrete levels: diffusers' add_noise
            # only takes integer steps, so the two-line interpolation is written here.
            ac = self.alphas_cumprod.to(x0.device)
            hi = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(ac[t])).sqrt()
            lo = ac[t].sqrt()
            u = rand((b,), generator, x0.device)
            gamma = (lo + u * (hi - lo)).view(-1, 1, 1, 1).to(x0.dtype)
            sigma = (1 - gamma**2).sqrt()
            x_t = gamma * x0 + sigma * noise
            targets = {"epsilon": noise, "sample": x0, "v_prediction": gamma * noise - sigma * x0}
            target = targets[self.config.prediction_type]
            time = 1000.0 * gamma.flatten()
            snr = (gamma**2 / sigma**2).flatten().float() if weighted else None
        kwargs = {}
        if cond is not None:
            cond = cond.to(x0.device)  # e.g. text tokens from an encoder that stays on the CPU
            if cond_drop_prob > 0:
                keep = rand((b,), generator, x0.device) >= cond_drop_prob
                cond = cond.drop(keep)
            kwargs = cond.model_kwargs()
        prediction = model(x_t, time, **kwargs)
        if snr is None:
            return F.mse_loss(prediction.float(), target.float())
        per_sample = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, x0.dim())))
        return (per_sample * self.min_snr_weight(snr)).mean()

    def min_snr_weight(self, snr: torch.Tensor) -> torch.Tensor:
        """min-SNR-gamma weight of each sample for this prediction target: ``clamp(SNR, floor, gamma)`` divided
        by the SNR weighting the target already implies (epsilon: SNR, v: SNR + 1, x0: 1)."""
        clipped = snr.clamp(min=self.config.snr_floor, max=self.config.snr_gamma)
        implied = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}
        return clipped / implied[self.config.prediction_type]
