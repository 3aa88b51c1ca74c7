"""The bf16 rule: honoured where the hardware computes bf16 natively, fp32 (with one warning) elsewhere."""

import warnings

import pytest
import torch
from tests.conftest import tiny_generate_config

from meddiff import devices
from meddiff.tasks import generate
from meddiff.train import engine


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    monkeypatch.setattr(devices, "_warned_emulated", set())


def test_bf16_is_used_where_the_device_computes_it_natively(monkeypatch):
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert devices.use_bf16(torch.device("cpu"), True)
    with devices.bf16_autocast(torch.device("cpu"), True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_falls_back_to_fp32_with_one_warning_where_it_would_be_emulated(cpu_without_bf16):
    with pytest.warns(UserWarning, match="no native bf16"):
        assert not devices.use_bf16(torch.device("cpu"), True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not devices.use_bf16(torch.device("cpu"), True)  # warned once already
        with devices.bf16_autocast(torch.device("cpu"), True):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_nothing_asks_for_bf16_unless_told(cpu_without_bf16):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not devices.use_bf16(torch.device("cpu"), False)


def test_native_bf16_answers_for_this_machine_without_raising():
    assert isinstance(devices.native_bf16(torch.device("cpu")), bool)


def test_training_asked_for_bf16_runs_in_fp32_on_a_cpu_without_it(cpu_without_bf16, tmp_path, monkeypatch):
    asked = []
    real = engine.Accelerator

    def recording(*args, **kwargs):
        asked.append(kwargs["mixed_precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "Accelerator", recording)
    with pytest.warns(UserWarning, match="running in fp32"):
        result = generate.fit(tiny_generate_config(steps=1, mixed_precision="bf16"), tmp_path / "run", progress=False)
    assert result.step == 1 and asked == ["no"]
