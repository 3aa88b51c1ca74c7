"""Per-pixel features from a trained diffusion UNet's decoder (Baranchuk et al., ICLR 2022).

An image is noised to x_t with ONE fixed noise tensor (the same for every image of a shape), the UNet runs
once per timestep, and the activations of the chosen decoder blocks are kept at their own (low)
resolution. A pixel's feature vector is the concatenation, over timesteps and blocks, of those maps
bilinearly upsampled to the working image and read at that pixel. Only the low-resolution maps of a batch
are ever held: features are read at sampled pixels (training) or one band of rows at a time (prediction),
never as a dense ``[H, W, D]`` volume (2.2 GB per 256-px image at 8,448 float32 dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from meddiff.data.arrays import resize_image
from meddiff.devices import bf16_autocast, model_device
from meddiff.diffusion.objective import Diffusion
from meddiff.nets.unet import UNet


@dataclass
class FeatureConfig:
    """Which activations make a pixel's features, and how the image reaches the UNet.

    blocks:     decoder blocks (0 = lowest resolution; ``meddiff segment sweep`` scores each)
    timesteps:  diffusion steps t of the noised inputs (0..T-1); one UNet pass each
    scale:      UNet input size relative to the working images (0.5: a 128-px image runs at 64 px);
                match the pixel scale the diffusion model was trained at
    noise_seed: seed of the one fixed noise tensor
    batch_size: images per UNet pass
    bf16:       run the UNet under bf16 autocast (faster on CPUs with AMX; features a little coarser)
    """

    # Defaults: what at least 2 of the 4 sweeps of benchmarks/results/segmentation.md recommended (brain,
    # ACDC, ISBI, cataract; an 8-decoder-block UNet): sweep your own model and data for better choices.
    blocks: list[int] = field(default_factory=lambda: [5, 6, 7])
    timesteps: list[int] = field(default_factory=lambda: [20, 50, 250])
    scale: float = 1.0
    noise_seed: int = 0
    batch_size: int = 4
    bf16: bool = False

    def __post_init__(self) -> None:
        if not self.blocks or not self.timesteps:
            raise ValueError("blocks and timesteps must each list at least one value")
        if len(set(self.blocks)) != len(self.blocks) or len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError("blocks and timesteps must not repeat a value")
        if min(self.timesteps) < 0:
            raise ValueError(f"timesteps must be >= 0, got {self.timesteps}")
        if not 0 < self.scale <= 8:
            raise ValueError(f"scale must be in (0, 8], got {self.scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FeatureMaps:
    """Low-resolution decoder maps of a batch of working-size images, read at pixels on demand.

    ``maps[i]`` is ``[B, C_i, h_i, w_i]`` (timestep-major, then blocks in config order); ``factors[i]`` its
    downsampling relative to the UNet input of size ``input_size``; ``size`` is the working size.
    """

    maps: list[torch.Tensor]
    factors: list[int]
    input_size: tuple[int, int]
    size: tuple[int, int]

    @property
    def dims(self) -> int:
        return sum(m.shape[1] for m in self.maps)

    def _coordinate(self, pixels: torch.Tensor, axis: int, factor: int, length: int) -> torch.Tensor:
        # Working pixel centre -> UNet-input coordinate -> feature-map coordinate, normalised the way
        # grid_sample(align_corners=False) reads it; equals F.interpolate(bilinear) when sizes divide.
        ratio = self.input_size[axis] / (self.size[axis] * factor)
        return 2.0 * (pixels.double() + 0.5) * ratio / length - 1.0

    def at(self, index: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Float32 features ``[P, D]`` of image ``index`` at working pixels ``(ys[p], xs[p])``.

        Bilinear upsampling evaluated only where asked: ``F.interpolate`` can only produce a whole map,
        ``grid_sample`` with border padding gives the same values at any set of points.
        """
        parts = []
        for feature_map, factor in zip(self.maps, self.factors, strict=True):
            h, w = feature_map.shape[-2:]
            grid = torch.stack([self._coordinate(xs, 1, factor, w), self._coordinate(ys, 0, factor, h)], dim=-1)
            sampled = F.grid_sample(
                feature_map[index : index + 1].float(),
                grid.float().view(1, 1, -1, 2),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
            parts.append(sampled[0, :, 0].T)
        return torch.cat(parts, dim=1)

    def rows(self, index: int, start: int, stop: int) -> torch.Tensor:
        """Features ``[(stop - start) * W, D]`` of the working rows ``start:stop`` of image ``index``."""
        width = self.size[1]
        ys = torch.arange(start, stop).repeat_interleave(width)
        xs = torch.arange(width).repeat(stop - start)
        return self.at(index, ys, xs)


class FeatureExtractor:
    """Runs a trained (unconditional) diffusion UNet on noised images and returns ``FeatureMaps``."""

    def __init__(self, model: UNet, diffusion: Diffusion, config: FeatureConfig):
        cfg = model.config
        if cfg.cond_channels or cfg.spade_classes or cfg.context_dim:
            raise ValueError(
                "feature extraction needs an image-only diffusion UNet (no concatenated image, "
                "label map or text conditioning)"
            )
        bad_blocks = [b for b in config.blocks if not 0 <= b < model.num_decoder_blocks]
        if bad_blocks:
            raise ValueError(f"blocks {bad_blocks} outside the UNet's decoder blocks 0..{model.num_decoder_blocks - 1}")
        steps = diffusion.config.num_train_timesteps
        bad_steps = [t for t in config.timesteps if not 0 <= t < steps]
        if bad_steps:
            raise ValueError(f"timesteps {bad_steps} outside 0..{steps - 1}")
        self.model, self.diffusion, self.config = model.eval(), diffusion, config
        info = model.decoder_block_info()
        self.block_channels = [info[b][0] for b in config.blocks]
        self._factors = [info[b][1] for b in config.blocks] * len(config.timesteps)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def dims(self) -> int:
        """Feature dimensions per pixel: the chosen blocks' channels, once per timestep."""
        return sum(self.block_channels) * len(self.config.timesteps)

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The fixed noise ``[C, h, w]`` for UNet inputs of this shape (drawn once from ``noise_seed``)."""
        if shape not in self._noise:
            generator = torch.Generator().manual_seed(self.config.noise_seed)
            self._noise[shape] = torch.randn(shape, generator=generator)
        return self._noise[shape]

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """UNet input size of a working-size image."""
        return max(1, round(size[0] * self.config.scale)), max(1, round(size[1] * self.config.scale))

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> FeatureMaps:
        """Decoder maps of working-size images ``[B, C, H, W]`` in [-1, 1] (one UNet pass per timestep)."""
        size = tuple(images.shape[-2:])
        input_size = self.input_size(size)
        x0 = images.float() if input_size == size else resize_image(images.float(), input_size).clamp(-1, 1)
        device = model_device(self.model)
        x0, batch = x0.to(device), x0.shape[0]
        noise = self.noise(tuple(x0.shape[1:])).to(device).expand_as(x0)
        kwargs = {}
        if self.model.config.num_classes:  # an attribute-conditional generator: the "no attribute" token
            kwargs["class_labels"] = torch.full(
                (batch,), self.model.config.num_classes, dtype=torch.long, device=device
            )
        autocast = bf16_autocast(device, self.config.bf16)
        maps = []
        for t in self.config.timesteps:
            steps = torch.full((batch,), t, dtype=torch.long, device=device)
            x_t = self.diffusion.scheduler.add_noise(x0, noise, steps)
            with autocast:
                found = self.model.decoder_features(x_t, self.diffusion.model_time(steps), self.config.blocks, **kwargs)
            maps.extend(m.float() for m in found)
        return FeatureMaps(maps, self._factors, input_size, size)
