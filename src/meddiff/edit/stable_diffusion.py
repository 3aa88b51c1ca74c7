"""A diffusers Stable Diffusion checkpoint (a local folder) as an ``EditableModel``, the thesis' route.

The folder is what ``StableDiffusionPipeline.save_pretrained`` writes: ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/`` and ``scheduler/``; nothing is downloaded. Imagic runs in the VAE's
latent space with meddiff's loss and sampling loop: the scheduler's beta schedule and prediction type are
read from ``scheduler/scheduler_config.json``, and latents are never clipped.

Image + label map: the mask is drawn in the fixed class palette and placed to the right of the image on
one canvas (twice as wide), which the VAE encodes and the UNet (convolutional, any size) edits as one
picture, so self-attention keeps the two halves in register. The edited mask half is decoded to the
nearest palette colour of a class, i.e. always to valid class ids (ignored pixels, 255, are drawn as
class 0). Images go in and come out as RGB (grey images are replicated).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from meddiff.data.labels import palette
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.text.encoders import TextEncoding, load_text_encoder, quiet_transformers

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# Imagic's published Stable Diffusion settings (see ../shared/reference/anchors.md): 500 embedding steps at
# 1e-3, 1000 fine-tuning steps at 2e-6, DDIM 50 steps, guidance 7.5.
SD_DEFAULTS = dict(
    embed_steps=500,
    embed_lr=1e-3,
    finetune_steps=1000,
    finetune_lr=2e-6,
    batch_size=1,
    sampler=SamplerConfig(name="ddim", steps=50, guidance_scale=7.5, clip_sample=False),
)


def is_stable_diffusion(path: Path) -> bool:
    """True for a folder laid out like a saved Stable Diffusion pipeline."""
    return (path / "model_index.json").is_file() or ((path / "unet").is_dir() and (path / "vae").is_dir())


def native_size(path: Path) -> int:
    """The checkpoint's image side: UNet sample size x VAE downsampling, read from the two config files."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the UNet / VAE config of this checkpoint ({exc})") from None


def nearest_class(drawn: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` colours in [-1, 1] -> ``[N, H, W]`` id of the nearest class colour ``[K, 3]``."""
    distances = torch.cdist(drawn.permute(0, 2, 3, 1).reshape(-1, 3), colours)
    return distances.argmin(dim=1).view(drawn.shape[0], *drawn.shape[-2:])


class _UNetAdapter(nn.Module):
    """``UNet2DConditionModel`` behind meddiff's UNet call: ``forward(x, t, context=, context_mask=)``.

    Stable Diffusion attends to every one of the 77 tokens (no mask), as it was trained."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, *, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=context.to(x.dtype)).sample


def noise_config(scheduler_json: Path) -> NoiseConfig:
    """meddiff's ``NoiseConfig`` for a diffusers scheduler config file."""
    try:
        cfg = json.loads(scheduler_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{scheduler_json}: cannot read the scheduler config ({exc})") from None
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in _SCHEDULES or cfg.get("trained_betas"):
        raise UserError(
            f"{scheduler_json}: beta schedule '{schedule}' is not supported (supported: {', '.join(_SCHEDULES)})"
        )
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise UserError(f"{scheduler_json}: prediction type '{prediction}' is not supported (epsilon, v_prediction)")
    return NoiseConfig(
        num_train_timesteps=cfg.get("num_train_timesteps", 1000),
        beta_schedule=_SCHEDULES[schedule],
        beta_start=cfg.get("beta_start", 0.0001),
        beta_end=cfg.get("beta_end", 0.02),
        prediction_type=prediction,
    )


class StableDiffusionEditModel:
    """UNet, VAE and CLIP text encoder of a local Stable Diffusion checkpoint, on ``device``."""

    def __init__(self, path: Path, num_classes: int = 0, device: str | torch.device = "cpu"):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        path = Path(path)
        missing = [p for p in PARTS if not (path / p).is_dir()]
        if missing:
            raise UserError(
                f"{path}: not a Stable Diffusion checkpoint folder (no {missing[0]}/; expected "
                f"{', '.join(p + '/' for p in PARTS)})"
            )
        self.path, self.num_classes = path, num_classes
        try:
            with quiet_transformers():
                unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
                self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot load the Stable Diffusion UNet/VAE ({str(exc).splitlines()[0]})") from None
        self.unet = _UNetAdapter(unet).to(device).eval().requires_grad_(False)
        self.vae = self.vae.to(device).eval().requires_grad_(False)
        self.encoder = load_text_encoder(str(path)).to(device)
        if self.encoder.dim != unet.config.cross_attention_dim:
            raise UserError(
                f"{path}: the text encoder gives {self.encoder.dim}-d tokens but the UNet attends to "
                f"{unet.config.cross_attention_dim}-d"
            )
        self.diffusion = Diffusion(noise_config(path / "scheduler" / "scheduler_config.json"))
        self.null = self.encoder.encode([""])
        self.scale = float(self.vae.config.scaling_factor)
        self.colours = torch.from_numpy(palette(max(num_classes, 1))[: max(num_classes, 1)]).float() / 127.5 - 1

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode_prompt(self, prompt: str) -> TextEncoding:
        return self.encoder.encode([prompt])

    @torch.no_grad()
    def encode_input(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        canvas = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        if mask is not None:
            if not self.num_classes:
                raise ValueError("editing a mask needs num_classes > 0")
            ids = torch.where(mask == 255, 0, mask).long()
            drawn = self.colours[ids].permute(0, 3, 1, 2)
            canvas = torch.cat([canvas, drawn], dim=-1)
        latents = self.vae.encode(canvas.to(self.device)).latent_dist.mean
        return latents * self.scale

    @torch.no_grad()
    def decode_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        canvas = torch.cat([self.vae.decode(z[None] / self.scale).sample for z in x]).clamp(-1, 1).cpu()
        if self.num_classes:
            width = canvas.shape[-1] // 2
            canvas, drawn = canvas[..., :width], canvas[..., width:]
            masks = nearest_class(drawn, self.colours)
        else:
            masks = None
        return canvas, masks
