"""Where models run, and the one rule for random numbers that must not depend on it.

Rule: every random draw of meddiff comes from a CPU ``torch.Generator`` and is then moved to the device
that uses it (diffusers' ``randn_tensor`` does the same for noise). A seed therefore gives the same numbers
on a CPU, on any GPU and with any number of processes, and a CPU generator can be saved in a checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meddiff.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (a GPU when one is visible), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> the visible accelerator or the CPU; ``cpu``, ``cuda``, ``cuda:N`` as given, checked."""
    import torch  # here, not at the top: the CLI imports this module for its help text and starts fast

    if isinstance(spec, torch.device):
        return spec
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{spec}' is not one of {DEVICE_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA GPU is visible to torch (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type not in ("cpu", "meta"):
        raise UserError(f"--device '{spec}' is not one of {DEVICE_HELP}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without parameters)."""
    import torch

    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def randn(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Standard normal draws from ``generator`` (float32 unless ``dtype``), placed on ``device``."""
    import torch

    return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from ``generator``, placed on ``device``."""
    import torch

    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Integers in [0, high) from ``generator``, placed on ``device``."""
    import torch

    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)
