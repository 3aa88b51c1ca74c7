"""The trainer: learning, exact resume, time budget, logs, and several processes through accelerate."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from diffusers.training_utils import EMAModel
from tests.conftest import tiny_generate_config

from meddiff import devices
from meddiff.checkpoint import load_checkpoint
from meddiff.config import from_dict, to_dict
from meddiff.data.build import DataConfig
from meddiff.errors import UserError
from meddiff.rundir import list_checkpoints
from meddiff.tasks import generate


def _resume_config():
    config = tiny_generate_config(steps=6, batch_size=4, grad_accum=2, checkpoint_every=3)
    return dataclasses.replace(  # dropout and flips make every RNG matter
        config,
        data=from_dict(DataConfig, {"kind": "brain_mri", "size": 32, "hflip": True}),
        model=dataclasses.replace(config.model, dropout=0.1),
    )


def test_short_training_lowers_the_loss(trained_generator):
    _, result = trained_generator
    losses = list(result.losses.values())
    assert len(losses) == 120
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20


def test_interrupted_then_resumed_run_has_exactly_the_same_losses(tmp_path, monkeypatch):
    uninterrupted = generate.fit(_resume_config(), tmp_path / "full", progress=False)

    real_step = EMAModel.step

    def killed_during_step_5(self, parameters):
        if self.optimization_step == 4:
            raise RuntimeError("simulated kill")
        return real_step(self, parameters)

    monkeypatch.setattr(EMAModel, "step", killed_during_step_5)
    with pytest.raises(RuntimeError, match="simulated kill"):
        generate.fit(_resume_config(), tmp_path / "run", progress=False)
    monkeypatch.setattr(EMAModel, "step", real_step)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000003"]

    resumed = generate.fit(_resume_config(), tmp_path / "run", resume=True, progress=False)
    assert list(resumed.losses) == [4, 5, 6]
    assert resumed.losses == {s: uninterrupted.losses[s] for s in (4, 5, 6)}
    final_full = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])[0]
    final_resumed = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])[0]
    for group in ("model", "ema"):
        for name, tensor in final_full[group].items():
            assert torch.equal(tensor, final_resumed[group][name]), f"{group}.{name}"
    logged = [json.loads(line)["step"] for line in (tmp_path / "run/logs/train.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_resuming_with_another_noise_config_is_refused_naming_the_key(tmp_path):
    config = tiny_generate_config(steps=1)
    generate.fit(config, tmp_path / "run", progress=False)
    weighted = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, steps=2),
        noise=dataclasses.replace(config.noise, loss_weighting="min_snr"),
    )
    with pytest.raises(UserError, match=r"noise\.loss_weighting 'none'"):
        generate.fit(weighted, tmp_path / "run", resume=True, progress=False)


def test_training_over_an_existing_run_needs_resume(tmp_path):
    config = tiny_generate_config(steps=1)
    generate.fit(config, tmp_path / "run", progress=False)
    with pytest.raises(Exception, match="--resume"):
        generate.fit(config, tmp_path / "run", progress=False)


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    config = tiny_generate_config(steps=50, max_minutes=1e-4)
    result = generate.fit(config, tmp_path / "run", progress=False)
    assert result.stopped_by_budget and result.step < 50
    assert load_checkpoint(result.checkpoint)[1]["step"] == result.step
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, steps=result.step + 2, max_minutes=None)
    )
    assert generate.fit(config, tmp_path / "run", resume=True, progress=False).step == result.step + 2


def test_run_folder_layout(trained_generator):
    run, result = trained_generator
    assert (run / "config.yaml").is_file() and (run / "logs" / "train.jsonl").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "logs").iterdir())
    assert (run / "samples" / "step_0000120.png").is_file()  # a grid at the end of training
    state = load_checkpoint(result.checkpoint)[1]
    assert state["config"]["task"] == "generate" and state["step"] == 120


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_launch(tmp_path):
    config = tiny_generate_config(steps=3, batch_size=4, checkpoint_every=3)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": "generate", **to_dict(config)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "meddiff.cli",
        "train",
        str(tmp_path / "config.yaml"),
        "--out",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    groups, state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["step"] == 3 and state["processes"] == 2
    assert {"global.0", "global.1", "generator.0", "generator.1"} <= set(groups["rng"])


def test_validation_keeps_the_best_checkpoint_and_stops_early(tmp_path):
    from torch import nn

    from meddiff.data.arrays import ArrayDataset
    from meddiff.train.engine import TrainConfig, Trainer

    data = ArrayDataset(torch.rand(8, 1, 4, 4), None, [str(i) for i in range(8)])
    model = nn.Conv2d(1, 1, 3, padding=1)
    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0])

    def loss_fn(net, batch, generator):
        return (net(batch["image"]) - batch["image"]).pow(2).mean()

    config = TrainConfig(steps=50, batch_size=2, warmup_steps=0, eval_every=2, patience=2, checkpoint_every=100)
    result = Trainer(tmp_path, model, data, config, loss_fn, {}, progress=False, eval_fn=lambda net: next(scores)).fit()
    assert result.stopped_early and result.step == 8
    assert (result.best_step, result.best_score) == (4, 2.0)
    assert load_checkpoint(tmp_path / "checkpoints" / "best")[1]["step"] == 4
    assert load_checkpoint(result.checkpoint)[1]["validation"] == {"best": 2.0, "best_step": 4, "bad": 2}
    logged = [json.loads(line) for line in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["val"] for r in logged if "val" in r] == [3.0, 2.0, 2.5, 2.6]


class _TwoParameters(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))


def _two_group_run(run_dir, loss_fn, steps=5, resume=False, **train):
    """Train ``a`` (group ``first``) and ``b`` (group ``second``) from zero, with fresh seeds."""
    from meddiff.data.arrays import ArrayDataset
    from meddiff.train.engine import TrainConfig, Trainer

    torch.manual_seed(0)
    model = _TwoParameters()
    dataset = ArrayDataset(torch.zeros(4, 1, 2, 2), None, ["0", "1", "2", "3"])
    config = TrainConfig(steps=steps, batch_size=2, lr=0.1, warmup_steps=0, grad_clip=0.0, ema_decay=0.0, **train)
    groups = {"first": [model.a], "second": [model.b]}
    trainer = Trainer(run_dir, model, dataset, config, loss_fn, {}, progress=False, param_groups=groups)
    return model, trainer.fit(resume=resume)


def test_several_optimisers_step_in_turn_and_a_stepped_group_takes_no_later_gradient(tmp_path):
    def pulls(model, batch, generator):
        yield "first", (model.a - 1) ** 2
        yield "second", (model.b - 2) ** 2 + 100 * model.a  # would drag `a` down if it reached it

    def only_a(model, batch, generator):
        yield "first", (model.a - 1) ** 2
        yield "second", (model.b - 2) ** 2

    both, result = _two_group_run(tmp_path / "two", pulls)
    alone, _ = _two_group_run(tmp_path / "one", only_a)
    assert torch.equal(both.a, alone.a) and both.a > 0  # the second loss never reached `a`
    assert 0 < both.b < 2 and both.a.requires_grad and both.b.requires_grad
    log = [json.loads(line) for line in (tmp_path / "two/logs/train.jsonl").read_text().splitlines()]
    assert {"loss", "loss_second"} <= set(log[-1]) and log[-1]["loss"] == result.losses[5]
    state = load_checkpoint(result.checkpoint)[1]
    assert set(state["optimizers"]) == {"first", "second"} and "ema" not in state


def test_a_run_with_several_optimisers_resumes_exactly(tmp_path):
    def noisy(model, batch, generator):
        yield "first", (model.a - torch.randn((), generator=generator)) ** 2
        yield "second", (model.b - model.a.detach()) ** 2

    _, full = _two_group_run(tmp_path / "full", noisy)
    _two_group_run(tmp_path / "run", noisy, steps=2)
    _, resumed = _two_group_run(tmp_path / "run", noisy, resume=True)
    assert resumed.losses == {s: full.losses[s] for s in (3, 4, 5)}


def test_runs_in_one_process_may_use_different_precisions(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)  # bf16 even where it is emulated
    for precision in ("no", "bf16", "no"):  # a notebook training one run after another
        result = generate.fit(tiny_generate_config(steps=1, mixed_precision=precision), tmp_path / precision / "run")
        assert result.step == 1
        shutil.rmtree(tmp_path / precision)


@pytest.mark.parametrize("power", [0.0, 0.75])
def test_ema_warm_up_follows_the_configured_power(power, tmp_path, monkeypatch):
    """ema_power 0: diffusers' default warm-up (1 + s) / (10 + s); > 0: 1 - (1 + s) ** -power; both capped."""
    decays, real_step = [], EMAModel.step

    def recording_step(self, parameters):
        real_step(self, parameters)
        decays.append(self.cur_decay_value)

    monkeypatch.setattr(EMAModel, "step", recording_step)
    config = tiny_generate_config(steps=4, ema_decay=0.9, ema_power=power)
    generate.fit(config, tmp_path / "run", progress=False)
    warm = [(1 + s) / (10 + s) for s in (1, 2, 3)] if power == 0 else [1 - (1 + s) ** -power for s in (1, 2, 3)]
    assert decays == pytest.approx([0.0, *(min(d, 0.9) for d in warm)])


def test_a_negative_ema_power_is_refused():
    with pytest.raises(ValueError, match="ema_power"):
        dataclasses.replace(tiny_generate_config(steps=1).train, ema_power=-1.0)
