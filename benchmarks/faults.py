"""Reliability in figures: SIGKILL every training task at random moments, resume, and compare with an
uninterrupted run; SIGKILL the commands that write output folders mid-write; tabulate the broken-input
corpus of ``tests/robustness``.

    python -m benchmarks.faults                    # 20 kills per task, 5 per output command, the corpus
    python -m benchmarks.faults --kills 3 --tasks generate --outputs sample   # the quick version

Kills are chosen by event, not only by wall time, so that they land inside checkpoint writes: a child
process (``--child SPEC``) installs one hook, then runs the ``meddiff`` command line, and kills itself with
SIGKILL at the chosen moment:

- ``time:S``     S seconds after the child starts (imports, data loading, run-folder preparation);
- ``step:N``     once the log record of training step N is written;
- ``log:N``      half-way through writing the log record of step N (a torn line);
- ``file:K``     after the K-th safetensors file of this process's checkpoints is written (mid-checkpoint);
- ``replace:K``  just before the K-th ``os.replace`` (the commit of a checkpoint, config, sample grid, log
                 rewrite or output folder);
- ``prune:K``    after the K-th checkpoint is complete, before older ones are pruned;
- ``save:K``     inside the K-th ``PIL.Image.save`` (an output command writing its images).

Each training task trains one run folder to the end through a sequence of killed-and-resumed processes (a
finished run starts a new life from scratch until the kills are used up). After every kill, every complete
checkpoint must load; every training loss any process logged must equal the uninterrupted run's at that
step; each finished life's final checkpoint must equal the uninterrupted run's, tensor for tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.common import RESULTS, machine, markdown_table

TASKS = ["generate", "synthesize", "pix2pix", "textgen", "fuse", "segment", "segmenter"]
OUTPUTS = ["sample", "synth run", "segment predict", "fuse run"]
BRAIN = {"kind": "brain_mri", "size": 32}
TRAIN = {"batch_size": 8, "lr": 2e-3, "warmup_steps": 5, "log_every": 1, "sample_every": 10, "checkpoint_every": 4}
STEPS = 24


# -- the child: one hook, then the command line -------------------------------------------------------------
def _die(where: str) -> None:
    print(f"fault: killed at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _install(spec: str) -> None:
    """Arm the kill described by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    count = {"n": 0}

    def nth() -> bool:
        count["n"] += 1
        return count["n"] == int(arg)

    if kind == "time":
        threading.Timer(float(arg), _die, args=(f"{float(arg):.2f} s after start",)).start()
    elif kind in ("step", "log"):
        from meddiff.rundir import RunDir

        log = RunDir.log

        def logged(self, record: dict) -> None:
            if record["step"] >= int(arg) and kind == "log":
                with open(self.log_file, "a") as f:
                    f.write(json.dumps(record)[:20])
                _die(f"log write of step {record['step']}")
            log(self, record)
            if record["step"] >= int(arg):
                _die(f"step {record['step']}")

        RunDir.log = logged  # type: ignore[method-assign]
    elif kind == "file":
        from meddiff import checkpoint

        save_file = checkpoint.save_file

        def saved(tensors, filename):
            save_file(tensors, filename)
            if nth():
                _die(f"checkpoint write ({Path(filename).parent.name}, after {Path(filename).name})")

        checkpoint.save_file = saved
    elif kind == "replace":
        replace = os.replace

        def replaced(src, dst, *args, **kwargs):
            if nth():
                _die(f"commit of {Path(dst).parent.name}/{Path(dst).name}")
            return replace(src, dst, *args, **kwargs)

        os.replace = replaced
    elif kind == "prune":
        from meddiff.rundir import RunDir

        prune = RunDir.prune

        def pruned(self, keep: int) -> None:
            if nth():
                _die("after a checkpoint, before pruning")
            prune(self, keep)

        RunDir.prune = pruned  # type: ignore[method-assign]
    elif kind == "save":
        save = Image.Image.save

        def image_saved(self, fp, *args, **kwargs):
            if nth():
                _die(f"image write {Path(str(fp)).name}")
            return save(self, fp, *args, **kwargs)

        Image.Image.save = image_saved  # type: ignore[method-assign]
    elif kind != "none":
        raise SystemExit(f"unknown kill spec {spec}")


