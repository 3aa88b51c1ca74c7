"""FID and KID between real and generated images with a pluggable feature network (torchmetrics' math).

``select_feature_net`` picks the network: Inception-v3 when the user has its weights in a local file,
otherwise meddiff's domain network trained on the real images (see ``domain_net`` for what its numbers
can be compared with). Features are extracted once per image set with ``features.extract_features``
and handed to torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` through an
identity "feature network", so the (possibly expensive) feature network runs once for both metrics and
cached real features can be reused across evaluations (``scores_from_features``).

Small sets: FID needs at least 2 images per set and is biased upward below a few thousand (the usual
protocol uses >= 2048 when D = 2048; with fewer images than feature dimensions the covariances are
rank-deficient), so a warning is issued below 2048 images and FIDs should only be compared at equal
set sizes. KID is unbiased and is the better number for small sets; its subset size is capped at the
smaller set size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from meddiff.errors import UserError
from meddiff.metrics.domain_net import DomainNetConfig, DomainTrainConfig, train_domain_net, train_or_load_domain_net
from meddiff.metrics.features import FeatureNet, Images, extract_features
from meddiff.metrics.inception import load_inception

FID_RELIABLE_SAMPLES = 2048


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics can be fed features computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def select_feature_net(
    real: torch.Tensor,
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    net_config: DomainNetConfig | None = None,
    train_config: DomainTrainConfig | None = None,
) -> FeatureNet:
    """The feature network for FID/KID against the real images ``real``.

    Inception-v3 from the local file ``inception_weights`` when given (a missing file is a ``UserError``
    naming it, never a download); otherwise the domain network trained on ``real``, reused from
    ``cache_dir`` when it was trained there before with the same data and settings.
    """
    if inception_weights is not None:
        return load_inception(inception_weights)
    if cache_dir is not None:
        return train_or_load_domain_net(real, cache_dir, net_config, train_config)
    return train_domain_net(real, net_config, train_config)[0]


def scores_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    feature_net_name: str,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict:
    """FID and KID from features ``real`` ``[N, D]`` and ``fake`` ``[M, D]`` (see ``generative_scores``)."""
    for arg, feats in (("real", real), ("fake", fake)):
        if feats.dim() != 2:
            raise UserError(f"'{arg}' features must be [N, D], got shape {tuple(feats.shape)}")
        if feats.shape[0] < 2:
            raise UserError(f"'{arg}' has {feats.shape[0]} image(s); FID and KID need at least 2")
    if kid_subset_size < 2 or kid_subsets < 1:
        raise UserError(
            f"'kid_subset_size' must be >= 2 and 'kid_subsets' >= 1, got {kid_subset_size} and {kid_subsets}"
        )
    if real.shape[1] != fake.shape[1]:
        raise UserError(f"'real' and 'fake' features differ in size ({real.shape[1]} vs {fake.shape[1]})")
    n_real, n_fake = real.shape[0], fake.shape[0]
    if min(n_real, n_fake) < FID_RELIABLE_SAMPLES:
        warnings.warn(
            f"FID on {min(n_real, n_fake)} images is biased upward (reference protocols use >= "
            f"{FID_RELIABLE_SAMPLES}); compare FIDs only at equal set sizes, prefer KID",
            UserWarning,
            stacklevel=2,
        )
    subset = min(kid_subset_size, n_real, n_fake)

    identity = _Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=identity, subsets=kid_subsets, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real.float(), real=True)
        metric.update(fake.float(), real=False)
    # KID draws its random subsets from torch's global RNG: seed a private copy of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
        "kid_subsets": kid_subsets,
        "n_real": n_real,
        "n_fake": n_fake,
        "feature_net": feature_net_name,
    }


def generative_scores(
    real: Images,
    fake: Images,
    feature_net: FeatureNet,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """FID, KID mean/std and the feature network's name for ``real`` vs ``fake`` images.

    ``real``/``fake``: ``[N, C, H, W]`` tensors in [-1, 1] or iterables of such batches (streamed through
    the feature network ``batch_size`` at a time; only the features are kept). KID uses ``kid_subsets``
    random subsets of ``min(kid_subset_size, N, M)`` images, drawn with ``seed``. Returns a dict with
    ``fid``, ``kid_mean``, ``kid_std``, ``kid_subset_size``, ``kid_subsets``, ``n_real``, ``n_fake`` and
    ``feature_net`` (numbers are comparable only between results with the same ``feature_net``).
    """
    real_features = extract_features(real, feature_net, batch_size)
    fake_features = extract_features(fake, feature_net, batch_size)
    return scores_from_features(real_features, fake_features, feature_net.name, kid_subset_size, kid_subsets, seed)
