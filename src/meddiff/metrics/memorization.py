"""Memorisation check for small training sets: is a generated image a (near) copy of a training image?

For each generated image: the distance ``d`` to its nearest training image and that image's index.
A generated image is a *likely copy* when ``d`` is below ``threshold``, the ``percentile``-th percentile
(default 1st) of the nearest-neighbour distances that *real* images have to the training set:

- ``heldout`` given (recommended): distances from held-out real images (not used for training) to the
  training set. ``threshold`` is then the distance below which only ``percentile`` % of genuinely new
  images from the same distribution fall, so about that fraction of novel generated images is flagged
  by chance; a fraction of likely copies well above ``percentile`` % signals memorisation.
- otherwise: leave-one-out distances within the training set (each training image to its nearest other
  training image). When the training set contains near-duplicates (neighbouring slices of one volume,
  several scans of one patient) these distances are small, so the threshold is low and the check
  conservative: it still catches exact and near-exact copies, but misses looser ones (and exact
  duplicates inside the training set make it 0, flagging nothing). Hold-out images
  should come from other volumes/patients (or slices well apart from every training slice), else they
  are near-duplicates themselves.

Why a percentile of real distances rather than the d1/d2 ratio test used in some memorisation papers:
the ratio test calls an image a copy when it is much closer to one training image than to the second
closest, which fails exactly in medical training sets full of near-duplicates (the second neighbour of a
copied slice is the adjacent slice, almost as close), and it does not say how close is too close for
this dataset. The percentile is calibrated on the data itself.

Space (``feature_net``): ``None`` (default) compares pixels: images resized to ``pixel_size`` (32) with
antialiasing, distance = root-mean-square pixel difference in [-1, 1] units. That targets literal
copies, needs no trained network and is easy to interpret. Pass a ``FeatureNet`` (e.g. the domain
network) to compare in its feature space instead, which also catches flipped/shifted/re-contrasted
copies but is only as meaningful as the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meddiff.errors import UserError
from meddiff.metrics.features import FeatureNet, extract_features, match_size

# Entries of one block of the distance matrix (128 MB in float64, used so exact copies give 0).
MAX_DISTANCE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class MemorizationReport:
    """Result of ``memorization_check``; tensors are indexed like the generated images."""

    distances: torch.Tensor  # [G] distance of each generated image to its nearest training image
    nearest: torch.Tensor  # [G] int64 index of that training image
    likely_copy: torch.Tensor  # [G] bool, distances < threshold
    threshold: float
    percentile: float
    reference: str  # "heldout" or "train-leave-one-out"
    reference_distances: torch.Tensor  # the real nearest-neighbour distances the threshold came from
    space: str  # "pixels-<size>" or the feature network's name

    @property
    def fraction_copies(self) -> float:
        """Fraction of generated images flagged as likely copies."""
        return float(self.likely_copy.float().mean())

    def summary(self) -> dict:
        """Plain-data summary (no per-image lists)."""
        return {
            "fraction_copies": self.fraction_copies,
            "num_copies": int(self.likely_copy.sum()),
            "num_generated": len(self.distances),
            "threshold": self.threshold,
            "percentile": self.percentile,
            "reference": self.reference,
            "space": self.space,
        }


def nearest_neighbours(
    query: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False, max_elements: int = MAX_DISTANCE_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each row of ``query`` ``[Q, D]`` to its nearest row of ``reference``
    ``[R, D]`` and that row's index, computed in blocks of at most ``max_elements`` distances.

    ``exclude_self``: ``query`` is ``reference`` and row i may not match itself (leave-one-out).
    """
    if reference.shape[0] < (2 if exclude_self else 1):
        raise UserError("the training set is too small for nearest-neighbour distances")
    rows = max(1, max_elements // reference.shape[0])
    reference = reference.double()
    dists, indices = [], []
    for start in range(0, query.shape[0], rows):
        block = torch.cdist(query[start : start + rows].double(), reference)
        if exclude_self:
            own = torch.arange(start, start + block.shape[0])
            block[torch.arange(block.shape[0]), own] = float("inf")
        d, i = block.min(dim=1)
        dists.append(d.float())
        indices.append(i)
    return torch.cat(dists), torch.cat(indices)


def pixel_embedding(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``[N, C*size*size]`` vectors whose Euclidean distance is the RMS pixel difference at ``size``."""
    small = match_size(images.float(), size)
    return small.flatten(1) / small[0].numel() ** 0.5


def _embed(images: torch.Tensor, feature_net: FeatureNet | None, pixel_size: int, batch_size: int) -> torch.Tensor:
    if feature_net is None:
        return torch.cat([pixel_embedding(b, pixel_size) for b in images.split(batch_size)])
    return extract_features(images, feature_net, batch_size)


def memorization_check(
    generated: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor | None = None,
    feature_net: FeatureNet | None = None,
    pixel_size: int = 32,
    percentile: float = 1.0,
    batch_size: int = 64,
) -> MemorizationReport:
    """Flag generated images that are likely copies of training images (see the module docstring).

    ``generated``, ``train``, ``heldout``: ``[N, C, H, W]`` images in [-1, 1] (sizes may differ between
    sets; channel counts must match in pixel space). Returns a ``MemorizationReport``.
    """
    if not 0 < percentile < 100:
        raise UserError(f"'percentile' must be between 0 and 100, got {percentile}")
    sets = {"generated": generated, "train": train, "heldout": heldout}
    for arg, images in sets.items():
        if images is not None and (images.dim() != 4 or images.shape[0] == 0):
            raise UserError(f"'{arg}' must be a non-empty [N, C, H, W] batch, got shape {tuple(images.shape)}")
        if feature_net is None and images is not None and images.shape[1] != train.shape[1]:
            raise UserError(f"'{arg}' has {images.shape[1]} channels but 'train' has {train.shape[1]}")

    train_emb = _embed(train, feature_net, pixel_size, batch_size)
    distances, nearest = nearest_neighbours(_embed(generated, feature_net, pixel_size, batch_size), train_emb)
    if heldout is not None:
        reference_distances, _ = nearest_neighbours(_embed(heldout, feature_net, pixel_size, batch_size), train_emb)
        reference = "heldout"
    else:
        reference_distances, _ = nearest_neighbours(train_emb, train_emb, exclude_self=True)
        reference = "train-leave-one-out"
    threshold = float(torch.quantile(reference_distances.double(), percentile / 100))
    return MemorizationReport(
        distances=distances,
        nearest=nearest,
        likely_copy=distances < threshold,
        threshold=threshold,
        percentile=percentile,
        reference=reference,
        reference_distances=reference_distances,
        space=f"pixels-{pixel_size}" if feature_net is None else feature_net.name,
    )