def child(spec: str, args: list[str]) -> None:
    _install(spec)
    from meddiff.cli import main

    sys.argv = ["meddiff", *args]
    main()


def run_child(spec: str, args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run ``meddiff ARGS`` in a child with the kill ``spec``; returns (exit code, where it died or '')."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.faults", "--child", spec, "--", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    where = next(
        (line[len("fault: killed at ") :] for line in done.stderr.splitlines() if line.startswith("fault:")), ""
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"meddiff {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, where


# -- the tasks' tiny configs and data --------------------------------------------------------------------------
def _brain_folders(work: Path) -> Path:
    """``work/pairs`` (images/, masks/) and ``work/fusion`` (MRI/, PET/ look-alikes) from the brain slices."""
    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig, build_dataset

    brain = build_dataset(from_dict(DataConfig, {"kind": "brain_mri", "size": 32}))
    for sub in ("pairs/images", "pairs/masks", "fusion/MRI", "fusion/PET", "new"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    for i in range(30, 110, 10):
        image = ((brain.images[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
        mask = brain.masks[i].numpy().astype(np.uint8)
        Image.fromarray(image).save(work / "pairs" / "images" / f"z{i}.png")
        Image.fromarray(mask).save(work / "pairs" / "masks" / f"z{i}.png")
        Image.fromarray(image).save(work / "fusion" / "MRI" / f"z{i}.png")
        Image.fromarray((mask * 60).astype(np.uint8)).save(work / "fusion" / "PET" / f"z{i}.png")
        Image.fromarray(image).save(work / "new" / f"z{i}.png")
    return work


def task_config(task: str, work: Path) -> dict:
    """A config of ``task`` small enough that a process trains it in seconds."""
    train = {"steps": STEPS, **TRAIN, "ema_decay": 0.9}
    unet = {"base_channels": 16, "channel_mults": [1, 2], "attention_levels": [1], "norm_groups": 8}
    sampler = {"name": "ddim", "steps": 4}
    if task == "generate":  # image-only, so that segment fit can take its features
        return {
            "data": BRAIN,
            "model": unet,
            "train": train,
            "sampler": sampler,
            "grid_samples": 4,
            "joint_mask": False,
        }
    if task == "synthesize":
        model = {**unet, "blocks_per_level": 1, "spade_hidden": 16}
        return {
            "data": BRAIN,
            "model": model,
            "train": train,
            "sampler": sampler,
            "grid_samples": 2,
        }
    if task == "pix2pix":
        model = {"base_channels": 16, "max_channels": 64, "depth": 5, "disc_channels": 16, "norm_groups": 8}
        keys = ("steps", "log_every", "sample_every", "checkpoint_every")
        plain = {k: train[k] for k in keys} | {"batch_size": 4, "lr": 1e-3}  # a GAN: no warm-up, no EMA
        return {"data": BRAIN, "model": model, "train": plain, "grid_samples": 2}
    if task == "textgen":
        return {
            "data": {**BRAIN, "levels": 4},
            "model": {**unet, "blocks_per_level": 1},
            "train": train,
            "sampler": {"name": "ddim", "steps": 4, "guidance_scale": 2.0},
            "alignment": {"steps": 10, "image_size": 32},
            "grid_samples": 4,
        }
    if task == "fuse":
        return {
            "data": {"kind": "paired_folder", "root": str(work / "fusion"), "modalities": ["MRI", "PET"], "size": 32},
            "model": {"channels": [4, 8, 8], "heads": [2, 2], "blocks": [1, 1], "emb_dim": 8},
            "train": {**train, "batch_size": 4},
            "sampler": {"name": "ddim", "steps": 3},
        }
    if task == "segmenter":
        train = {**train, "batch_size": 4, "ema_decay": 0.5, "eval_every": 3, "patience": 100}
        return {"data": BRAIN, "model": {"base_channels": 8, "depth": 3}, "train": train}
    if task == "segment":
        return {
            "diffusion": str(work / "reference" / "generate"),
            "data": {"kind": "image_mask_folder", "root": str(work / "pairs"), "size": 32, "class_names": CLASSES},
            "features": {"blocks": [2, 4], "timesteps": [50, 200], "batch_size": 4},
            "pixels": {"max_pixels": 1500, "val_pixels": 300},
            "ensemble": {"members": 2, "hidden": [16, 8], "eval_every": 5, "patience": 100, "max_epochs": 4},
        }
    raise ValueError(task)


CLASSES = ["background", "other brain tissue", "grey matter", "white matter"]


def train_args(task: str, config: Path, out: Path, resume: bool) -> list[str]:
    if task == "segment":  # segment fit retrains from scratch: a rerun is its resume
        return ["segment", "fit", str(config), "--out", str(out)]
    return ["train", str(config), "--out", str(out), *(["--resume"] if resume else [])]


# -- checks ---------------------------------------------------------------------------------------------------
def _load_all(run: Path) -> tuple[int, int]:
    """(complete checkpoints, those that fail to load) of a run folder."""
    from meddiff.checkpoint import load_checkpoint
    from meddiff.errors import UserError
    from meddiff.rundir import RunDir

    found = RunDir(run).list_checkpoints()
    bad = 0
    for path in found:
        try:
            load_checkpoint(path)
        except (UserError, ValueError, KeyError, OSError):
            bad += 1
    return len(found), bad


def _losses(run: Path) -> dict[int, float]:
    from meddiff.rundir import RunDir

    return {r["step"]: r["loss"] for r in RunDir(run).read_log() if "loss" in r}


def _compare_losses(run: Path, since: int, reference: dict[int, float], row: TaskRow) -> None:
    """Count the losses the last process logged (steps after ``since``, where it resumed) and those that
    differ from the uninterrupted run's."""
    new = {step: loss for step, loss in (_losses(run) if run.exists() else {}).items() if step > since}
    row.losses_checked += len(new)
    row.losses_differing += sum(reference.get(step) != loss for step, loss in new.items())


def _same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    from meddiff.checkpoint import load_checkpoint

    (groups_a, state_a), (groups_b, state_b) = load_checkpoint(a), load_checkpoint(b)
    if groups_a.keys() != groups_b.keys() or state_a.get("step") != state_b.get("step"):
        return False
    return all(
        tensors.keys() == groups_b[g].keys() and all(torch.equal(t, groups_b[g][k]) for k, t in tensors.items())
        for g, tensors in groups_a.items()
    )


def _leftovers(run: Path) -> int:
    """Temporaries of killed writes left in the run folder (``files.stale_temporary``)."""
    from meddiff.files import stale_temporary

    return sum(1 for p in run.rglob(".*") if stale_temporary(p))


def _checkpoints(run: Path) -> list[Path]:
    from meddiff.rundir import RunDir

    return RunDir(run).list_checkpoints() if run.exists() else []


def _latest_step(run: Path) -> int:
    found = _checkpoints(run)
    return int(found[-1].name.removeprefix("step_")) if found else 0


@dataclass
class TaskRow:
    task: str
    kills: int = 0
    where: dict[str, int] = field(default_factory=dict)
    resumes: int = 0
    lives: int = 0
    losses_checked: int = 0
    losses_differing: int = 0
    weights_identical: int = 0
    corrupt: int = 0
    leftovers: int = 0
    seconds: float = 0.0


def _where(text: str) -> str:
    """The kill's category for the table."""
    if "checkpoint write" in text or "commit of step_" in text or "commit of checkpoints/" in text:
        return "checkpoint write"
    if "before pruning" in text:
        return "after checkpoint, before prune"
    if "log write" in text or "train.jsonl" in text:
        return "log write"
    if text.endswith(".png") or "samples/" in text:
        return "sample write"
    if text.startswith("step"):
        return "training step"
    if "after start" in text:
        return "random time"
    return "other write (" + text.split(" of ")[-1] + ")"


def _count_finished(run: Path, reference: Path, row: TaskRow) -> None:
    """A run that reached its end: count it, and whether its last checkpoint equals ``reference``."""
    row.lives += 1
    row.weights_identical += _same_checkpoint(_checkpoints(run)[-1], reference)


def kill_task(task: str, work: Path, kills: int, rng: random.Random) -> TaskRow:
    """Train ``task`` through ``kills`` SIGKILLs and resumes; compare with the uninterrupted reference."""
    started = time.monotonic()
    config = work / f"{task}.yaml"
    config.write_text(yaml.safe_dump({"task": task, **task_config(task, work)}))
    reference = work / "reference" / task
    t0 = time.monotonic()
    run_child("none", train_args(task, config, reference, resume=False))
    startup = time.monotonic() - t0
    ref_losses = _losses(reference)
    ref_final = _checkpoints(reference)[-1]

    row = TaskRow(task)
    run = work / "killed" / task
    while row.kills < kills:
        latest = _latest_step(run)
        if task == "segment":  # one checkpoint of one file, written at the end, no pruning
            kind = rng.choice(["time", "step", "log", "file", "replace"])
            files, replaces, last = 1, 4, max(ref_losses)
        else:
            kind = rng.choice(["time", "step", "log", "file", "replace", "prune"])
            files, replaces, last = 8, 12, STEPS
        arg = {
            "time": f"{rng.uniform(0.5, startup * 0.6):.2f}",
            "step": str(rng.randint(min(latest + 1, last), last)),
            "log": str(rng.randint(min(latest + 1, last), last)),
            "file": str(rng.randint(1, files)),
            "replace": str(rng.randint(1, replaces)),
            "prune": str(rng.randint(1, 3)),
        }[kind]
        resume = run.exists()
        code, where = run_child(f"{kind}:{arg}", train_args(task, config, run, resume))
        row.resumes += resume
        _compare_losses(run, latest, ref_losses, row)
        if code == 0:  # the kill came too late: this life finished; compare it and start another
            _count_finished(run, ref_final, row)
            shutil.rmtree(run)
            continue
        row.kills += 1
        category = _where(where)
        row.where[category] = row.where.get(category, 0) + 1
        found, corrupt = _load_all(run) if run.exists() else (0, 0)
        row.corrupt += corrupt
        if task == "segment" and found and not corrupt:  # killed after its last write (the checkpoint): finished
            _count_finished(run, ref_final, row)
            shutil.rmtree(run)
    latest = _latest_step(run)
    run_child("none", train_args(task, config, run, resume=run.exists()))
    _compare_losses(run, latest, ref_losses, row)
    _count_finished(run, ref_final, row)
    row.resumes += 1
    row.leftovers = _leftovers(run)
    row.seconds = time.monotonic() - started
    return row


# -- output commands ------------------------------------------------------------------------------------------
def output_args(command: str, work: Path, out: Path) -> list[str]:
    ref = work / "reference"
    if command == "sample":
        return ["sample", str(ref / "generate"), "--n", "6", "--steps", "3", "--out", str(out)]
    if command == "synth run":
        return ["synth", "run", str(ref / "synthesize"), "--masks", str(work / "pairs" / "masks"), "--out", str(out)]
    if command == "segment predict":
        return ["segment", "predict", str(ref / "segment"), "--images", str(work / "new"), "--out", str(out)]
    if command == "fuse run":
        fusion = work / "fusion"
        return [
            "fuse",
            "run",
            str(ref / "fuse"),
            "--a",
            str(fusion / "MRI"),
            "--b",
            str(fusion / "PET"),
            "--out",
            str(out),
        ]
    raise ValueError(command)


def kill_output(command: str, work: Path, kills: int, rng: random.Random) -> dict:
    """Kill ``command`` mid-write ``kills`` times: its output folder must be absent or complete; then run it
    again into the same folder, as a user would: it must complete and leave no temporary folder behind."""
    name = command.replace(" ", "_")
    complete = work / "outputs" / f"{name}_complete"
    run_child("none", output_args(command, work, complete))
    expected = sorted(str(p.relative_to(complete)) for p in complete.rglob("*"))
    row = {"command": command, "kills": 0, "absent": 0, "complete": 0, "partial": 0, "reruns complete": 0}
    row["leftovers after rerun"] = 0
    attempt = 0
    while row["kills"] < kills:
        attempt += 1
        out = work / "outputs" / f"{name}_{attempt}"
        spec = rng.choice([f"save:{rng.randint(1, 6)}", f"replace:{rng.randint(1, 2)}"])
        code, _ = run_child(spec, output_args(command, work, out))
        if code == 0:
            continue
        row["kills"] += 1
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else None
        row["absent" if files is None else "complete" if files == expected else "partial"] += 1
        if files is None:
            run_child("none", output_args(command, work, out))
            row["reruns complete"] += sorted(str(p.relative_to(out)) for p in out.rglob("*")) == expected
            row["leftovers after rerun"] += sum(1 for _ in out.parent.glob(f".{out.name}.tmp-*"))
    return row


# -- the corpus -------------------------------------------------------------------------------------------------
def corpus_rows(work: Path) -> tuple[list[dict], dict]:
    """Run the broken-input corpus and the wrong-typed config fields through the command line in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import tiny_generate_config
    from tests.robustness.corpus import nested, write_config, wrong_value
    from tests.robustness.test_corpus import CASES, FIELDS, run_cli

    from meddiff.config import to_dict

    base = {"task": "generate", **to_dict(tiny_generate_config(steps=1))}
    runs = {"segment_run": work / "reference" / "segment", "synth_run": work / "reference" / "synthesize"}
    rows = []
    for number, case in enumerate(CASES):
        root = work / "corpus" / f"case{number}"
        refused = case.build(root)
        write_config(case, root, base)
        usable = [c for c in case.run_commands if all(runs[k].is_dir() for k in runs if f"{{{k}}}" in " ".join(c))]
        for k, command in enumerate(case.commands + usable):
            out = work / "corpus" / f"out{number}_{k}"
            code, lines = run_cli(*(part.format(root=root, out=out, **runs) for part in command))
            text = "\n".join(lines)
            if refused is None:
                outcome = "read" if code == 0 else "refused (wrong)"
            else:
                named = refused.name in text
                outcome = "refused clearly" if code == 2 and named and "Traceback" not in text else "NOT clear"
            rows.append(
                {
                    "case": case.name,
                    "command": "train" if command[0] == "train" else " ".join(command[:2]),
                    "expected": "read" if refused is None else "refuse",
                    "outcome": outcome,
                    "exit": code,
                    "output written": out.exists() and refused is not None,
                }
            )
    fields = {"tried": 0, "refused": 0}
    for task, key, tp in FIELDS:
        config = work / "corpus" / "config.yaml"
        config.write_text(yaml.safe_dump({"task": task, **nested(key, wrong_value(tp))}))
        code, lines = run_cli("train", str(config), "--out", str(work / "corpus" / "never"))
        fields["tried"] += 1
        fields["refused"] += code == 2 and len(lines) == 1 and f"'{key}" in lines[0]
    return rows, fields


# -- the report -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--output-kills", type=int, default=5)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--outputs", default=",".join(OUTPUTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/meddiff-faults"))
    parser.add_argument("--child")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rest)
        return
    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    work = _brain_folders(args.work)
    rng = random.Random(args.seed)
    tasks = [t for t in args.tasks.split(",") if t]
    commands = [c for c in args.outputs.split(",") if c]
    if ("segment" in tasks and "generate" not in tasks) or ("segment predict" in commands and "segment" not in tasks):
        raise SystemExit("segment needs the generate reference run, segment predict the segment one")
    rows = []
    for task in tasks:
        row = kill_task(task, work, args.kills, rng)
        print(row, flush=True)
        rows.append(row)
    outputs = [kill_output(c, work, args.output_kills, rng) for c in commands]
    corpus, fields = corpus_rows(work)
    write_report(rows, outputs, corpus, fields, args, time.monotonic() - started)


def write_report(rows, outputs, corpus, fields, args, seconds: float) -> None:
    command = "python -m benchmarks.faults" + (f" --kills {args.kills}" if args.kills != 20 else "")
    table = [
        {
            "task": r.task,
            "kills landed": r.kills,
            "where": ", ".join(f"{k} {v}" for k, v in sorted(r.where.items())),
            "resumes": r.resumes,
            "finished runs": r.lives,
            "identical weights": f"{r.weights_identical}/{r.lives}",
            "losses compared": r.losses_checked,
            "differing losses": r.losses_differing,
            "corrupt checkpoints": r.corrupt,
            "temp leftovers": r.leftovers,
            "minutes": r.seconds / 60,
        }
        for r in rows
    ]
    refused = [c for c in corpus if c["expected"] == "refuse"]
    clear = sum(c["outcome"] == "refused clearly" for c in refused)
    lines = [
        "# Reliability in figures: kills, broken inputs",
        "",
        f"- command: `{command}`",
        "- data: the embedded MNI152 brain slices at 32 px (and folders written from them); pydicom's CT_small",
        "  series and a NIfTI volume of the MNI template for the corpus",
        f"- seed: {args.seed}; machine: {machine()}",
        f"- wall time: {seconds / 60:.1f} min; date: {time.strftime('%Y-%m-%d')}",
        "",
        "## SIGKILL during training, then resume",
        "",
        f"Each task trains {STEPS} steps (checkpoint every {TRAIN['checkpoint_every']}, sample grid every "
        f"{TRAIN['sample_every']}, a log record every step) through processes killed at random moments (see the "
        "script's docstring for the hooks) and resumed with `--resume` (segment fit: rerun); a run that finishes "
        "before the next kill starts again from scratch. Losses: every training loss any process logged, against "
        "the uninterrupted run's at that step (exact equality). Weights: each finished run's last checkpoint "
        "(model, EMA, optimizer moments, RNG states) against the uninterrupted run's, tensor for tensor.",
        "",
        markdown_table(table, list(table[0]) if table else []),
        "",
        "## SIGKILL while a command writes its output folder",
        "",
        "Killed inside an image write or at the output folder's commit; the folder must then be absent or "
        "complete (the same files as an uninterrupted run's), never partial. Then the same command is run again "
        "into the same folder: it must complete and remove the hidden temporary folder the killed one left.",
        "",
        markdown_table(outputs, list(outputs[0]) if outputs else []),
        "",
        "## Broken-input corpus",
        "",
        f"{len(refused)} damaged inputs tried across the commands that read them: {clear} refused clearly "
        "(exit 2, one line naming the file, no stack trace), "
        f"{sum(c['output written'] for c in refused)} with output written. Valid but unusual inputs must be read. "
        f"Config files: every field of every task's config given a value of the wrong type: {fields['tried']} "
        f"tried, {fields['refused']} refused in one line naming the key.",
        "",
        markdown_table(corpus, ["case", "command", "expected", "outcome", "exit", "output written"]),
        "",
    ]
    (RESULTS / "faults.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'faults.md'}")


if __name__ == "__main__":
    main()
