"""On a CUDA GPU: one real training step and one sampling call of each engine task (skipped elsewhere)."""

import dataclasses

import pytest
import torch
from tests.conftest import tiny_generate_config
from tests.tasks.test_pix2pix import tiny_pix2pix_config
from tests.tasks.test_segmenter import _config as tiny_segmenter_config
from tests.tasks.test_synthesize import tiny_synth_config

import meddiff
from meddiff.tasks import generate, pix2pix, segmenter, synthesize

pytestmark = pytest.mark.gpu  # skipped where no CUDA GPU is visible (tests/conftest.py)


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_generate_trains_and_samples_on_the_gpu(precision, tmp_path):
    config = tiny_generate_config(steps=2, mixed_precision=precision)
    result = generate.fit(config, tmp_path / "run", progress=False)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    model = meddiff.load(tmp_path / "run", device="cuda")
    assert model.device.type == "cuda"
    pairs = model.sample(2, steps=3, seed=0)
    assert pairs.images.shape == (2, 1, 32, 32) and pairs.masks.shape == (2, 32, 32)


def test_synthesize_trains_and_samples_on_the_gpu(tmp_path):
    synthesize.fit(tiny_synth_config(steps=2), tmp_path / "run", progress=False)
    model = meddiff.load(tmp_path / "run", device="cuda")
    images = model.synthesize(torch.zeros(2, 32, 32, dtype=torch.long), steps=3)
    assert images.shape == (2, 1, 32, 32) and images.device.type == "cpu"


def test_pix2pix_trains_and_synthesizes_on_the_gpu(tmp_path):
    pix2pix.fit(tiny_pix2pix_config(steps=2), tmp_path / "run", progress=False)
    model = meddiff.load(tmp_path / "run", device="cuda")
    assert model.synthesize(torch.zeros(2, 32, 32, dtype=torch.long)).shape == (2, 1, 32, 32)


def test_segmenter_trains_and_segments_on_the_gpu(tmp_path):
    segmenter.fit(tiny_segmenter_config(steps=3), tmp_path / "run", progress=False)
    model = meddiff.load(tmp_path / "run", device="cuda")
    assert model.segment(torch.zeros(2, 1, 40, 40)).shape == (2, 40, 40)


def test_resume_on_the_gpu_is_exact(tmp_path):
    config = tiny_generate_config(steps=6, checkpoint_every=3)
    whole = generate.fit(config, tmp_path / "whole", progress=False)
    first = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=3))
    generate.fit(first, tmp_path / "parts", progress=False)
    resumed = generate.fit(config, tmp_path / "parts", resume=True, progress=False)
    assert [resumed.losses[s] for s in (4, 5, 6)] == [whole.losses[s] for s in (4, 5, 6)]


def test_the_pixel_ensemble_trains_on_the_gpu_from_a_cpu_store():
    from tests.segment.test_ensemble import _separable_store

    from meddiff.segment.ensemble import EnsembleConfig, train_ensemble, vote

    store = _separable_store(1200)
    config = EnsembleConfig(members=3, hidden=[16, 8], eval_every=10, patience=3, max_epochs=20)
    model, _ = train_ensemble(store, 1000, 3, config, seed=0, device="cuda")
    held_out = torch.arange(1000, 1200)
    labels = vote(model(store.read(held_out).cuda())).labels.cpu()
    assert next(model.parameters()).device.type == "cuda" and (labels == store.labels[held_out]).float().mean() > 0.95


def test_the_domain_network_and_text_aligner_train_on_the_gpu_as_on_the_cpu():
    from meddiff.metrics.domain_net import DomainTrainConfig, train_domain_net
    from meddiff.metrics.text_alignment import AlignmentTrainConfig, train_aligner

    images, pooled = torch.rand(8, 1, 32, 32) * 2 - 1, torch.randn(8, 16)
    config = DomainTrainConfig(steps=3, batch_size=4)
    (_, on_cpu), (net, on_gpu) = (train_domain_net(images, train_config=config, device=d) for d in ("cpu", "cuda"))
    assert next(net.parameters()).device.type == "cpu" and on_gpu == pytest.approx(on_cpu, rel=1e-3)
    captions, aligner_config = ["a", "b"] * 4, AlignmentTrainConfig(steps=3, batch_size=4)
    on_cpu, on_gpu = (train_aligner(images, pooled, captions, aligner_config, device=d)[1] for d in ("cpu", "cuda"))
    assert on_gpu == pytest.approx(on_cpu, rel=1e-3)
