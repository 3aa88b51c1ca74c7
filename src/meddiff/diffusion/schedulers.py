"""Noise schedules and samplers, all from diffusers, selected by name.

meddiff never re-implements a scheduler: this module only maps meddiff's config to diffusers' classes
and the settings that make them behave on small, briefly trained medical models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc")
_BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


@dataclass
class NoiseConfig:
    """The forward (noising) process the model is trained on."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "cosine", "scaled_linear"] = "cosine"
    # first and last beta of the linear / scaled_linear schedules (diffusers' defaults; Stable Diffusion
    # checkpoints use scaled_linear 0.00085 -> 0.012); the cosine schedule ignores them
    beta_start: float = 0.0001
    beta_end: float = 0.02
    # "sample" predicts x0 directly (suits near-deterministic conditional tasks such as fusion)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    # "timestep": the UNet sees the integer t; "noise_level": it sees 1000*sqrt(alpha_bar), sampled
    # continuously between neighbouring steps in training (SR3).
    time_input: Literal["timestep", "noise_level"] = "timestep"
    # "min_snr": weight each sample's loss by min(SNR, snr_gamma) relative to the target's own weighting
    # (Hang et al. 2023, min-SNR-gamma), so the many nearly noise-free steps stop dominating training.
    # Not the default: it wins on joint brain image+label generation and loses KID on ACDC image-only
    # generation (benchmarks/results/convergence*.md); the demo and configs/brain_joint.yaml use it.
    loss_weighting: Literal["none", "min_snr"] = "none"
    snr_gamma: float = 5.0
    # lower bound of the min-SNR weight in x0 space, clamp(SNR, snr_floor, snr_gamma): 1 keeps the noisiest
    # steps, which lay out the image, at the weight of x0-prediction (Salimans & Ho 2022's truncated SNR)
    # instead of letting SNR -> 0 switch them off
    snr_floor: float = 0.0

    def __post_init__(self):
        if self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0, got {self.snr_gamma}")
        if not 0 <= self.snr_floor < self.snr_gamma:
            raise ValueError(f"snr_floor must be >= 0 and below snr_gamma {self.snr_gamma}, got {self.snr_floor}")
        if self.snr_floor > 0 and self.prediction_type == "epsilon":
            raise ValueError("snr_floor needs v_prediction or sample: with epsilon its weight grows as 1/SNR")


@dataclass
class SamplerConfig:
    """How to sample: which diffusers scheduler, how many steps, guidance and clipping."""

    name: Literal["ddpm", "ddim", "dpm++", "dpm++sde", "unipc"] = "dpm++"
    steps: int = 20
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 DDPM-like
    guidance_scale: float = 1.0
    clip_sample: bool = True  # clip the predicted x0 to [-1, 1] (data range inside meddiff)

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler '{self.name}'; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def _common(noise: NoiseConfig) -> dict:
    return dict(
        num_train_timesteps=noise.num_train_timesteps,
        beta_schedule=_BETA_SCHEDULES[noise.beta_schedule],
        beta_start=noise.beta_start,
        beta_end=noise.beta_end,
        prediction_type=noise.prediction_type,
    )


def training_scheduler(noise: NoiseConfig) -> DDPMScheduler:
    """The scheduler whose ``add_noise`` / ``get_velocity`` / ``alphas_cumprod`` define training."""
    return DDPMScheduler(**_common(noise))


def make_scheduler(noise: NoiseConfig, sampler: SamplerConfig) -> SchedulerMixin:
    """A diffusers scheduler for ``sampler.name`` with ``set_timesteps(sampler.steps)`` already called.

    "trailing" timestep spacing makes every sampler start at t = T-1 (pure noise), which matters for
    few-step sampling (Lin et al. 2024); with the cosine schedule DPM-Solver needs ``lambda_min_clipped``
    or its first step diverges (measured here, see ../shared/reference).
    """
    common = dict(_common(noise), timestep_spacing="trailing")
    dpm_clip = dict(lambda_min_clipped=-5.1) if noise.beta_schedule == "cosine" else {}
    if sampler.name == "ddpm":
        scheduler = DDPMScheduler(**common, clip_sample=sampler.clip_sample)
    elif sampler.name == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=sampler.clip_sample)
    elif sampler.name in ("dpm++", "dpm++sde"):
        scheduler = DPMSolverMultistepScheduler(
            **common,
            **dpm_clip,
            solver_order=2,
            algorithm_type="dpmsolver++" if sampler.name == "dpm++" else "sde-dpmsolver++",
            thresholding=sampler.clip_sample,
            sample_max_value=1.0,
        )
    elif sampler.name == "unipc":
        scheduler = UniPCMultistepScheduler(**common, thresholding=sampler.clip_sample, sample_max_value=1.0)
    else:
        raise ValueError(f"unknown sampler '{sampler.name}'; choose one of {', '.join(SAMPLERS)}")
    scheduler.set_timesteps(sampler.steps)
    return scheduler


def inverse_scheduler(noise: NoiseConfig, steps: int) -> DDIMInverseScheduler:
    """DDIM inversion (image -> noise) with timesteps mirroring ``make_scheduler``'s DDIM."""
    scheduler = DDIMInverseScheduler(**_common(noise), timestep_spacing="trailing", clip_sample=False)
    scheduler.set_timesteps(steps)
    return scheduler
