"""The kill harness in small (``benchmarks/faults.py`` runs it with 20 kills per task): a generator killed
three times at random moments and resumed ends with the uninterrupted run's losses and weights, and a
killed ``sample`` leaves no partial output folder."""

import random

import pytest
from benchmarks.faults import _brain_folders, kill_output, kill_task


@pytest.mark.slow
def test_three_kills_and_resumes_reproduce_the_uninterrupted_run(tmp_path):
    work = _brain_folders(tmp_path)
    row = kill_task("generate", work, kills=3, rng=random.Random(1))
    assert row.kills == 3 and row.corrupt == 0 and row.leftovers == 0
    assert row.losses_checked >= 24 and row.losses_differing == 0
    assert row.weights_identical == row.lives >= 1

    outputs = kill_output("sample", work, kills=1, rng=random.Random(1))
    assert outputs["partial"] == 0 and outputs["absent"] + outputs["complete"] == 1
    assert outputs["reruns complete"] == outputs["absent"] and outputs["leftovers after rerun"] == 0
