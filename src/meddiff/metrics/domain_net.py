"""A small CNN feature network trained by meddiff on the real images, for FID/KID without Inception weights.

Objective: SimCLR-style contrastive learning (NT-Xent): two random views of each image must be closer to
each other than to the other images of the batch. The views differ only geometrically (crop-and-resize,
left-right flip) by default; intensity jitter (gamma, contrast, brightness, noise) is available but off,
because invariance to it hides exactly the artefacts FID should see. On the 133 MNI152 slices at 64 px,
FID of contrast-scaled (x0.7) images was ~3000x the same-distribution baseline with geometric views and
~2x with intensity jitter. An autoencoder encoder was tried too and separated different anatomy ~3x less
and blur/contrast changes hardly at all, so it was not chosen. Known limit: mild pixel noise
(sigma 0.1 on [-1, 1]) moves these features little (FID ~2x baseline); check residual noise otherwise.

Architecture: 4 stages of two 3x3 convs (the first with stride 2) with GroupNorm (batch-independent
features) and SiLU, global average pooling to ``widths[-1]`` (256) features; a 2-layer projection head is
used only for the training loss (features are taken before it, as in SimCLR). Input: any channel count
(grey replicated, or channels averaged for a grey network) and any size (resized to ``image_size``).

Comparability: the weights depend on the training images, the seed and the settings, and the name
``domain-cnn-<hash>`` hashes all of them. FID/KID numbers computed with this network are comparable only
within meddiff, between runs on the same data with the same feature network (same name); never compare
them with Inception-based numbers from papers.

Default training: 300 steps of 32 image pairs at 64 x 64 with AdamW, about 65-75 s on this project's
2-core CPU (0.2-0.3 s per step; on a busy machine ``torch.set_num_threads(1)`` is much faster than 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meddiff import __version__
from meddiff.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from meddiff.config import from_dict, to_dict
from meddiff.devices import rand, randn, resolve_device
from meddiff.errors import UserError
from meddiff.metrics.features import FeatureNet, match_channels, match_size

KIND = "domain_net"  # recorded in the checkpoint's state.json


@dataclass
class DomainNetConfig:
    """Architecture of the domain feature network."""

    in_channels: int = 1
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    projection_dim: int = 128


@dataclass
class DomainTrainConfig:
    """Self-supervised training settings (all part of the network's name)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    min_crop_area: float = 0.5
    hflip: bool = True
    intensity_jitter: float = 0.0
    seed: int = 0


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(),
    )


class DomainCNN(FeatureNet):
    """Small convolutional encoder; ``forward`` gives ``[N, widths[-1]]`` features."""

    def __init__(self, config: DomainNetConfig, name: str = "domain-cnn-untrained"):
        super().__init__()
        self.config = config
        self.name = name
        self.num_features = config.widths[-1]
        self.training_record: dict | None = None  # settings and final loss, set by train_domain_net
        chans = (config.in_channels, *config.widths)
        self.encoder = nn.Sequential(*(_stage(a, b) for a, b in itertools.pairwise(chans)))
        self.projection = nn.Sequential(
            nn.Linear(self.num_features, self.num_features),
            nn.ReLU(),
            nn.Linear(self.num_features, config.projection_dim),
        )

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] with the network's channel count and size."""
        return match_size(match_channels(images.float(), self.config.in_channels), self.config.image_size)

    def encode(self, prepared: torch.Tensor) -> torch.Tensor:
        """Features of already ``prepare``-d images."""
        return self.encoder(prepared).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.prepare(images))


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    min_crop_area: float = 0.5,
    hflip: bool = True,
    intensity_jitter: float = 0.0,
) -> torch.Tensor:
    """One random view per image of ``[N, C, S, S]`` images in [-1, 1] (same size out, same device).

    Hand-written because torchvision's transforms are not available: one batched affine resampling
    does crop (area fraction in [min_crop_area, 1], aspect 3/4..4/3), resize and flip for all images.
    The draws come from the CPU ``generator`` (``meddiff.devices``), so a seed gives the same views anywhere.
    """
    n, device = images.shape[0], images.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * rand((n,), generator, device)

    area = u(min_crop_area, 1.0)
    aspect = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    sx = (area * aspect).sqrt().clamp(max=1.0)
    sy = (area / aspect).sqrt().clamp(max=1.0)
    tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    flip = torch.where(rand((n,), generator, device) < 0.5, -1.0, 1.0) if hflip else torch.ones(n, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if intensity_jitter == 0:
        return views
    # Intensity jitter on the [0, 1] scale: gamma, contrast, brightness, then noise.
    j, shape = intensity_jitter, (n, 1, 1, 1)
    unit = ((views + 1) / 2).clamp(0, 1) ** torch.exp(u(-0.4 * j, 0.4 * j)).view(shape)
    unit = unit * u(1 - 0.2 * j, 1 + 0.2 * j).view(shape) + u(-0.1 * j, 0.1 * j).view(shape)
    unit = unit + u(0.0, 0.03 * j).view(shape) * randn(tuple(views.shape), generator, device)
    return unit.clamp(0, 1) * 2 - 1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy for paired projections ``[B, D]``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(logits, positives)


def _resolve(
    images: torch.Tensor, net_config: DomainNetConfig | None, train_config: DomainTrainConfig | None
) -> tuple[DomainNetConfig, DomainTrainConfig]:
    if images.dim() != 4 or images.shape[0] < 2:
        raise UserError(f"'images' must be a [N, C, H, W] batch with N >= 2, got shape {tuple(images.shape)}")
    net_config = dataclasses.replace(net_config or DomainNetConfig(), in_channels=images.shape[1])
    return net_config, train_config or DomainTrainConfig()


def domain_net_name(
    images: torch.Tensor, net_config: DomainNetConfig | None = None, train_config: DomainTrainConfig | None = None
) -> str:
    """``domain-cnn-<12 hex>``: a hash of the training images, the architecture and the training settings
    (seed included), i.e. the name ``train_domain_net`` gives the network it trains from them."""
    net_config, train_config = _resolve(images, net_config, train_config)
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().float().contiguous().numpy().tobytes())
    h.update(json.dumps([to_dict(net_config), to_dict(train_config)], sort_keys=True).encode())
    return "domain-cnn-" + h.hexdigest()[:12]


