"""Shared fixtures of the data tests: single-threaded torch and the repository as working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from meddiff.data.build import single_threaded

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _torch_single_threaded():
    # The loaders run many tiny tensor ops; on the shared 2-core machine intra-op threads make them 7x slower.
    with single_threaded():
        yield


@pytest.fixture
def repo_cwd(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the repository root, where the example configs' relative paths resolve."""
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT
