"""Training and sampling put every tensor on the model's device, checked on a CPU-only machine.

accelerate is made to report the ``meta`` device: a device that is not the CPU and that raises when it
meets a CPU tensor, as CUDA does. A forward pre-hook on the model checks that every input tensor is on
the model's device and then stops the run, so no real computation on ``meta`` is needed. The ``gpu``
tests do the same for real on CUDA.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from accelerate import Accelerator
from tests.conftest import tiny_generate_config, tiny_textgen_config
from tests.tasks.test_pix2pix import tiny_pix2pix_config
from tests.tasks.test_segmenter import _config as tiny_segmenter_config
from tests.tasks.test_synthesize import tiny_synth_config

from meddiff.data.arrays import ArrayDataset
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.tasks import generate, pix2pix, segmenter, synthesize, textgen
from meddiff.text.captions import Captioner
from meddiff.train.engine import TrainConfig, Trainer

META = torch.device("meta")


class ReachedTheModel(Exception):
    """Raised by the pre-hook once the model has received its inputs."""


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def stop_at_the_model(model: torch.nn.Module) -> None:
    """Make ``model`` check that its inputs share its device, then raise ``ReachedTheModel``."""

    def hook(module, args, kwargs):
        device = next(module.parameters()).device
        wrong = [tuple(t.shape) for t in _tensors((args, kwargs)) if t.device != device]
        assert not wrong, f"inputs of shapes {wrong} are not on the model's device {device}"
        raise ReachedTheModel

    model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture
def meta_accelerator(monkeypatch):
    """accelerate places models on ``meta``; every model it prepares stops at its first forward."""
    monkeypatch.setattr(Accelerator, "device", property(lambda self: META))
    prepare = Accelerator.prepare

    def prepare_and_watch(self, *objects, **kwargs):
        prepared = prepare(self, *objects, **kwargs)
        for obj in prepared if isinstance(prepared, tuple) else (prepared,):
            if isinstance(obj, torch.nn.Module):  # a container (pix2pix's pair) is entered through its parts
                for part in (obj, *obj.children()):
                    stop_at_the_model(part)
        return prepared

    monkeypatch.setattr(Accelerator, "prepare", prepare_and_watch)


def _tiny_unet(in_channels: int = 1, **changes) -> UNet:
    return UNet(
        UNetConfig(
            in_channels=in_channels,
            out_channels=in_channels,
            base_channels=8,
            channel_mults=[1, 2],
            blocks_per_level=1,
            attention_levels=[],
            norm_groups=4,
            **changes,
        )
    )


def _train_config() -> TrainConfig:
    return TrainConfig(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=10, sample_every=10)


def test_the_engine_moves_batches_noise_and_conditioning_to_the_model_device(meta_accelerator, tmp_path):
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    dataset = ArrayDataset(
        images, None, [f"x{i}" for i in range(4)], attributes=torch.tensor([0, 1, 0, 1]), attribute_names=["a", "b"]
    )
    diffusion = Diffusion(NoiseConfig())
    model = _tiny_unet(num_classes=2)
    seen = {}

    def loss_fn(net, batch, generator):
        seen["generator"] = generator.device
        cond = generate.attribute_conditioning(batch["attribute"], 2)
        return diffusion.loss(net, batch["image"], cond, generator, cond_drop_prob=0.5)

    trainer = Trainer(tmp_path / "run", model, dataset, _train_config(), loss_fn, {"task": "test"}, progress=False)
    with pytest.raises(ReachedTheModel):
        trainer.fit()
    assert next(model.parameters()).device == META
    assert seen["generator"] == torch.device("cpu")  # seeds give the same numbers on every device


@pytest.mark.parametrize("task", ["generate", "synthesize", "pix2pix", "textgen", "segmenter"])
def test_every_task_trains_with_its_inputs_on_the_model_device(task, meta_accelerator, tmp_path, monkeypatch):
    run = tmp_path / "run"
    if task == "generate":
        config = dataclasses.replace(tiny_generate_config(steps=2), conditional=True)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, levels=2))
        fit = generate.fit
    elif task == "synthesize":
        config, fit = tiny_synth_config(steps=2), synthesize.fit
    elif task == "pix2pix":
        config, fit = tiny_pix2pix_config(steps=2), pix2pix.fit
    elif task == "textgen":  # captions read mask values, which meta tensors do not have; a GPU has them
        monkeypatch.setattr(Captioner, "__call__", lambda self, batch: ["a brain slice"] * len(batch["name"]))
        config, fit = tiny_textgen_config(steps=2), textgen.fit
    else:
        config, fit = tiny_segmenter_config(steps=2), segmenter.fit
    with pytest.raises(ReachedTheModel):
        fit(config, run, progress=False)


def test_sampling_puts_noise_and_conditioning_on_the_model_device():
    from meddiff.diffusion.conditioning import Conditioning
    from meddiff.diffusion.sampling import sample

    model = _tiny_unet(num_classes=2).to(META)
    stop_at_the_model(model)
    cond = Conditioning(class_labels=torch.tensor([0, 1]), null_class=2)
    sampler = SamplerConfig(name="ddim", steps=2, guidance_scale=2.0)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(ReachedTheModel):
        sample(model, Diffusion(NoiseConfig()), sampler, (2, 1, 16, 16), cond, generator=generators)


def _stop_at_the_encoder(monkeypatch) -> None:
    """Make ``DomainCNN.encode`` check that its input shares the network's device, then stop the run."""
    from meddiff.metrics.domain_net import DomainCNN

    def encode(self, prepared):
        device = next(self.parameters()).device
        assert prepared.device == device, f"views on {prepared.device}, the network on {device}"
        raise ReachedTheModel

    monkeypatch.setattr(DomainCNN, "encode", encode)


def test_the_domain_network_trains_with_its_views_on_its_device(monkeypatch):
    from meddiff.metrics.domain_net import DomainTrainConfig, train_domain_net

    _stop_at_the_encoder(monkeypatch)
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    with pytest.raises(ReachedTheModel):
        train_domain_net(images, train_config=DomainTrainConfig(steps=1, batch_size=2), device=META)


def test_the_text_aligner_trains_with_its_views_and_texts_on_its_device(monkeypatch):
    from meddiff.metrics.text_alignment import AlignmentTrainConfig, train_aligner

    _stop_at_the_encoder(monkeypatch)
    images, pooled = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 8)
    with pytest.raises(ReachedTheModel):
        train_aligner(images, pooled, ["a", "b", "a", "b"], AlignmentTrainConfig(steps=1, batch_size=2), device=META)
