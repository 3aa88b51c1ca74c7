"""The one training loop of meddiff, on accelerate.

One CPU process by default; ``accelerate launch --num_processes N`` runs the same code on several GPUs
or machines (DDP). The global batch (``batch_size``) is split over processes and gradient-accumulation
micro-steps, so results do not depend on how many processes share the work.

Exact resume: the data order is a pure function of (seed, position in the stream), and every source of
randomness (torch's global RNG for dropout and augmentation, the generator drawing noise and timesteps)
is saved per process in the checkpoint, so an interrupted-then-resumed run computes the same losses as an
uninterrupted one.

Several optimisers (pix2pix's generator and discriminator): ``param_groups`` names each optimiser's
parameters and ``loss_fn`` yields ``(name, loss)`` pairs in turn; each loss is back-propagated and its
optimiser stepped before the next loss is computed, and a group already stepped takes no gradient from the
later losses of the step (its ``requires_grad`` is off until the step ends). Such runs use one process.

Devices: accelerate places the model (one GPU per process under ``accelerate launch``, else the CPU) and
supplies mixed precision (bf16 on CPU and GPU, fp16 with loss scaling on GPU). Batches and the EMA weights
follow the model; random numbers are drawn on the CPU and moved (``meddiff.devices``), so a seed gives the
same noise on every device and the generator's state can be checkpointed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, gather_object, send_to_device
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset, default_collate
from torch.utils.tensorboard import SummaryWriter

from meddiff import __version__
from meddiff.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from meddiff.devices import use_bf16
from meddiff.errors import UserError
from meddiff.progress import TrainProgress
from meddiff.rundir import RunDir

# One optimiser: the loss. Several (``param_groups``): ``(group name, loss)`` pairs, stepped in turn.
LossFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor | Iterator[tuple[str, torch.Tensor]]]
SampleFn = Callable[[nn.Module, Path], None]
EvalFn = Callable[[nn.Module], float]  # a validation score of the (EMA) model; lower is better
console = Console(stderr=True)


@dataclass
class TrainConfig:
    """Optimisation, precision, budget and bookkeeping of a training run."""

    steps: int = 2000
    batch_size: int = 16  # global: split over processes and accumulation micro-steps
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0  # 0: no clipping
    ema_decay: float = 0.999  # 0: no EMA (samples and validation then use the training weights)
    # EMA decay at step s, capped at ema_decay: 1 - (1 + s) ** -ema_power when > 0 (diffusers' EMAModel
    # warm-up; 2/3 to 3/4 in the literature), else diffusers' default warm-up (1 + s) / (10 + s)
    ema_power: float = 0.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # fp16 (with loss scaling) needs a GPU
    seed: int = 0
    max_minutes: float | None = None  # stop cleanly (and checkpoint) after this much training time
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 0  # run the task's validation every N steps (0: never); the best goes to checkpoints/best
    patience: int = 0  # stop after this many validations without improvement (0: never stop early)

    def __post_init__(self):
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "sample_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.patience < 0:
            raise ValueError("eval_every and patience must be >= 0")
        if self.patience and not self.eval_every:
            raise ValueError("patience needs eval_every > 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_power < 0:
            raise ValueError(f"ema_power must be >= 0, got {self.ema_power}")


@dataclass
class TrainResult:
    """What a ``fit`` call did: the step reached, losses of the steps it ran, time, and why it stopped."""

    step: int
    losses: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by_budget: bool = False
    stopped_early: bool = False
    checkpoint: Path | None = None
    best_step: int | None = None  # with validation: the step of the best score (saved in checkpoints/best)
    best_score: float | None = None


@dataclass
class _Validation:
    """Early-stopping state; stored in checkpoints so that resume continues it."""

    best: float = math.inf
    best_step: int = 0
    bad: int = 0


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (model initialisation, dropout, augmentation)."""
    torch.manual_seed(seed)


