"""The pixel classifier: an ensemble of MLPs trained together, majority vote, per-pixel uncertainty.

Each member is Linear-ReLU-BatchNorm per hidden layer, then a Linear to the classes (Baranchuk et al.: 10
members, hidden 128 and 32, Adam 1e-3, batch 64 pixels, cross-entropy, early stopping). The members are
stored as stacked weights and trained in one batched matmul per layer, each on its own shuffle of the
pixels: ``torch.func.vmap`` over stacked modules cannot update BatchNorm running statistics, and ten
separate small MLPs waste most of a CPU on Python overhead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meddiff.data.labels import IGNORE_INDEX
from meddiff.segment.features import FeatureMaps
from meddiff.segment.pixels import PixelStore


@dataclass
class EnsembleConfig:
    """The MLP ensemble and its training.

    members:    MLPs in the ensemble (prediction: majority vote)
    hidden:     hidden layer widths (Baranchuk et al.: 128, 32; 256, 128 for 30+ classes)
    lr, batch_size: Adam learning rate and pixels per step (per member)
    max_epochs: passes over the training pixels at most
    eval_every: optimiser steps between scores on the held-out pixels
    patience:   scores without improvement before a member stops improving (its best weights are kept);
                training ends when every member has stopped
    buffer_mb:  size of the shuffle buffer read from the pixel store at a time (float32 in RAM)
    """

    members: int = 10
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 10
    eval_every: int = 250
    patience: int = 4
    buffer_mb: int = 256

    def __post_init__(self) -> None:
        for name in ("members", "batch_size", "max_epochs", "eval_every", "patience", "buffer_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive widths, got {self.hidden}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class GroupedLinear(nn.Module):
    """``members`` independent linear layers: ``[M, B, in] -> [M, B, out]``, or a shared ``[B, in]``
    input to all members (prediction) in one matmul."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return torch.baddbmm(self.bias, x, self.weight)
        members, fan_in, fan_out = self.weight.shape
        shared = x @ self.weight.permute(1, 0, 2).reshape(fan_in, members * fan_out)
        return shared.view(-1, members, fan_out).transpose(0, 1) + self.bias


