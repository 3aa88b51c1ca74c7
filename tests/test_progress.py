"""Training progress in a plain log: a line every 10% of the steps, and an ETA that respects the budget."""

import io

from rich.console import Console

from meddiff.progress import TrainProgress


def _plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_a_plain_log_gets_a_line_every_tenth_of_the_steps():
    console, out = _plain_console()
    with TrainProgress(50, console=console) as bar:
        for step in range(1, 51):
            bar.update(step, 0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("step 5/50 (10%)") and lines[-1].startswith("step 50/50")
    assert "ETA" in lines[0] and "it/s" in lines[0]


def test_the_eta_under_a_time_budget_comes_from_the_budget(monkeypatch):
    clock = iter(range(0, 10_000, 1)).__next__
    monkeypatch.setattr("meddiff.progress.time.monotonic", lambda: float(clock()))
    console, _ = _plain_console()
    bar = TrainProgress(100_000, budget_seconds=360, console=console)  # starts at t = 0
    # 10 steps in 1 s: the 99,990 steps left would take 9,999 s; the budget has 360 - 1 s left
    assert bar.eta_seconds(10) == 359
    unbounded = TrainProgress(100, console=console)  # starts at t = 2; 50 steps in 1 s, 50 left
    assert unbounded.eta_seconds(50) == 1.0
