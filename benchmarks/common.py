"""What every benchmark shares: timing, the machine description and the results file format."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line describing where the numbers were measured."""
    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
        flags = ", AMX-BF16" if "amx_bf16" in cpuinfo else ", AVX512-BF16" if "avx512_bf16" in cpuinfo else ""
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return (
        f"{model} ({torch.backends.cpu.get_cpu_capability()}{flags}); {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; Python {platform.python_version()}"
    )


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` of the non-NaN values (std 0 for one value, "n/a" for none)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def command_line() -> str:
    """The command that runs this benchmark with this process's arguments."""
    return " ".join(shlex.quote(a) for a in ["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def write_result(
    name: str, title: str, *, data: str, seed: int | str, wall_seconds: float, body: str, numbers: dict
) -> Path:
    """Write ``results/<name>.md`` (command, data, seed, machine, wall time, body) and ``<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = command_line()
    header = (
        f"# {title}\n\n"
        f"- command: `{command}`\n- data: {data}\n- seed: {seed}\n- machine: {machine()}\n"
        f"- wall time: {wall_seconds / 60:.1f} min\n- date: {time.strftime('%Y-%m-%d')}\n\n"
    )
    md = RESULTS / f"{name}.md"
    md.write_text(header + body.rstrip() + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"command": command, "data": data, "seed": seed, "wall_seconds": wall_seconds, **numbers}, indent=1)
    )
    return md