class GroupedBatchNorm(nn.Module):
    """One BatchNorm1d per member over ``[M, B, C]``; every parameter and buffer is ``[M, C]``."""

    def __init__(self, members: int, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, channels))
        self.bias = nn.Parameter(torch.zeros(members, channels))
        self.register_buffer("running_mean", torch.zeros(members, channels))
        self.register_buffer("running_var", torch.ones(members, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, batch, channels = x.shape
        flat = x.transpose(0, 1).reshape(batch, members * channels)
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            self.momentum,
            self.eps,
        )
        return out.view(batch, members, channels).transpose(0, 1)


class MLPEnsemble(nn.Module):
    """``members`` MLPs ``dims -> hidden... -> num_classes``; input ``[M, B, dims]`` (one batch per member)
    or ``[B, dims]`` (the same pixels for all), output logits ``[M, B, num_classes]``."""

    def __init__(self, members: int, dims: int, hidden: list[int], num_classes: int):
        super().__init__()
        self.members, self.dims, self.num_classes = members, dims, num_classes
        layers: list[nn.Module] = []
        width = dims
        for size in hidden:
            layers += [GroupedLinear(members, width, size), nn.ReLU(), GroupedBatchNorm(members, size)]
            width = size
        layers.append(GroupedLinear(members, width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def copy_member(self, source: dict[str, torch.Tensor], member: int) -> None:
        """Overwrite one member's weights and statistics with those in ``source`` (a state dict)."""
        with torch.no_grad():
            for name, value in self.state_dict().items():
                value[member].copy_(source[name][member])


@dataclass
class TrainReport:
    """How the ensemble's training went."""

    steps: int
    epochs: float
    best_val_loss: list[float]  # per member, weighted cross-entropy on the held-out pixels
    best_step: list[int]
    stopped_early: bool
    seconds: float
    train_pixels: int
    val_pixels: int


def _weighted_ce(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member sums of (weighted) cross-entropy and of weights: logits ``[M, B, C]``, labels ``[M, B]``."""
    members, batch, classes = logits.shape
    loss = F.cross_entropy(
        logits.reshape(-1, classes), labels.reshape(-1), weight=weights, ignore_index=IGNORE_INDEX, reduction="none"
    ).view(members, batch)
    valid = labels != IGNORE_INDEX
    w = weights[labels.clamp(max=classes - 1)] if weights is not None else torch.ones_like(loss)
    w = torch.where(valid, w, torch.zeros_like(w))
    return loss.sum(dim=1), w.sum(dim=1)


@torch.no_grad()
def _val_loss(
    model: MLPEnsemble, store: PixelStore, rows: np.ndarray, weights: torch.Tensor | None, rows_per_read: int
) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(model.members, dtype=torch.float64)
    norm = torch.zeros(model.members, dtype=torch.float64)
    for start in range(0, len(rows), rows_per_read):
        part = rows[start : start + rows_per_read]
        logits = model(store.read(part).to(device))
        labels = store.labels[torch.from_numpy(part)].to(device).expand(model.members, -1)
        loss, weight = _weighted_ce(logits, labels, weights)
        total += loss.double().cpu()
        norm += weight.double().cpu()
    model.train()
    return total / norm.clamp(min=1e-12)


def train_ensemble(
    store: PixelStore,
    train_rows: int,
    num_classes: int,
    config: EnsembleConfig,
    seed: int,
    class_weights: torch.Tensor | None = None,
    progress: Callable[[int, float, list[float]], None] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MLPEnsemble, TrainReport]:
    """Train on store rows ``0:train_rows``, stop early on the held-out rows ``train_rows:``, on ``device``
    (the feature rows stay in the store and stream there one shuffle buffer at a time).

    Each epoch reads the training rows in a fresh random order, one shuffle buffer of ``buffer_mb`` at a
    time; within a buffer every member draws its own batches. ``seed`` drives initialisation and shuffling.
    After each evaluation ``progress(step, mean training loss since the last one, held-out loss per member)``
    is called if given. Returns the ensemble with each member's best weights.
    """
    val_rows = np.arange(train_rows, store.rows)
    if train_rows < 1 or len(val_rows) < 1:
        raise ValueError(f"need training and held-out pixels, got {train_rows} and {len(val_rows)}")
    started = time.monotonic()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLPEnsemble(config.members, store.dims, config.hidden, num_classes)
    device = torch.device(device)
    model.to(device)
    if class_weights is not None:
        class_weights = class_weights.to(device)
    generator = torch.Generator().manual_seed(seed + 1)  # shuffles are drawn on the CPU, then moved
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rows_per_read = max(config.batch_size, config.buffer_mb * 2**20 // (4 * store.dims))
    members = config.members

    best = torch.full((members,), math.inf, dtype=torch.float64)
    best_step = [0] * members
    bad = torch.zeros(members, dtype=torch.long)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    step, stopped = 0, False
    running = []

    def evaluate() -> bool:
        losses = _val_loss(model, store, val_rows, class_weights, rows_per_read)
        improved = losses < best
        state = model.state_dict()
        for m in torch.nonzero(improved)[:, 0].tolist():
            best[m], best_step[m] = losses[m], step
            for name, value in state.items():
                best_state[name][m].copy_(value[m])
        bad[:] = torch.where(improved, torch.zeros_like(bad), bad + 1)
        if progress is not None:
            progress(step, float(np.mean(running)) if running else math.nan, losses.tolist())
        running.clear()
        return bool((bad >= config.patience).all())

    model.train()
    for _ in range(config.max_epochs):
        order = torch.randperm(train_rows, generator=generator).numpy()
        for start in range(0, train_rows, rows_per_read):
            part = order[start : start + rows_per_read]
            features = store.read(part).to(device)
            labels = store.labels[torch.from_numpy(part)].to(device)
            count = len(part)
            shuffles = torch.argsort(torch.rand(members, count, generator=generator), dim=1).to(device)
            # Full batches only (BatchNorm needs more than one pixel); a buffer smaller than a batch is one batch.
            for first in range(0, max(count - config.batch_size, 0) + 1, config.batch_size):
                batch = shuffles[:, first : first + config.batch_size]
                loss_sum, weight_sum = _weighted_ce(model(features[batch]), labels[batch], class_weights)
                loss = (loss_sum / weight_sum.clamp(min=1e-12)).sum()  # each member's own mean loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running.append(loss.item() / members)
                step += 1
                if step % config.eval_every == 0 and evaluate():
                    stopped = True
                    break
            if stopped:
                break
        if stopped:
            break
    if step % config.eval_every:
        evaluate()
    model.load_state_dict(best_state)
    model.eval()
    report = TrainReport(
        steps=step,
        epochs=step * config.batch_size / train_rows,
        best_val_loss=best.tolist(),
        best_step=best_step,
        stopped_early=stopped,
        seconds=time.monotonic() - started,
        train_pixels=train_rows,
        val_pixels=len(val_rows),
    )
    return model, report


@dataclass(frozen=True)
class Vote:
    """Per-pixel ensemble decision: ``labels`` (majority vote, ties to the higher mean probability),
    ``disagreement`` (share of members outvoted, 0 = unanimous) and ``entropy`` (of the mean predicted
    distribution, divided by log(classes), so 0..1)."""

    labels: torch.Tensor
    disagreement: torch.Tensor
    entropy: torch.Tensor


def vote(logits: torch.Tensor, bias: torch.Tensor | None = None) -> Vote:
    """Combine member logits ``[M, P, C]`` into a ``Vote`` over the ``P`` pixels, after adding the per-class
    ``bias`` ``[C]`` (a prior correction, ``segment.calibrate``) to every member's logits."""
    members, _, classes = logits.shape
    logits = logits.float() if bias is None else logits.float() + bias.to(logits.device)
    mean = logits.softmax(dim=-1).mean(dim=0)
    votes = F.one_hot(logits.argmax(dim=-1), classes).sum(dim=0).float()
    labels = (votes + 0.5 * mean).argmax(dim=-1)  # mean probability < 1 only breaks ties between equal counts
    disagreement = 1.0 - votes.amax(dim=-1) / members
    entropy = -(mean * mean.clamp(min=1e-12).log()).sum(dim=-1) / math.log(classes)
    return Vote(labels, disagreement, entropy.clamp(0.0, 1.0))


@torch.no_grad()
def predict_maps(
    model: MLPEnsemble, maps: FeatureMaps, index: int, tile_mb: float = 64, bias: torch.Tensor | None = None
) -> Vote:
    """Vote maps ``[H, W]`` for image ``index`` of ``maps`` (logits shifted by ``bias``, see ``vote``),
    computed a band of rows at a time so that at most about ``tile_mb`` of features exist at once."""
    height, width = maps.size
    rows = max(1, int(tile_mb * 2**20 // (4 * width * maps.dims)))
    bands = range(0, height, rows)
    parts = [vote(model(maps.rows(index, start, min(start + rows, height))), bias) for start in bands]
    return Vote(
        *(
            torch.cat([getattr(p, name) for p in parts]).view(height, width)
            for name in ("labels", "disagreement", "entropy")
        )
    )
