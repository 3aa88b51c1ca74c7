"""What bf16 buys on this CPU: a training step and a sampling step of the demo's UNet (64 px, batch 8) in
fp32 and under bf16 autocast, interleaved, and which of the two meddiff runs when a config asks for bf16
(``meddiff.devices.use_bf16``: bf16 only where the CPU computes it natively, AVX512-BF16 or AMX).

    .venv/bin/python -m benchmarks.precision [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from contextlib import nullcontext

import torch

from benchmarks.common import markdown_table, median_seconds, write_result
from meddiff.devices import native_bf16
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.schedulers import NoiseConfig
from meddiff.nets.unet import UNet
from meddiff.tasks.demo import demo_config

BATCH, SIZE = 8, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    torch.manual_seed(0)
    model_config = demo_config(1.0).model
    model_config.in_channels = model_config.out_channels = 5  # the demo's image + 4 label channels
    net = UNet(model_config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    diffusion = Diffusion(NoiseConfig(prediction_type="v_prediction"))
    x0 = torch.rand(BATCH, 5, SIZE, SIZE) * 2 - 1
    t = torch.full((BATCH,), 500)

    def autocast(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def train_step(bf16: bool) -> None:
        with autocast(bf16):
            loss = diffusion.loss(net.train(), x0, None, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def denoise_step(bf16: bool) -> None:
        with autocast(bf16):
            net.eval()(x0, t)

    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            precision = "bf16 autocast" if bf16 else "fp32"
            train, denoise = functools.partial(train_step, bf16), functools.partial(denoise_step, bf16)
            timings.setdefault((precision, "train"), []).append(median_seconds(train, 2))
            timings.setdefault((precision, "denoise"), []).append(median_seconds(denoise, 3))
    native = native_bf16(torch.device("cpu"))
    rows = []
    for precision in ("fp32", "bf16 autocast"):
        train_s = statistics.median(timings[(precision, "train")])
        denoise_s = statistics.median(timings[(precision, "denoise")])
        rows.append(
            {
                "precision": precision,
                "train step s": train_s,
                "train img/s": BATCH / train_s,
                "denoising pass s": denoise_s,
                "slowdown vs fp32 (train)": train_s / statistics.median(timings[("fp32", "train")]),
                "slowdown vs fp32 (denoise)": denoise_s / statistics.median(timings[("fp32", "denoise")]),
            }
        )
    chosen = "bf16" if native else "fp32"
    body = (
        f"The demo's UNet ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, 5 channels at "
        f"{SIZE} px), batch {BATCH}: one AdamW training step (v-prediction loss) and one denoising forward pass. "
        f"Medians of {args.rounds} interleaved rounds.\n\n"
        f"Native bf16 on this CPU (oneDNN's check, `meddiff.devices.native_bf16`): **{'yes' if native else 'no'}**"
        f" (torch's CPU capability: {torch.backends.cpu.get_cpu_capability()}). A config or switch asking for "
        f"bf16 therefore runs in **{chosen}** here.\n\n" + markdown_table(rows, list(rows[0]))
    )
    write_result(
        "precision",
        "What bf16 buys on this CPU",
        data=f"random tensors [{BATCH}, 5, {SIZE}, {SIZE}]",
        seed=0,
        wall_seconds=time.monotonic() - started,
        body=body,
        numbers={"rows": rows, "native_bf16": native, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    )


if __name__ == "__main__":
    main()
