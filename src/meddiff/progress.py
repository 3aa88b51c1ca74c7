"""Progress bars (rich) for long work: training with loss, it/s and ETA; sampling loops."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def _columns(extra: str = "") -> list:
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TextColumn(extra),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


def progress_bar(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` behind a progress bar (a plain iteration when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(*_columns(), transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            yield item
            speed = bar.tasks[0].speed
            bar.update(task, advance=1, rate=f"{speed:.2f} it/s" if speed else "")


class TrainProgress:
    """Training progress: step m/n, loss, it/s, elapsed and ETA. Use as a context manager.

    On a terminal it is a rich bar; otherwise (a log file, ``| tee``, a notebook's captured stderr) it prints
    one plain line every ``report_percent`` of the steps and at the end. With a time budget
    (``budget_seconds``) the ETA is the earlier of the steps' and the budget's end.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        budget_seconds: float | None = None,
        report_percent: float = 10.0,
        console: Console | None = None,
    ):
        self.console = console or Console(stderr=True)
        self.enabled, self.plain = enabled, enabled and not self.console.is_terminal
        self.total, self.start, self.budget = total_steps, start_step, budget_seconds
        self._every = max(1, round(total_steps * report_percent / 100))
        self._started = time.monotonic()
        columns = [c for c in _columns("loss {task.fields[loss]}") if not isinstance(c, TimeRemainingColumn)]
        columns[-1] = TextColumn("ETA {task.fields[eta]}")
        self._bar = Progress(*columns, console=self.console, disable=not enabled or self.plain)
        self._task = self._bar.add_task("training", total=total_steps, completed=start_step, rate="", loss="-", eta="-")

    def __enter__(self) -> TrainProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left: the steps left at the rate so far, capped by what is left of the budget."""
        elapsed = time.monotonic() - self._started
        done = step - self.start
        if done <= 0 or elapsed <= 0:
            return None
        left = (self.total - step) * elapsed / done
        if self.budget is not None:
            left = min(left, max(0.0, self.budget - elapsed))
        return left

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._started
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = self.eta_seconds(step)
        eta_text = _clock(eta) if eta is not None else "-"
        if self.plain:
            if step % self._every == 0 or step == self.total:
                self.console.print(
                    f"step {step}/{self.total} ({100 * step / self.total:.0f}%)  loss {loss:.4f}  {rate:.2f} it/s  "
                    f"elapsed {_clock(elapsed)}  ETA {eta_text}",
                    highlight=False,
                )
            return
        self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.2f} it/s", eta=eta_text)


def _clock(seconds: float) -> str:
    """``3725`` -> ``1:02:05``."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
