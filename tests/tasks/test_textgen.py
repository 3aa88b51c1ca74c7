"""The text-conditioned model: captions, training, loading, sampling from prompts."""

import csv
import dataclasses

import pytest
import torch
from tests.conftest import tiny_textgen_config

from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.errors import UserError
from meddiff.tasks import load_task_config, textgen
from meddiff.text.encoders import load_text_encoder

FAST = SamplerConfig(name="ddim", steps=4, guidance_scale=2.0)


def test_a_run_holds_the_model_its_captions_and_its_alignment_network(trained_textgen):
    with (trained_textgen / "captions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 100 and rows[0]["caption"].startswith("T1-weighted brain MRI, axial slice, axial level 1/4")
    assert (trained_textgen / "text_alignment" / "state.json").is_file()
    model = textgen.load(trained_textgen)
    assert model.unet.config.context_dim == 384 and model.unet.config.in_channels == 1 + 4
    assert model.class_names == ["background", "other brain tissue", "grey matter", "white matter"]
    assert torch.equal(model.null.tokens, load_text_encoder().encode([""]).tokens)
    assert textgen.load_run_aligner(model) is not None


def test_sampling_from_prompts_gives_labelled_pairs(trained_textgen):
    model = textgen.load(trained_textgen)
    prompts = ["T1-weighted brain MRI, axial slice, axial level 2/4", "T1-weighted brain MRI, axial slice"]
    images, masks = textgen.generate_from_text(
        model.unet, model.diffusion, model.codec, model.encoder, model.null, prompts, FAST, seed=0, size=(32, 32)
    )
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1
    assert masks.shape == (2, 32, 32) and set(masks.unique().tolist()) <= {0, 1, 2, 3}


def test_the_prompt_changes_the_prediction(trained_textgen):
    model = textgen.load(trained_textgen)
    x, t = torch.randn(1, 5, 32, 32), torch.tensor([500])
    outputs = [
        model.unet(x, t, **model.conditioning(model.encoder.encode([p])).model_kwargs())
        for p in ("T1-weighted brain MRI, axial slice, axial level 1/4", "")
    ]
    assert (outputs[0] - outputs[1]).abs().mean() > 1e-4


def test_train_dispatches_on_the_task_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: textgen\ndata: {kind: brain_mri, size: 32}\ncaptions: {prefix: brain}\n")
    module, config = load_task_config(path)
    assert module is textgen and config.captions.prefix == "brain" and config.text_encoder == "minilm"


def test_cross_attention_needs_an_attention_level(tmp_path):
    config = tiny_textgen_config(steps=1, model={"attention_levels": []})
    with pytest.raises(UserError, match="attention_levels"):
        textgen.fit(config, tmp_path / "run", progress=False)


def test_image_only_data_needs_a_captions_file(tmp_path):
    from tests.data.makers import grey, write_image

    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig

    for i in range(2):
        write_image(tmp_path / "imgs" / f"case{i}.png", grey(32, 32, i))
    data = from_dict(DataConfig, {"kind": "image_folder", "root": str(tmp_path / "imgs"), "size": 32})
    config = dataclasses.replace(tiny_textgen_config(steps=1), data=data, joint_mask=False)
    with pytest.raises(UserError, match="captions file"):
        textgen.fit(config, tmp_path / "run", progress=False)
    (tmp_path / "captions.csv").write_text("name,caption\ncase0,a bright frame\ncase1,a dark frame\n")
    config = dataclasses.replace(
        config,
        captions=dataclasses.replace(config.captions, source="file", file=tmp_path / "captions.csv"),
        alignment=dataclasses.replace(config.alignment, steps=2, batch_size=2),
    )
    result = textgen.fit(config, tmp_path / "run", progress=False)
    assert result.step == 1 and textgen.load(tmp_path / "run").codec.num_classes == 0


@pytest.mark.slow
def test_tone_words_train_the_model_and_its_alignment_network(tmp_path):
    config = tiny_textgen_config(steps=2, tone={"prob": 0.5}, alignment={"steps": 2})
    textgen.fit(config, tmp_path / "run", progress=False)
    model = textgen.load(tmp_path / "run")
    assert model.stored["tone"]["prob"] == 0.5 and textgen.load_run_aligner(model) is not None


def test_a_run_saved_before_the_pooled_text_path_still_loads(trained_textgen, tmp_path):
    from meddiff.checkpoint import load_checkpoint, save_checkpoint
    from meddiff.rundir import list_checkpoints

    groups, state = load_checkpoint(list_checkpoints(trained_textgen)[-1])
    state["meddiff_version"] = "0.1.0"
    del state["config"]["model"]["context_pooled"]  # configs of 0.1 runs lack the field ...
    old = {g: {k: v for k, v in t.items() if not k.startswith("context_embed.")} for g, t in groups.items()}
    save_checkpoint(tmp_path / "step_0000001", old, state)  # ... and their weights the pooled path
    model = textgen.load(tmp_path / "step_0000001")
    assert model.unet.context_embed is None
