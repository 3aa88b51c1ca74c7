"""meddiff.load: one handle per task with a shared shape; docs/api.md runs as written."""

import re

import pytest
import torch
from tests.conftest import REPO

import meddiff
from meddiff.errors import UserError
from meddiff.tasks.generate import GenerateConfig, GeneratorModel


def test_import_meddiff_exposes_load():
    assert callable(meddiff.load)
    with pytest.raises(AttributeError):
        meddiff.no_such_thing  # noqa: B018


def test_a_joint_run_samples_images_and_masks_reproducibly(trained_generator):
    model = meddiff.load(trained_generator[0], device="cpu")
    assert isinstance(model, GeneratorModel) and isinstance(model.config, GenerateConfig)
    assert model.device == torch.device("cpu") and model.to("auto") is model
    pairs = model.sample(n=4, steps=10, seed=0)
    c = model.codec.image_channels
    assert pairs.images.shape == (4, c, 32, 32) and pairs.masks.shape == (4, 32, 32)
    assert pairs.masks.dtype == torch.int64 and pairs.images.device.type == "cpu"
    again = model.sample(n=2, steps=10, seed=1)
    assert torch.allclose(again.images[0], pairs.images[1], atol=1e-4)  # sample i comes from seed + i alone


def test_a_folder_that_is_no_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        meddiff.load(tmp_path)


def test_an_unknown_device_is_refused():
    from meddiff.devices import resolve_device

    with pytest.raises(UserError, match="--device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.slow
def test_the_api_guide_runs_as_written(tmp_path, monkeypatch):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "api_guide"})
    assert (tmp_path / "runs/api-demo/joint-samples/manifest.json").is_file()
