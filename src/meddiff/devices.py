"""Where models run, the one rule for random numbers that must not depend on it, and the one rule for bf16.

Rule: every random draw of meddiff comes from a CPU ``torch.Generator`` and is then moved to the device
that uses it (diffusers' ``randn_tensor`` does the same for noise). A seed therefore gives the same numbers
on a CPU, on any GPU and with any number of processes, and a CPU generator can be saved in a checkpoint.

bf16 (training's ``mixed_precision: bf16`` and every ``--bf16`` / ``bf16`` switch) runs where the device
computes it natively and falls back to fp32 elsewhere (``use_bf16``).
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16
    or AMX (oneDNN's check). Elsewhere bf16 is emulated: on an AVX2 CPU the demo UNet trained 17x and
    denoised 54x slower under bf16 autocast than in fp32 (benchmarks/results/precision.md)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch has no public query of the CPU's bf16 instructions; oneDNN's is what its bf16 kernels use
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


_warned_emulated: set[str] = set()


def use_bf16(device: torch.device, wanted: bool) -> bool:
    """The one rule for bf16 requests (``mixed_precision: bf16``, ``--bf16``, ``features.bf16``): honoured where
    ``device`` runs bf16 natively, else fp32 with a warning once per device type, since emulated bf16 is many
    times slower and no more accurate."""
    if not wanted:
        return False
    if native_bf16(device):
        return True
    if device.type not in _warned_emulated:
        _warned_emulated.add(device.type)
        warnings.warn(
            f"bf16 was asked for, but this {device.type.upper()} has no native bf16 (AVX512-BF16, AMX or a "
            "bf16 GPU); running in fp32, which is many times faster here",
            stacklevel=2,
        )
    return False


def bf16_autocast(device: torch.device, wanted: bool) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``use_bf16(device, wanted)``, else a context that does nothing."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(device, wanted) else nullcontext()
