"""The one training loop of meddiff, on accelerate.

One CPU process by default; ``accelerate launch --num_processes N`` runs the same code on several GPUs
or machines (DDP). The global batch (``batch_size``) is split over processes and gradient-accumulation
micro-steps, so results do not depend on how many processes share the work.

Exact resume: the data order is a pure function of (seed, position in the stream), and every source of
randomness (torch's global RNG for dropout and augmentation, the generator drawing noise and timesteps)
is saved per process in the checkpoint, so an interrupted-then-resumed run computes the same losses as an
uninterrupted one.

Devices: accelerate places the model (one GPU per process under ``accelerate launch``, else the CPU) and
supplies mixed precision (bf16 on CPU and GPU, fp16 with loss scaling on GPU). Batches and the EMA weights
follow the model; random numbers are drawn on the CPU and moved (``meddiff.devices``), so a seed gives the
same noise on every device and the generator's state can be checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, send_to_device
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset, default_collate
from torch.utils.tensorboard import SummaryWriter

from meddiff import __version__
from meddiff.errors import UserError
from meddiff.train.checkpoint import (
    checkpoint_name,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from meddiff.train.progress import TrainProgress

LossFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]
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
    grad_clip: float = 1.0
    ema_decay: float = 0.999
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
    ``run_dir`` (config.yaml is written by the caller; checkpoints/, samples/, logs/ here)."""

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
    ):
        self.run_dir, self.model, self.dataset, self.config = Path(run_dir), model, dataset, config
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
        # cpu=True when no GPU: lets `accelerate launch --multi_gpu` / torchrun start several CPU processes (gloo).
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            cpu=not torch.accelerator.is_available(),
        )
        rank, world = accelerator.process_index, accelerator.num_processes
        per_step = cfg.grad_accum * world
        if cfg.batch_size % per_step:
            raise UserError(
                f"train.batch_size {cfg.batch_size} must be divisible by grad_accum x processes = {per_step}"
            )
        micro_batch = cfg.batch_size // per_step

        torch.manual_seed(cfg.seed + rank)
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + rank + 1)
        model = self.model
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
        lr_scheduler = get_scheduler(
            schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps
        )
        ema = EMAModel(model.parameters(), decay=cfg.ema_decay)

        prepared_model, prepared_optimizer = accelerator.prepare(model, optimizer)
        device = accelerator.device
        ema.to(device)
        step, validation = 0, _Validation()
        if resume:
            checkpoints = list_checkpoints(self.run_dir)
            if checkpoints:
                step, validation = self._restore(
                    checkpoints[-1], model, optimizer, lr_scheduler, ema, generator, rank, device
                )
                if accelerator.is_main_process:
                    console.print(f"resuming from {checkpoints[-1]} (step {step})")
            elif accelerator.is_main_process:
                console.print(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}, starting from step 0")

        logs = self.run_dir / "logs"
        writer = None
        if accelerator.is_main_process:
            logs.mkdir(parents=True, exist_ok=True)
            self._truncate_log(logs / "train.jsonl", step)
            writer = SummaryWriter(str(logs))

        result = TrainResult(step=step)
        started = time.monotonic()
        last_saved = step if resume and step else None
        budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        with TrainProgress(cfg.steps, step, self.progress and accelerator.is_main_process, budget) as bar:
            while step < cfg.steps:
                prepared_model.train()
                total = torch.zeros((), device=device)
                for micro in range(cfg.grad_accum):
                    batch = self._batch(step * cfg.grad_accum + micro, micro_batch, rank, world, device)
                    with accelerator.accumulate(prepared_model):
                        with accelerator.autocast():
                            loss = self.loss_fn(prepared_model, batch, generator)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.grad_clip > 0:
                            accelerator.clip_grad_norm_(prepared_model.parameters(), cfg.grad_clip)
                        prepared_optimizer.step()
                        prepared_optimizer.zero_grad(set_to_none=True)
                    total += loss.detach().float() / cfg.grad_accum
                lr_scheduler.step()
                ema.step(model.parameters())
                step += 1
                step_loss = accelerator.reduce(total, reduction="mean").item() if world > 1 else total.item()
                if not math.isfinite(step_loss):
                    raise RuntimeError(f"loss became {step_loss} at step {step}; lower train.lr or check the data")
                result.losses[step] = step_loss
                elapsed = time.monotonic() - started
                if accelerator.is_main_process:
                    bar.update(step, step_loss)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        self._log(logs, writer, step, step_loss, lr_scheduler.get_last_lr()[0], elapsed)
                    if self.sample_fn is not None and step % cfg.sample_every == 0:
                        self._sample(ema, model, step)
                stop_early = False
                if cfg.eval_every and step % cfg.eval_every == 0:
                    stop_early = self._validate(
                        accelerator, step, model, optimizer, lr_scheduler, ema, generator, validation, logs, writer
                    )
                out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
                if world > 1:
                    out_of_time = broadcast_object_list([out_of_time])[0]
                if step % cfg.checkpoint_every == 0 or out_of_time or stop_early or step == cfg.steps:
                    result.checkpoint = self._save(
                        accelerator, step, model, optimizer, lr_scheduler, ema, generator, validation
                    )
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
            result.checkpoint = self._save(
                accelerator, step, model, optimizer, lr_scheduler, ema, generator, validation
            )
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
    def _log(self, logs: Path, writer: SummaryWriter, step: int, loss: float, lr: float, elapsed: float) -> None:
        with open(logs / "train.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "lr": lr, "elapsed_s": round(elapsed, 3)}) + "\n")
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)

    @staticmethod
    def _truncate_log(path: Path, step: int) -> None:
        """Drop log lines past the resumed step (they belong to the interrupted attempt)."""
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    @staticmethod
    def _with_ema(ema: EMAModel, model: nn.Module, fn: Callable[[], object]) -> object:
        """Run ``fn`` with the EMA weights in ``model`` (eval mode), then put the training weights back."""
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        model.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            ema.restore(model.parameters())
            model.train()

    def _sample(self, ema: EMAModel, model: nn.Module, step: int) -> None:
        """Write a sample grid with the EMA weights, leaving the training weights and RNGs untouched."""
        self._with_ema(
            ema, model, lambda: self.sample_fn(model, self.run_dir / "samples" / f"{checkpoint_name(step)}.png")
        )

    def _validate(
        self,
        accelerator: Accelerator,
        step: int,
        model: nn.Module,
        optimizer,
        lr_scheduler,
        ema: EMAModel,
        generator: torch.Generator,
        validation: _Validation,
        logs: Path,
        writer: SummaryWriter | None,
    ) -> bool:
        """Score the EMA model; keep the best in checkpoints/best; True when patience has run out."""
        score = float(self._with_ema(ema, model, lambda: self.eval_fn(model)))
        if accelerator.is_main_process:
            with open(logs / "train.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "val": score}) + "\n")
            writer.add_scalar("val/score", score, step)
        if score < validation.best:
            validation.best, validation.best_step, validation.bad = score, step, 0
            self._save(accelerator, step, model, optimizer, lr_scheduler, ema, generator, validation, name="best")
        else:
            validation.bad += 1
        return bool(self.config.patience) and validation.bad >= self.config.patience

    def _save(
        self,
        accelerator: Accelerator,
        step: int,
        model: nn.Module,
        optimizer,
        lr_scheduler,
        ema: EMAModel,
        generator: torch.Generator,
        validation: _Validation,
        name: str | None = None,
    ) -> Path:
        cuda_state = torch.cuda.get_rng_state() if accelerator.device.type == "cuda" else None
        rng_states = gather_object([(torch.get_rng_state(), generator.get_state(), cuda_state)])
        path = self.run_dir / "checkpoints" / (name or checkpoint_name(step))
        if accelerator.is_main_process:
            names = [name for name, _ in model.named_parameters()]
            rng = {}
            for rank, (global_state, gen_state, cuda_state) in enumerate(rng_states):
                rng[f"global.{rank}"], rng[f"generator.{rank}"] = global_state, gen_state
                if cuda_state is not None:  # dropout on a GPU draws from the GPU's generator
                    rng[f"cuda.{rank}"] = cuda_state
            optimizer_tensors: dict[str, torch.Tensor] = {}
            optimizer_json = flatten_state(optimizer.state_dict(), optimizer_tensors)
            ema_scalars = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
            state = {
                "step": step,
                "meddiff_version": __version__,
                "processes": accelerator.num_processes,
                "config": self.run_config,
                "optimizer": optimizer_json,
                "lr_scheduler": lr_scheduler.state_dict(),
                "ema": ema_scalars,
                "validation": dataclasses.asdict(validation),
            }
            save_checkpoint(
                path,
                {
                    "model": model.state_dict(),
                    "ema": dict(zip(names, ema.shadow_params, strict=True)),
                    "optimizer": optimizer_tensors,
                    "rng": rng,
                },
                state,
            )
            for old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return path

    def _restore(
        self,
        path: Path,
        model: nn.Module,
        optimizer,
        lr_scheduler,
        ema: EMAModel,
        generator: torch.Generator,
        rank: int,
        device: torch.device,
    ) -> tuple[int, _Validation]:
        """Load a checkpoint into the already placed model, optimizer and EMA (tensors go to ``device``)."""
        groups, state = load_checkpoint(path)
        saved_model = state.get("config", {}).get("model")
        if saved_model is not None and saved_model != self.run_config.get("model"):
            raise UserError(
                f"{path}: the checkpoint's model config differs from this run's config; "
                "resume with the run's own config.yaml"
            )
        model.load_state_dict(groups["model"])
        optimizer.load_state_dict(unflatten_state(state["optimizer"], groups["optimizer"]))
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        names = [name for name, _ in model.named_parameters()]
        ema.load_state_dict({**state["ema"], "shadow_params": [groups["ema"][n].clone() for n in names]})
        ema.to(device)
        rng = groups["rng"]
        if f"global.{rank}" in rng:
            torch.set_rng_state(rng[f"global.{rank}"])
            generator.set_state(rng[f"generator.{rank}"])
        if f"cuda.{rank}" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng[f"cuda.{rank}"])
        return int(state["step"]), _Validation(**state.get("validation", {}))


@lru_cache(maxsize=4)
def _permutation(seed: int, n: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of the seed, so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
