"""Shared fixtures of the data tests: where the real data lives, and single-threaded torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from meddiff.data.build import single_threaded

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared" / "data"  # beside the checkout, never inside it


@pytest.fixture(autouse=True, scope="module")
def _torch_single_threaded():
    # The loaders run many tiny tensor ops; on the shared 2-core machine intra-op threads make them 7x slower.
    with single_threaded():
        yield


@pytest.fixture
def shared() -> Path:
    """``../shared/data`` beside the repository, or skip the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found at {SHARED} (expected ../shared/data beside the repository)")
    return SHARED


@pytest.fixture
def repo_cwd(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the repository root, where the example configs' relative paths resolve."""
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT
