"""Shared, cached fixtures: real brain MRI slices and a small deterministic random-init feature network."""

import pytest
import torch

from meddiff.data.samples import brain_mri
from meddiff.metrics.domain_net import DomainCNN, DomainNetConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: one thread is faster than two, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def brain_slices() -> torch.Tensor:
    """133 axial MNI152 T1 slices, ``[133, 1, 32, 32]`` in [-1, 1], ordered inferior to superior (1 mm apart)."""
    return brain_mri(size=32).images


@pytest.fixture(scope="session")
def random_feature_net() -> DomainCNN:
    """Tiny seeded random-init CNN (64-d features): fast, deterministic, no weights needed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = DomainCNN(DomainNetConfig(in_channels=1, image_size=32, widths=(8, 16, 32, 64)), name="test-random-cnn")
    return net.eval()
