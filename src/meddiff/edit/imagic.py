"""Imagic (Kawar et al., CVPR 2023): edit one real image with a text prompt, in three stages.

(A) Optimise the target prompt's token embeddings ``e_tgt -> e_opt`` so that the frozen model reconstructs
    the input (denoising loss on the input, random timesteps and noise).
(B) Fine-tune the model on the input conditioned on ``e_opt`` (the embedding is fixed now).
(C) Sample from ``interpolate(e_opt, e_tgt, alpha)`` (linear: ``alpha * e_tgt + (1 - alpha) * e_opt``, or
    spherical) with classifier-free guidance against the empty prompt and a fast sampler, several seeds
    per alpha. Every alpha uses the same seeds, so a row of the grid differs from the next only by alpha.

The stages work on any ``EditableModel``: meddiff's text-conditioned model (pixel space, image + label-map
channels) or a Stable Diffusion checkpoint (latent space); both train and sample with meddiff's
``Diffusion`` loss and ``sample`` loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from meddiff.devices import bf16_autocast
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.edit.interpolate import Interp, interpolate
from meddiff.progress import progress_bar
from meddiff.text.encoders import TextEncoding


class EditableModel(Protocol):
    """What Imagic needs from a text-conditioned diffusion model."""

    unet: nn.Module  # forward(x_t, t, context=, context_mask=) -> prediction; fine-tuned in stage B
    diffusion: Diffusion
    null: TextEncoding  # the empty prompt (guidance)

    def encode_prompt(self, prompt: str) -> TextEncoding: ...

    def encode_input(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``[1, C, H, W]`` image in [-1, 1] (+ ``[1, H, W]`` class ids) -> what the model diffuses."""

    def decode_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples -> images ``[N, C, H, W]`` in [-1, 1] and class-id masks ``[N, H, W]`` (or None)."""


@dataclass
class ImagicConfig:
    """Steps, learning rates and the alpha grid of one edit (defaults: meddiff's small CPU model)."""

    embed_steps: int = 100  # stage A
    embed_lr: float = 1e-2
    # stage B: alpha 0 gave the input back at 33 dB / SSIM 0.97 after 400 steps, 30 dB / 0.90 after 150
    # (cataract frame; benchmarks/results/editing.md, "Stage B and guidance"); lr 2e-4 under-fitted it
    finetune_steps: int = 400
    finetune_lr: float = 1e-3
    batch_size: int = 4  # noise draws of the input per optimisation step (stages A and B)
    alphas: list[float] = field(default_factory=lambda: [0.8, 1.0, 1.2, 1.4, 1.6])
    interp: Interp = "linear"
    seeds: int = 3
    seed: int = 0
    sample_batch: int = 16  # stage C: samples per sampler call (alphas x seeds are batched)
    # guidance 1: alphas > 1 already extrapolate towards the text; with guidance 3 on top, alpha 0 gave the
    # input back at 23 dB instead of 33 dB (same table)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(name="dpm++", steps=20, guidance_scale=1.0))
    bf16: bool = False  # run the model under CPU bf16 autocast (AMX) in all stages

    def __post_init__(self) -> None:
        if self.embed_steps < 0 or self.finetune_steps < 0:
            raise ValueError("embed_steps and finetune_steps must be >= 0")
        if self.embed_lr <= 0 or self.finetune_lr <= 0:
            raise ValueError("embed_lr and finetune_lr must be > 0")
        if self.batch_size < 1 or self.seeds < 1 or self.sample_batch < 1:
            raise ValueError("batch_size, seeds and sample_batch must be >= 1")
        if not self.alphas:
            raise ValueError("alphas must list at least one value")


@dataclass
class ImagicResult:
    """Edited samples per alpha (``[seeds, ...]`` images and masks), the optimised embedding ``e_opt``
    (``[1, L, D]``; with the fine-tuned model it samples other alphas or interpolations), losses and stage
    wall times."""

    images: dict[float, torch.Tensor]
    masks: dict[float, torch.Tensor | None]
    embedding: torch.Tensor
    embed_losses: list[float]
    finetune_losses: list[float]
    reconstruction_before: float  # stage A's objective at e_tgt, on fixed noise draws
    reconstruction_after: float  # ... at e_opt, same draws
    seconds: dict[str, float]


def _autocast(model: EditableModel, enabled: bool):
    return bf16_autocast(next(model.unet.parameters()).device, enabled)


def _conditioning(model: EditableModel, tokens: torch.Tensor, mask: torch.Tensor, batch: int) -> Conditioning:
    return Conditioning(
        context=tokens.expand(batch, -1, -1), context_mask=mask.expand(batch, -1), null_context=model.null.tokens
    )


@torch.no_grad()
def reconstruction_loss(
    model: EditableModel, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, draws: int = 16, seed: int = 12345
) -> float:
    """The denoising loss of ``x0`` under embedding ``tokens`` on ``draws`` fixed (timestep, noise) draws."""
    generator = torch.Generator().manual_seed(seed)  # on the CPU: meddiff.devices
    cond = _conditioning(model, tokens, mask, draws)
    return model.diffusion.loss(model.unet, x0.expand(draws, -1, -1, -1), cond, generator).item()


def optimise_embedding(
    model: EditableModel,
    x0: torch.Tensor,
    target: TextEncoding,
    config: ImagicConfig,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """Stage A: ``e_opt`` ``[1, L, D]`` from ``e_tgt`` by Adam on the denoising loss; the model is frozen."""
    model.unet.requires_grad_(False).eval()
    tokens = target.tokens.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([tokens], lr=config.embed_lr)
    batch = x0.expand(config.batch_size, -1, -1, -1)
    losses = []
    for _ in progress_bar(range(config.embed_steps), description="A: optimising the embedding", enabled=progress):
        with _autocast(model, config.bf16):
            loss = model.diffusion.loss(
                model.unet, batch, _conditioning(model, tokens, target.mask, config.batch_size), generator
            )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return tokens.detach(), losses


def finetune(
    model: EditableModel,
    x0: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    config: ImagicConfig,
    generator: torch.Generator,
    progress: bool = False,
) -> list[float]:
    """Stage B: fine-tune every UNet weight on the input conditioned on the optimised embedding."""
    unet = model.unet
    unet.requires_grad_(True).train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=config.finetune_lr, weight_decay=0.0)
    batch = x0.expand(config.batch_size, -1, -1, -1)
    cond = _conditioning(model, tokens, mask, config.batch_size)
    losses = []
    for _ in progress_bar(range(config.finetune_steps), description="B: fine-tuning the model", enabled=progress):
        with _autocast(model, config.bf16):
            loss = model.diffusion.loss(unet, batch, cond, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    unet.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def sample_edits(
    model: EditableModel,
    e_opt: torch.Tensor,
    target: TextEncoding,
    shape: tuple[int, ...],
    config: ImagicConfig,
    progress: bool = False,
) -> dict[float, torch.Tensor]:
    """Stage C: ``config.seeds`` samples (seeds ``seed .. seed + seeds - 1``) for each alpha, drawn in batches
    of up to ``config.sample_batch`` samples (several alphas per batch; each sample has its own generator,
    so the batching does not change the result)."""
    per_call = max(1, config.sample_batch // config.seeds)
    chunks = [config.alphas[i : i + per_call] for i in range(0, len(config.alphas), per_call)]
    out = {}
    for alphas in progress_bar(chunks, description="C: sampling the edits", enabled=progress):
        tokens = torch.cat(
            [interpolate(e_opt, target.tokens, a, config.interp).expand(config.seeds, -1, -1) for a in alphas]
        )
        generators = [torch.Generator().manual_seed(config.seed + s) for _ in alphas for s in range(config.seeds)]
        cond = _conditioning(model, tokens, target.mask, len(generators))
        x = sample(
            model.unet,
            model.diffusion,
            config.sampler,
            (len(generators), *shape),
            cond,
            generator=generators,
            autocast_bf16=config.bf16,
        )
        out.update({a: x[i * config.seeds : (i + 1) * config.seeds] for i, a in enumerate(alphas)})
    return out


def imagic(
    model: EditableModel,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    prompt: str,
    config: ImagicConfig,
    progress: bool = False,
) -> ImagicResult:
    """Run stages A, B and C on one image ``[1, C, H, W]`` in [-1, 1] (and its ``[1, H, W]`` mask).

    ``model.unet`` is fine-tuned in place: load a fresh model for the next edit.
    """
    seconds = {}
    x0 = model.encode_input(image, mask)
    target = model.encode_prompt(prompt)
    generator = torch.Generator().manual_seed(config.seed)  # on the CPU: meddiff.devices
    model.unet.eval()
    before = reconstruction_loss(model, x0, target.tokens, target.mask)
    start = time.perf_counter()
    e_opt, embed_losses = optimise_embedding(model, x0, target, config, generator, progress)
    seconds["A_embedding"] = time.perf_counter() - start
    after = reconstruction_loss(model, x0, e_opt, target.mask)
    start = time.perf_counter()
    finetune_losses = finetune(model, x0, e_opt, target.mask, config, generator, progress)
    seconds["B_finetune"] = time.perf_counter() - start
    start = time.perf_counter()
    samples = sample_edits(model, e_opt, target, tuple(x0.shape[1:]), config, progress)
    images, masks = {}, {}
    for alpha, x in samples.items():
        images[alpha], masks[alpha] = model.decode_output(x)
    seconds["C_sampling"] = time.perf_counter() - start
    return ImagicResult(images, masks, e_opt, embed_losses, finetune_losses, before, after, seconds)
