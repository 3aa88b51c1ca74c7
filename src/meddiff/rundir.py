"""The run folder: the one layout every task trains into and every reader (``meddiff.load``, reports,
``--resume``) finds things in.

    <run>/config.yaml             the task config the run was started with
    <run>/checkpoints/step_NNNNNNN/   complete checkpoints (``meddiff.checkpoint``), oldest pruned
    <run>/checkpoints/best/       the best validated one, when the task validates
    <run>/samples/step_NNNNNNN.png    sample grids written during training
    <run>/logs/train.jsonl        one JSON record per logged step (TensorBoard events beside it)
    <run>/metrics.json            the run's final numbers, written atomically
    <run>/.lock                   the writer lock of the process training into the run (``meddiff.runlock``)
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddiff import runlock
from meddiff.checkpoint import STATE_FILE
from meddiff.config import save_config
from meddiff.errors import UserError
from meddiff.files import atomic_write, remove_stale_temporaries, write_json

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass(frozen=True)
class RunDir:
    """Paths and bookkeeping of the run folder ``root`` (it need not exist yet)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs / "train.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        """The run a checkpoint folder belongs to (``RUN/checkpoints/<name>`` -> ``RUN``; a checkpoint
        kept elsewhere belongs to the folder holding it)."""
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    @property
    def best(self) -> Path:
        return self.checkpoints / "best"

    def sample_png(self, step: int) -> Path:
        return self.samples / f"{checkpoint_name(step)}.png"

    def list_checkpoints(self) -> list[Path]:
        """Complete step checkpoints, oldest first (temporary folders are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.checkpoints.iterdir()
            if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
        ]
        return [p for _, p in sorted(found)]

    def prune(self, keep: int) -> None:
        """Delete all but the ``keep`` newest step checkpoints."""
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def prepare(self, config: Any, resume: bool) -> None:
        """Create the folder, take its writer lock (``meddiff.runlock``) and write ``config.yaml``; refuse to
        train over a trained run unless resuming, and while another process trains into the folder."""
        runlock.acquire(self.root)
        remove_stale_temporaries(self.root, recursive=True)  # what killed writes left
        if self.list_checkpoints() and not resume:
            raise UserError(
                f"{self.root}: already holds a trained run; pass --resume to continue it or choose another "
                "output folder"
            )
        save_config(config, self.config_file)

    def start_log(self, step: int) -> None:
        """Create ``logs/`` and drop log records past ``step`` (they belong to an interrupted attempt)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists():
            kept = [r for r in self.read_log() if r["step"] <= step]
            atomic_write(self.log_file, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def log(self, record: dict) -> None:
        """Append one record (it must have a ``step``) to ``logs/train.jsonl``."""
        with open(self.log_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        """The records of ``logs/train.jsonl`` (empty when there is none). A last line cut short by a process
        killed while appending it is left out; a damaged line elsewhere is a UserError naming the file."""
        if not self.log_file.is_file():
            return []
        lines = [line for line in self.log_file.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UserError(f"{self.log_file}: line {number} is not a JSON record") from None
        return records

    def write_metrics(self, metrics: dict) -> Path:
        return write_json(self.metrics_file, metrics)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of the run at ``run_dir``, oldest first."""
    return RunDir(run_dir).list_checkpoints()


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """A run folder resolves to its latest step checkpoint; a checkpoint folder to itself."""
    path = Path(run_or_checkpoint)
    if (path / STATE_FILE).is_file():
        return path
    if path.is_file():
        raise UserError(f"{path}: expected a run folder or a checkpoint folder, got a file")
    if not path.exists():
        raise UserError(f"{path}: no such run or checkpoint folder")
    run = RunDir(path)
    checkpoints = run.list_checkpoints()
    if checkpoints:
        return checkpoints[-1]
    legacy = run.checkpoints / "classifier"  # few-label segmentation runs of meddiff 0.1
    if (legacy / STATE_FILE).is_file():
        return legacy
    raise UserError(f"{path}: no complete checkpoint found under {run.checkpoints}")
