"""Training and sampling speed at 64x64 on this CPU: meddiff's UNet vs a diffusers UNet2DModel of about the
same parameter count, fp32 and bf16 autocast, measured side by side in one run (rounds interleave the four
configurations so a noisy neighbour affects all of them alike).

    .venv/bin/python -m benchmarks.throughput [--rounds 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from contextlib import nullcontext

import torch
from diffusers import UNet2DModel
from torch import nn

from benchmarks.common import markdown_table, median_seconds, write_result
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.nets.unet import UNet, UNetConfig

CHANNELS, SIZE = 5, 64  # the demo's joint generator: 1 image + 4 label channels


class DiffusersAdapter(nn.Module):
    """Calls ``UNet2DModel`` with meddiff's ``model(x, t)`` convention."""

    def __init__(self, model: UNet2DModel):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return self.model(x, t).sample


def models() -> dict[str, nn.Module]:
    meddiff = UNet(
        UNetConfig(
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            base_channels=32,
            channel_mults=[1, 2, 2, 4],
            attention_levels=[2, 3],
        )
    )
    diffusers = DiffusersAdapter(
        UNet2DModel(
            sample_size=SIZE,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            block_out_channels=(32, 64, 64, 128),
            layers_per_block=2,
            attention_head_dim=32,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        )
    )
    return {"meddiff UNet": meddiff, "diffusers UNet2DModel": diffusers}


def flops(model: nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, CHANNELS, SIZE, SIZE), torch.tensor([500]))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=20)
    args = parser.parse_args()
    started = time.monotonic()
    torch.manual_seed(0)
    diffusion = Diffusion(NoiseConfig())
    nets = models()
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-4) for name, net in nets.items()}
    x0 = torch.rand(args.batch, CHANNELS, SIZE, SIZE) * 2 - 1
    sampler = SamplerConfig(name="dpm++", steps=args.sample_steps)

    def train_step(name: str, bf16: bool) -> None:
        net = nets[name].train()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = diffusion.loss(net, x0, None, torch.Generator().manual_seed(0))
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def sample_batch(name: str, bf16: bool) -> None:
        sample(
            nets[name].eval(),
            diffusion,
            sampler,
            (args.batch, CHANNELS, SIZE, SIZE),
            generator=torch.Generator().manual_seed(0),
            autocast_bf16=bf16,
        )

    timings: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name in nets:
            for bf16 in (False, True):
                precision = "bf16" if bf16 else "fp32"
                timings.setdefault((name, precision, "train"), []).append(
                    median_seconds(functools.partial(train_step, name, bf16), repeats=3)
                )
                timings.setdefault((name, precision, "sample"), []).append(
                    median_seconds(functools.partial(sample_batch, name, bf16), repeats=1, warmup=0)
                )

    rows = []
    for name, net in nets.items():
        for precision in ("fp32", "bf16"):
            train_s = statistics.median(timings[(name, precision, "train")])
            sample_s = statistics.median(timings[(name, precision, "sample")])
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "params (M)": sum(p.numel() for p in net.parameters()) / 1e6,
                    "GFLOP/img fwd": flops(net) / 1e9,
                    "train steps/s": 1 / train_s,
                    "train img/s": args.batch / train_s,
                    f"sample img/s ({sampler.name} {sampler.steps})": args.batch / sample_s,
                }
            )
    base = {r["precision"]: r for r in rows if r["model"] == "diffusers UNet2DModel"}
    fp32 = {r["model"]: r for r in rows if r["precision"] == "fp32"}
    sample_key = f"sample img/s ({sampler.name} {sampler.steps})"
    for r in rows:
        r["train vs diffusers"] = r["train steps/s"] / base[r["precision"]]["train steps/s"]
        r["sample vs diffusers"] = r[sample_key] / base[r["precision"]][sample_key]
        r["bf16 gain train"] = r["train steps/s"] / fp32[r["model"]]["train steps/s"]
        r["bf16 gain sample"] = r[sample_key] / fp32[r["model"]][sample_key]
    columns = [
        "model",
        "precision",
        "params (M)",
        "GFLOP/img fwd",
        "train steps/s",
        "train img/s",
        sample_key,
        "train vs diffusers",
        "sample vs diffusers",
        "bf16 gain train",
        "bf16 gain sample",
    ]
    body = (
        f"Batch {args.batch}, {CHANNELS} channels at {SIZE}x{SIZE} (the demo's joint image+label model), "
        f"AdamW, v-prediction loss; sampling = a full {sampler.name} {sampler.steps}-step run. Medians of "
        f"{args.rounds} interleaved rounds (each training number is itself a median of 3 steps).\n\n"
        + markdown_table(rows, columns)
    )
    write_result(
        "throughput",
        "Training and sampling throughput, meddiff UNet vs diffusers UNet2DModel",
        data=f"random tensors [{args.batch}, {CHANNELS}, {SIZE}, {SIZE}]",
        seed=0,
        wall_seconds=time.monotonic() - started,
        body=body,
        numbers={"rows": rows},
    )


if __name__ == "__main__":
    main()
