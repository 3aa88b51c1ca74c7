"""GPU smoke test and throughput: every diffusion task trains a few steps and samples on CUDA.

    python -m benchmarks.gpu            # on a machine with a CUDA GPU; writes benchmarks/results/gpu.md

For generate, synthesize and the segmenter (the engine's tasks on the 64 px brain slices that ship with
nilearn): 10 training steps per precision (fp32, bf16, fp16 with loss scaling) after 3 warm-up steps,
training images per second and peak GPU memory, then one 20-step DPM-Solver++ sampling call through
``meddiff.load``. Without CUDA it writes nothing and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "gpu.md"
STEPS, WARMUP, BATCH = 10, 3, 32


def _configs():
    from meddiff.config import from_dict
    from meddiff.data.build import DataConfig
    from meddiff.nets.pix2pix import Pix2PixNetConfig
    from meddiff.nets.segnet import SegNetConfig
    from meddiff.nets.unet import UNetConfig
    from meddiff.tasks import generate, pix2pix, segmenter, synthesize
    from meddiff.train.engine import TrainConfig

    data = from_dict(DataConfig, {"kind": "brain_mri", "size": 64})
    unet = UNetConfig(base_channels=64, channel_mults=[1, 2, 2, 4], attention_levels=[2, 3])
    train = TrainConfig(steps=WARMUP + STEPS, batch_size=BATCH, warmup_steps=0, sample_every=10_000, log_every=1)
    return {
        "generate": (generate.fit, generate.GenerateConfig(data=data, model=unet, train=train)),
        "synthesize": (synthesize.fit, synthesize.SynthesizeConfig(data=data, model=unet, train=train)),
        "pix2pix": (
            pix2pix.fit,
            pix2pix.Pix2PixConfig(
                data=data,
                model=Pix2PixNetConfig(),
                train=pix2pix.Pix2PixTrainConfig(steps=WARMUP + STEPS, batch_size=BATCH, log_every=1),
            ),
        ),
        "segmenter": (segmenter.fit, segmenter.SegmenterConfig(data=data, model=SegNetConfig(), train=train)),
    }


# pix2pix steps two optimisers; accelerate's single fp16 loss scaler is not set up for that, so bf16 at most
PRECISIONS = {"pix2pix": ("no", "bf16")}


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing measured (benchmarks/results/gpu.md is left as it is)")
        return
    import meddiff

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fit, config) in _configs().items():
            for precision in PRECISIONS.get(name, ("no", "bf16", "fp16")):
                cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))
                run = Path(tmp) / f"{name}-{precision}"
                torch.cuda.reset_peak_memory_stats()
                started = time.monotonic()
                result = fit(cfg, run, progress=False)
                seconds = time.monotonic() - started
                lines = [ln for ln in (run / "logs" / "train.jsonl").read_text().splitlines() if '"loss"' in ln]
                stamps = [json.loads(ln)["elapsed_s"] for ln in lines]
                timed = stamps[-1] - stamps[WARMUP - 1]
                rows.append(
                    {
                        "task": name,
                        "precision": "fp32" if precision == "no" else precision,
                        "train img/s": STEPS * BATCH / timed,
                        "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
                        "final loss": result.losses[result.step],
                        "wall s": seconds,
                    }
                )
                print(rows[-1], flush=True)
            handle = meddiff.load(Path(tmp) / f"{name}-no", device="cuda")
            started = time.monotonic()
            if name == "generate":
                handle.sample(16, steps=20, seed=0)
            elif name == "synthesize":
                handle.synthesize(torch.zeros(16, 64, 64, dtype=torch.long), steps=20)
            elif name == "pix2pix":
                handle.synthesize(torch.zeros(16, 64, 64, dtype=torch.long))
            else:
                handle.segment(torch.zeros(16, 1, 64, 64))
            rows[-1]["one call s (fp32 model)"] = time.monotonic() - started
    device = torch.cuda.get_device_name()
    table = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for r in rows:
        table.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    RESULTS.write_text(
        f"# GPU smoke test and throughput\n\nCommand: `python -m benchmarks.gpu`; device: {device}; torch "
        f"{torch.__version__}; batch {BATCH}, {STEPS} timed steps after {WARMUP} warm-up steps, 64 px brain "
        "slices (nilearn's MNI152).\n\n" + "\n".join(table) + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
