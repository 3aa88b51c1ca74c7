"""meddiff: diffusion models for medical imaging with few labels.

``meddiff.load(run)`` returns a trained run as an object (see ``meddiff.api``); it is imported on first
use so that ``import meddiff`` (and the CLI's start) stays fast.
"""

from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from meddiff.api import load

        return load
    raise AttributeError(f"module 'meddiff' has no attribute '{name}'")
