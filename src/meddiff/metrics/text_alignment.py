"""Text alignment of images with a prompt: CLIP score with a local CLIP, else a domain measure.

CLIP score (``ClipScore``): ``max(100 * cos(E_image, E_text), 0)`` with a CLIP model read from a local
folder (``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained``; never downloaded), the definition
of Hessel et al. 2021 that torchmetrics implements. Written here because torchmetrics 1.9's ``clip_score``
expects ``get_image_features`` to return a tensor, while transformers 5 returns a model output.

Domain text alignment (``DomainAlignmentScore``), for when no CLIP model is available (medical images are
far from CLIP's training data anyway): a small image encoder (``domain_net.DomainCNN``) and a linear map of
the frozen text encoder's pooled caption embeddings into a shared space, trained CLIP-style (symmetric
InfoNCE with a learned temperature; images with the same caption count as positives of each other) on the
training images and their captions. The score has CLIP score's form, ``max(100 * cos, 0)``, but its values
are comparable only between images scored by the same network (its name, ``domain-text-<hash>``, hashes
the training images, captions and settings), never with CLIP scores. It measures whether an image looks
like the training images captioned like the prompt, so it only understands the training captions'
vocabulary (see the run's ``captions.csv``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meddiff import __version__
from meddiff.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from meddiff.config import from_dict, to_dict
from meddiff.devices import resolve_device
from meddiff.errors import UserError
from meddiff.metrics.domain_net import DomainCNN, DomainNetConfig, augment
from meddiff.progress import progress_bar

ALIGNMENT_DIR = "text_alignment"
KIND = "text_aligner"  # recorded in the checkpoint's state.json


@dataclass
class AlignmentTrainConfig:
    """Training of the domain text-alignment network (all part of its name)."""

    steps: int = 300  # 0: no network (edits then report text alignment only with --clip)
    batch_size: int = 32
    lr: float = 2e-3
    embed_dim: int = 128
    image_size: int = 64
    min_crop_area: float = 0.7  # random crops as augmentation (no flips: captions name left and right)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("alignment needs steps >= 0, batch_size >= 2 and lr > 0")


class DomainTextAligner(nn.Module):
    """Image tower (``DomainCNN`` with its projection head) and text projection into one embedding space."""

    def __init__(self, in_channels: int, pooled_dim: int, config: AlignmentTrainConfig, name: str):
        super().__init__()
        self.config, self.name, self.pooled_dim = config, name, pooled_dim
        self.image_net = DomainCNN(
            DomainNetConfig(in_channels=in_channels, image_size=config.image_size, projection_dim=config.embed_dim),
            name=name,
        )
        self.text_proj = nn.Linear(pooled_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.record: dict = {}

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        net = self.image_net
        return F.normalize(net.projection(net.encode(net.prepare(images))), dim=-1)

    def text_embeddings(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled.float()), dim=-1)

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``100 * cos`` of each image ``[N, C, H, W]`` in [-1, 1] with its text ``pooled`` ``[N or 1, P]``
        (not clamped, so differences between prompts stay visible where both are dissimilar)."""
        return 100 * (self.image_embeddings(images) * self.text_embeddings(pooled)).sum(-1)

    def score(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``max(100 * cos, 0)``, CLIP score's form."""
        return self.similarity(images, pooled).clamp(min=0)


def aligner_name(images: torch.Tensor, captions: Sequence[str], config: AlignmentTrainConfig) -> str:
    """``domain-text-<12 hex>``: hash of the training images, captions and settings."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().float().contiguous().numpy().tobytes())
    h.update(json.dumps([list(captions), to_dict(config)]).encode())
    return "domain-text-" + h.hexdigest()[:12]


def _contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, same: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption is a positive (``same`` ``[B, B]`` bool)."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_aligner(
    images: torch.Tensor,
    pooled: torch.Tensor,
    captions: Sequence[str],
    config: AlignmentTrainConfig | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[DomainTextAligner, list[float]]:
    """Train the domain text-alignment network on ``device`` on ``images`` ``[N, C, H, W]`` in [-1, 1] with
    their captions' pooled embeddings ``[N, P]`` (both stay where they are; each batch is moved). Leaves
    torch's global RNG untouched; returns the network (eval mode, on the CPU; ``record`` holds the settings
    and its top-1 caption retrieval accuracy on the training images) and the loss of every step."""
    config = config or AlignmentTrainConfig()
    if images.shape[0] != pooled.shape[0] or images.shape[0] != len(captions) or images.shape[0] < 2:
        raise UserError("text alignment needs at least 2 images with one caption each")
    if len(set(captions)) < 2:
        raise UserError("text alignment needs at least 2 different captions")
    name = aligner_name(images, captions, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = DomainTextAligner(images.shape[1], pooled.shape[1], config, name)
    device = resolve_device(device)
    net.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.tensor([{c: i for i, c in enumerate(dict.fromkeys(captions))}[c] for c in captions])
    data = net.image_net.prepare(images)
    batch = min(config.batch_size, data.shape[0])
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    losses = []
    net.train()
    for _ in progress_bar(range(config.steps), description="text-alignment network", enabled=progress):
        index = torch.randperm(data.shape[0], generator=generator)[:batch]
        views = augment(data[index].to(device), generator, config.min_crop_area, hflip=False)
        image_emb = F.normalize(net.image_net.projection(net.image_net.encode(views)), dim=-1)
        same = (ids[index, None] == ids[None, index]).to(device)
        loss = _contrastive_loss(image_emb, net.text_embeddings(pooled[index].to(device)), same, net.logit_scale)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    net.cpu().eval()
    net.record = {
        "training": to_dict(config),
        "num_images": images.shape[0],
        "num_captions": int(ids.max()) + 1,
        "final_loss": losses[-1] if losses else None,
        "train_top1": retrieval_top1(net, images, pooled, ids),
    }
    return net, losses


@torch.no_grad()
def retrieval_top1(net: DomainTextAligner, images: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor) -> float:
    """Share of images whose most similar caption (among the distinct ones) is their own."""
    first = {int(c): i for i, c in reversed(list(enumerate(ids.tolist())))}
    distinct = torch.tensor([first[c] for c in sorted(first)])
    sims = net.image_embeddings(images) @ net.text_embeddings(pooled[distinct]).T
    return float((ids[distinct][sims.argmax(dim=1)] == ids).float().mean())


def save_aligner(net: DomainTextAligner, folder: Path) -> Path:
    """Write the network as a checkpoint folder (``meddiff.checkpoint``) at ``folder``; returns it."""
    record = {
        "kind": KIND,
        "meddiff_version": __version__,
        "name": net.name,
        "in_channels": net.image_net.config.in_channels,
        "pooled_dim": net.pooled_dim,
        "config": to_dict(net.config),
        "record": net.record,
    }
    return save_checkpoint(Path(folder), {"model": net.state_dict()}, record)


def has_aligner(folder: Path) -> bool:
    """Whether ``folder`` holds a network written by ``save_aligner``."""
    return (Path(folder) / STATE_FILE).is_file()


def load_aligner(folder: Path) -> DomainTextAligner:
    """Read a network written by ``save_aligner`` (eval mode)."""
    folder = Path(folder)
    if not has_aligner(folder):
        raise UserError(f"{folder}: no text-alignment network here")
    groups, record = load_checkpoint(folder)
    try:
        if record.get("kind") != KIND:
            raise KeyError(f"kind is {record.get('kind')!r}, not {KIND!r}")
        net = DomainTextAligner(
            record["in_channels"],
            record["pooled_dim"],
            from_dict(AlignmentTrainConfig, record["config"], "config."),
            record["name"],
        )
        net.load_state_dict(groups["model"])
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{folder}: not a readable text-alignment network ({str(exc).splitlines()[0]})") from None
    net.record = record.get("record", {})
    return net.eval()


class DomainAlignmentScore:
    """Domain text alignment of images with a prompt; ``measure`` names it in every output."""

    def __init__(self, aligner: DomainTextAligner, encoder):
        self.aligner, self.encoder = aligner, encoder
        self.measure = f"domain text alignment ({aligner.name}; not a CLIP score)"

    def __call__(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        return self.aligner.score(images.float().cpu(), self.encoder.encode([prompt]).pooled.cpu())


class ClipScore:
    """CLIP score of images with a prompt, from a local CLIP model folder."""

    def __init__(self, path: Path):
        from transformers import CLIPModel, CLIPProcessor

        from meddiff.text.encoders import quiet_transformers

        if not (Path(path) / "config.json").is_file():
            raise UserError(
                f"{path}: no CLIP model here (a folder saved with CLIPModel.save_pretrained and "
                "CLIPProcessor.save_pretrained)"
            )
        try:
            with quiet_transformers():
                self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
                self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: cannot load a CLIP model and processor from this folder ({exc})") from None
        self.measure = f"CLIP score ({Path(path).name})"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        rgb = ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb
        inputs = self.processor(text=[prompt], images=list(rgb), return_tensors="pt", padding=True, truncation=True)
        out = self.model(**inputs)
        image_emb = F.normalize(out.image_embeds, dim=-1)
        text_emb = F.normalize(out.text_embeds, dim=-1)
        return (100 * image_emb @ text_emb[0]).clamp(min=0)