class Trainer:
    """Trains ``model`` on ``dataset`` with ``loss_fn(model, batch, generator)``; writes everything under
    ``run_dir`` (config.yaml is written by the caller, ``RunDir.prepare``; checkpoints/, samples/, logs/ here).

    ``param_groups`` (default: one group ``model`` of every parameter) names the optimisers; the first
    group's loss is the one logged as ``loss``, the others as ``loss_<name>``.
    """

    def __init__(
        self,
        run_dir: Path,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        loss_fn: LossFn,
        run_config: dict,
        sample_fn: SampleFn | None = None,
        progress: bool = True,
        eval_fn: EvalFn | None = None,
        param_groups: dict[str, list[nn.Parameter]] | None = None,
    ):
        self.run_dir, self.model, self.dataset, self.config = Path(run_dir), model, dataset, config
        self.run = RunDir(self.run_dir)
        self.param_groups = param_groups or {"model": list(model.parameters())}
        self.loss_fn, self.sample_fn, self.run_config, self.progress = loss_fn, sample_fn, run_config, progress
        self.eval_fn = eval_fn
        if len(dataset) == 0:
            raise UserError("the training dataset is empty")
        if config.eval_every and eval_fn is None:
            raise UserError("train.eval_every is set but this task has no validation")

    def _batch(self, micro_index: int, micro_batch: int, rank: int, world: int, device: torch.device) -> dict:
        """The ``rank``'s share of global micro-batch ``micro_index`` of the endless shuffled stream, on
        ``device``.

        Not a ``DataLoader`` through ``accelerator.prepare``: accelerate's loader reads one batch ahead, so
        the augmentation of batch k+1 (torch's global RNG) would be drawn before step k and a resumed run
        would augment differently; indexing the stream by position keeps resume exact at any step.
        """
        n = len(self.dataset)
        start = (micro_index * world + rank) * micro_batch
        positions = range(start, start + micro_batch)
        indices = [int(_permutation(self.config.seed, n, p // n)[p % n]) for p in positions]
        return send_to_device(default_collate([self.dataset[i] for i in indices]), device)

    # -- main loop ----------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``config.steps`` (or the time budget), resuming from the latest checkpoint if asked."""
        cfg = self.config
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("train.mixed_precision fp16 needs a CUDA GPU; use bf16 on the CPU")
        on_gpu = torch.accelerator.is_available()
        device = torch.accelerator.current_accelerator() if on_gpu else torch.device("cpu")
        precision = "no" if cfg.mixed_precision == "bf16" and not use_bf16(device, True) else cfg.mixed_precision
        _forget_other_precision(precision)
        # cpu=True when no GPU: lets `accelerate launch --multi_gpu` / torchrun start several CPU processes (gloo).
        accelerator = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=cfg.grad_accum,
            cpu=not on_gpu,
        )
        rank, world = accelerator.process_index, accelerator.num_processes
        per_step = cfg.grad_accum * world
        if cfg.batch_size % per_step:
            raise UserError(
                f"train.batch_size {cfg.batch_size} must be divisible by grad_accum x processes = {per_step}"
            )
        micro_batch = cfg.batch_size // per_step
        if world > 1 and len(self.param_groups) > 1:
            raise UserError("runs with several optimisers (pix2pix) train in one process; launch without accelerate")

        torch.manual_seed(cfg.seed + rank)
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + rank + 1)
        model = self.model
        optimizers = {
            name: torch.optim.AdamW(
                params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
            )
            for name, params in self.param_groups.items()
        }
        schedule = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
        lr_schedulers = {
            name: get_scheduler(schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
            for name, opt in optimizers.items()
        }
        ema = None
        if cfg.ema_decay:
            warmup = dict(use_ema_warmup=True, power=cfg.ema_power) if cfg.ema_power else {}
            ema = EMAModel(model.parameters(), decay=cfg.ema_decay, **warmup)

        prepared_model, *prepared = accelerator.prepare(model, *optimizers.values())
        prepared_optimizers = dict(zip(optimizers, prepared, strict=True))
        device = accelerator.device
        if ema is not None:
            ema.to(device)
        state = _State(optimizers, lr_schedulers, ema, generator)
        step, validation = 0, _Validation()
        if resume:
            checkpoints = self.run.list_checkpoints()
            if checkpoints:
                step, validation = self._restore(checkpoints[-1], model, state, rank, device)
                if accelerator.is_main_process:
                    console.print(f"resuming from {checkpoints[-1]} (step {step})")
            elif accelerator.is_main_process:
                console.print(f"--resume: no checkpoint in {self.run.checkpoints}, starting from step 0")

        writer = None
        if accelerator.is_main_process:
            self.run.start_log(step)
            writer = SummaryWriter(str(self.run.logs))

        result = TrainResult(step=step)
        started = time.monotonic()
        last_saved = step if resume and step else None
        budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        with TrainProgress(cfg.steps, step, self.progress and accelerator.is_main_process, budget) as bar:
            while step < cfg.steps:
                prepared_model.train()
                totals = {name: torch.zeros((), device=device) for name in optimizers}
                for micro in range(cfg.grad_accum):
                    batch = self._batch(step * cfg.grad_accum + micro, micro_batch, rank, world, device)
                    with accelerator.accumulate(prepared_model):
                        for name, loss in self._losses(accelerator, prepared_model, batch, generator):
                            accelerator.backward(loss)
                            if accelerator.sync_gradients and cfg.grad_clip > 0:
                                accelerator.clip_grad_norm_(self.param_groups[name], cfg.grad_clip)
                            prepared_optimizers[name].step()
                            prepared_optimizers[name].zero_grad(set_to_none=True)
                            totals[name] += loss.detach().float() / cfg.grad_accum
                for lr_scheduler in lr_schedulers.values():
                    lr_scheduler.step()
                if ema is not None:
                    ema.step(model.parameters())
                step += 1
                losses = {
                    name: accelerator.reduce(total, reduction="mean").item() if world > 1 else total.item()
                    for name, total in totals.items()
                }
                step_loss = next(iter(losses.values()))
                if not all(math.isfinite(v) for v in losses.values()):
                    raise RuntimeError(f"loss became {losses} at step {step}; lower train.lr or check the data")
                result.losses[step] = step_loss
                elapsed = time.monotonic() - started
                if accelerator.is_main_process:
                    bar.update(step, step_loss)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        lr = next(iter(lr_schedulers.values())).get_last_lr()[0]
                        self._log(writer, step, losses, lr, elapsed)
                    if self.sample_fn is not None and step % cfg.sample_every == 0:
                        self._sample(ema, model, step)
                stop_early = False
                if cfg.eval_every and step % cfg.eval_every == 0:
                    stop_early = self._validate(accelerator, step, model, state, validation, writer)
                out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
                if world > 1:
                    out_of_time = broadcast_object_list([out_of_time])[0]
                if step % cfg.checkpoint_every == 0 or out_of_time or stop_early or step == cfg.steps:
                    result.checkpoint = self._save(accelerator, step, model, state, validation)
                    last_saved = step
                if stop_early:
                    result.stopped_early = True
                    if accelerator.is_main_process:
                        console.print(
                            f"early stop at step {step}: no better validation for {cfg.patience} "
                            f"evaluations (best {validation.best:.4g} at step {validation.best_step})"
                        )
                    break
                if out_of_time:
                    result.stopped_by_budget = True
                    if accelerator.is_main_process:
                        console.print(f"time budget of {cfg.max_minutes} min reached at step {step}; saved")
                    break
        if last_saved != step:
            result.checkpoint = self._save(accelerator, step, model, state, validation)
        if cfg.eval_every and validation.best_step:
            result.best_step, result.best_score = validation.best_step, validation.best
        if accelerator.is_main_process and self.sample_fn is not None and step % cfg.sample_every:
            self._sample(ema, model, step)
        if writer is not None:
            writer.close()
        # Rank 0 may still be drawing the final sample grid; a rank that tears the process group down
        # before then leaves rank 0 waiting forever in end_training's collective teardown.
        accelerator.wait_for_everyone()
        accelerator.end_training()
        result.step, result.seconds = step, time.monotonic() - started
        return result

    # -- helpers ------------------------------------------------------------------------------------------
    def _losses(
        self, accelerator: Accelerator, model: nn.Module, batch: dict, generator: torch.Generator
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The step's ``(group, loss)`` pairs, each computed under autocast after the previous group was
        stepped; a stepped group takes no gradient from the later losses."""
        with accelerator.autocast():
            losses = self.loss_fn(model, batch, generator)
        if isinstance(losses, torch.Tensor):
            yield next(iter(self.param_groups)), losses
            return
        frozen: list[nn.Parameter] = []
        try:
            while True:
                with accelerator.autocast():
                    pair = next(losses, None)
                if pair is None:
                    return
                yield pair
                for p in self.param_groups[pair[0]]:
                    if p.requires_grad:
                        p.requires_grad_(False)
                        frozen.append(p)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _log(self, writer: SummaryWriter, step: int, losses: dict[str, float], lr: float, elapsed: float) -> None:
        names = list(losses)
        record = {"step": step, "loss": losses[names[0]], **{f"loss_{n}": losses[n] for n in names[1:]}}
        self.run.log({**record, "lr": lr, "elapsed_s": round(elapsed, 3)})
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"train/{key}", value, step)
        writer.add_scalar("train/lr", lr, step)

    @staticmethod
    def _with_ema(ema: EMAModel | None, model: nn.Module, fn: Callable[[], object]) -> object:
        """Run ``fn`` with the EMA weights (if any) in ``model`` (eval mode), then put the training weights
        back."""
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        model.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            if ema is not None:
                ema.restore(model.parameters())
            model.train()

    def _sample(self, ema: EMAModel | None, model: nn.Module, step: int) -> None:
        """Write a sample grid with the EMA weights, leaving the training weights and RNGs untouched."""
        self._with_ema(ema, model, lambda: self.sample_fn(model, self.run.sample_png(step)))

    def _validate(
        self,
        accelerator: Accelerator,
        step: int,
        model: nn.Module,
        state: _State,
        validation: _Validation,
        writer: SummaryWriter | None,
    ) -> bool:
        """Score the EMA model; keep the best in checkpoints/best; True when patience has run out."""
        score = float(self._with_ema(state.ema, model, lambda: self.eval_fn(model)))
        if accelerator.is_main_process:
            self.run.log({"step": step, "val": score})
            writer.add_scalar("val/score", score, step)
        if score < validation.best:
            validation.best, validation.best_step, validation.bad = score, step, 0
            self._save(accelerator, step, model, state, validation, path=self.run.best)
        else:
            validation.bad += 1
        return bool(self.config.patience) and validation.bad >= self.config.patience

    def _save(
        self,
        accelerator: Accelerator,
        step: int,
        model: nn.Module,
        state: _State,
        validation: _Validation,
        path: Path | None = None,
    ) -> Path:
        cuda_state = torch.cuda.get_rng_state() if accelerator.device.type == "cuda" else None
        rng_states = gather_object([(torch.get_rng_state(), state.generator.get_state(), cuda_state)])
        path = path or self.run.checkpoint(step)
        if accelerator.is_main_process:
            rng = {}
            for rank, (global_state, gen_state, cuda_state) in enumerate(rng_states):
                rng[f"global.{rank}"], rng[f"generator.{rank}"] = global_state, gen_state
                if cuda_state is not None:  # dropout on a GPU draws from the GPU's generator
                    rng[f"cuda.{rank}"] = cuda_state
            groups: dict[str, dict[str, torch.Tensor]] = {"model": model.state_dict(), "rng": rng}
            optimizers = {}
            for name, optimizer in state.optimizers.items():
                groups[f"optimizer_{name}"] = {}
                optimizers[name] = flatten_state(optimizer.state_dict(), groups[f"optimizer_{name}"])
            record = {
                "step": step,
                "meddiff_version": __version__,
                "processes": accelerator.num_processes,
                "config": self.run_config,
                "optimizers": optimizers,
                "lr_schedulers": {name: sched.state_dict() for name, sched in state.lr_schedulers.items()},
                "validation": dataclasses.asdict(validation),
            }
            if state.ema is not None:
                names = [name for name, _ in model.named_parameters()]
                groups["ema"] = dict(zip(names, state.ema.shadow_params, strict=True))
                record["ema"] = {k: v for k, v in state.ema.state_dict().items() if k != "shadow_params"}
            save_checkpoint(path, groups, record)
            self.run.prune(self.config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def _restore(
        self, path: Path, model: nn.Module, state: _State, rank: int, device: torch.device
    ) -> tuple[int, _Validation]:
        """Load a checkpoint into the already placed model, optimizers and EMA (tensors go to ``device``)."""
        groups, record = load_checkpoint(path)
        saved = record.get("config", {})
        if saved.get("model") is not None and saved["model"] != self.run_config.get("model"):
            raise UserError(
                f"{path}: the checkpoint's model config differs from this run's config; "
                "resume with the run's own config.yaml"
            )
        saved_noise, noise = saved.get("noise") or {}, self.run_config.get("noise") or {}
        changed = sorted(k for k in saved_noise.keys() & noise.keys() if saved_noise[k] != noise[k])
        if changed:  # another objective: the resumed run would no longer be the one that was started
            key = changed[0]
            raise UserError(
                f"{path}: the checkpoint trained with noise.{key} {saved_noise[key]!r}, this run's config has "
                f"{noise[key]!r}; set it in the config or resume with the run's own config.yaml"
            )
        if "optimizers" not in record:
            raise UserError(f"{path}: written by meddiff {record.get('meddiff_version')}, whose layout cannot resume")
        if set(record["optimizers"]) != set(state.optimizers):
            raise UserError(f"{path}: the checkpoint's optimisers {sorted(record['optimizers'])} are not this run's")
        model.load_state_dict(groups["model"])
        for name, optimizer in state.optimizers.items():
            optimizer.load_state_dict(unflatten_state(record["optimizers"][name], groups[f"optimizer_{name}"]))
            state.lr_schedulers[name].load_state_dict(record["lr_schedulers"][name])
        if state.ema is not None:
            if "ema" not in groups:
                raise UserError(f"{path}: the checkpoint has no EMA weights; resume with the run's own config.yaml")
            names = [name for name, _ in model.named_parameters()]
            shadow = [groups["ema"][n].clone() for n in names]
            state.ema.load_state_dict({**record["ema"], "shadow_params": shadow})
            state.ema.to(device)
        rng = groups["rng"]
        if f"global.{rank}" in rng:
            torch.set_rng_state(rng[f"global.{rank}"])
            state.generator.set_state(rng[f"generator.{rank}"])
        if f"cuda.{rank}" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng[f"cuda.{rank}"])
        return int(record["step"]), _Validation(**record.get("validation", {}))


@dataclass
class _State:
    """What a checkpoint restores besides the model: optimisers and schedules by group, EMA, noise RNG."""

    optimizers: dict[str, torch.optim.Optimizer]
    lr_schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    ema: EMAModel | None
    generator: torch.Generator


def _forget_other_precision(mixed_precision: str) -> None:
    """Let a second run in the same process (a notebook, a benchmark) use another precision.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a new ``Accelerator`` whose mixed
    precision differs; it has no public call to change it, so its own reset (also what its tests use) drops
    the per-run state. The process-level ``PartialState`` (devices, process group) is kept.
    """
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


@lru_cache(maxsize=4)
def _permutation(seed: int, n: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of the seed, so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