def train_domain_net(
    images: torch.Tensor,
    net_config: DomainNetConfig | None = None,
    train_config: DomainTrainConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[DomainCNN, list[float]]:
    """Train a ``DomainCNN`` on real ``images`` ``[N, C, H, W]`` in [-1, 1] (N >= 2) on ``device`` (the
    images stay where they are; each batch is moved); returns the network (in eval mode, on the CPU, named
    ``domain-cnn-<12 hex>``) and the loss of every step.

    Deterministic for a given seed and thread count, and leaves torch's global RNG untouched.
    ``net_config.in_channels`` is replaced by the images' channel count.
    """
    net_config, train_config = _resolve(images, net_config, train_config)
    name = domain_net_name(images, net_config, train_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_config.seed)
        net = DomainCNN(net_config, name=name)
    device = resolve_device(device)
    net.to(device)
    generator = torch.Generator().manual_seed(train_config.seed)
    data = net.prepare(images)
    batch = min(train_config.batch_size, data.shape[0])
    optimiser = torch.optim.AdamW(net.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    order, cursor, losses = torch.randperm(data.shape[0], generator=generator), 0, []
    net.train()
    for _ in range(train_config.steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(data.shape[0], generator=generator), 0
        x = data[order[cursor : cursor + batch]].to(device)
        cursor += batch
        views = [
            augment(x, generator, train_config.min_crop_area, train_config.hflip, train_config.intensity_jitter)
            for _ in range(2)
        ]
        z1, z2 = (net.projection(net.encode(v)) for v in views)
        loss = nt_xent(z1, z2, train_config.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    net.training_record = {
        **to_dict(train_config),
        "num_images": images.shape[0],
        "final_loss": losses[-1] if losses else None,
    }
    return net.cpu().eval(), losses


def save_domain_net(net: DomainCNN, directory: str | Path) -> Path:
    """Write the network as a checkpoint folder (``meddiff.checkpoint``: ``model.safetensors`` and
    ``state.json`` with its name, architecture and training record) at ``directory``; returns it."""
    record = {
        "kind": KIND,
        "meddiff_version": __version__,
        "name": net.name,
        "config": to_dict(net.config),
        "training": net.training_record,
    }
    return save_checkpoint(Path(directory), {"model": net.state_dict()}, record)


def load_domain_net(directory: str | Path) -> DomainCNN:
    """Read a network written by ``save_domain_net`` (in eval mode, with its original name)."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise UserError(f"{directory}: no domain feature network here (train one with train_domain_net)")
    groups, record = load_checkpoint(directory)
    if record.get("kind") != KIND or not isinstance(record.get("name"), str) or "model" not in groups:
        raise UserError(f"{directory / STATE_FILE}: not a domain feature network (no '{KIND}' record with a name)")
    try:
        config = from_dict(DomainNetConfig, record.get("config"), "config.")
    except UserError as exc:
        raise UserError(f"{directory / STATE_FILE}: {exc}") from None
    net = DomainCNN(config, name=record["name"])
    try:
        net.load_state_dict(groups["model"])
    except RuntimeError as exc:
        raise UserError(
            f"{directory}: the weights do not fit the network its state.json describes ({str(exc).splitlines()[0]})"
        ) from None
    net.training_record = record.get("training")
    return net.eval()


def train_or_load_domain_net(
    images: torch.Tensor,
    cache_dir: str | Path,
    net_config: DomainNetConfig | None = None,
    train_config: DomainTrainConfig | None = None,
    device: str | torch.device = "cpu",
) -> DomainCNN:
    """The domain network for ``images`` and these settings (on the CPU): loaded from ``cache_dir/<name>``
    when it was trained before, else trained on ``device`` and saved there."""
    directory = Path(cache_dir) / domain_net_name(images, net_config, train_config)
    if (directory / STATE_FILE).is_file():
        return load_domain_net(directory)
    net, _ = train_domain_net(images, net_config, train_config, device)
    save_domain_net(net, directory)
    return net
