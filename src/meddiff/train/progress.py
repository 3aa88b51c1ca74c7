"""Progress bars (rich) for long work: training with loss, it/s and ETA; sampling loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

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
    """Training bar: step m/n, loss, it/s, elapsed and ETA. Use as a context manager."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._bar = Progress(*_columns("loss {task.fields[loss]}"), disable=not enabled)
        self._task = self._bar.add_task("training", total=total_steps, completed=start_step, rate="", loss="-")

    def __enter__(self) -> TrainProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def update(self, step: int, loss: float) -> None:
        speed = self._bar.tasks[0].speed
        self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", rate=f"{speed:.2f} it/s" if speed else "")
