"""Does a text-conditioned model follow the tone words? Cross-attention alone vs cross-attention plus the pooled
text embedding added to the time embedding (``UNetConfig.context_pooled``).

    PYTHONPATH=. .venv/bin/python -m benchmarks.text_conditioning [--quick] [--steps 1000]

The editing benchmark's text-conditioned model (``benchmarks.editing``: the cataract frames of
../shared/data, or the brain slices without them; same architecture, captions, ``tone.prob`` 0.3 and
training budget) is trained twice, with ``context_pooled`` off and on, same seed. Each model then draws
``SAMPLES`` images from the same seeds with a held-out frame's caption and with that caption plus each
tone word; the response is the tone's measure on the word's samples minus on the caption's samples, seed by
seed (dark / bright: mean intensity, percentage points of the range; low / high contrast: % change of the
intensity standard deviation), signed so that > 0 is the word's direction. Imagic (``meddiff edit run``)
can only bring out what the model has learned: a response near 0 means no edit towards that word.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import editing
from benchmarks.common import markdown_table, write_result
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.tasks import textgen
from meddiff.text.tone import TONE_WORDS

SAMPLES = 8
GUIDANCE = (1.0, 3.0)


def responses(run: Path, caption: str, size: tuple[int, int]) -> list[dict]:
    model = textgen.load(run)
    rows = []
    for guidance in GUIDANCE:
        sampler = SamplerConfig(name="dpm++", steps=20, guidance_scale=guidance)

        def draw(prompt: str, sampler: SamplerConfig = sampler) -> torch.Tensor:
            return textgen.generate_from_text(
                model.unet,
                model.diffusion,
                model.codec,
                model.encoder,
                model.null,
                [prompt] * SAMPLES,
                sampler,
                seed=0,
                size=size,
            )[0]

        plain = draw(caption)
        for word in TONE_WORDS:
            response = editing.tone_change(word, draw(f"{caption}, {word}"), plain)
            rows.append(
                {
                    "guidance": guidance,
                    "word": word,
                    "response": float(response.mean()),
                    "seed std": float(response.std()),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="end-to-end check (text_conditioning_quick)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each model")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    steps = 20 if args.quick else args.steps
    rows, training = [], {}
    with tempfile.TemporaryDirectory(prefix="meddiff-text-conditioning-") as tmp:
        make = editing.cataract if editing.DATA.is_dir() else editing.brain
        setting = make(Path(tmp), args.quick, steps, alignment_steps=0)
        edit = setting.edits[0]
        for pooled in (False, True):
            config = dataclasses.replace(
                setting.config, model=dataclasses.replace(setting.config.model, context_pooled=pooled)
            )
            run = Path(tmp) / f"run_pooled_{pooled}"
            start = time.perf_counter()
            result = textgen.fit(config, run, progress=False)
            training[str(pooled)] = {
                "context_pooled": pooled,
                "steps": result.step,
                "minutes": (time.perf_counter() - start) / 60,
                "final_loss": float(np.mean(list(result.losses.values())[-10:])),
            }
            print(training[str(pooled)], flush=True)
            rows += [{"context_pooled": pooled, **r} for r in responses(run, edit.source, tuple(edit.image.shape[-2:]))]
    body = "\n".join(
        [
            f"Model: {setting.name} ({setting.description}); {steps} training steps each, batch 8, `tone.prob` 0.3. "
            f"Caption: \"{edit.source}\" (a held-out frame's). Response: mean over {SAMPLES} seeds of the word's "
            "samples minus the caption's samples from the same seed (dark / bright: mean intensity, percentage points; "
            "contrast: % change of the standard deviation; > 0: the word's direction); `seed std`: its spread over "
            "seeds.",
            "",
            "## Training",
            markdown_table(list(training.values()), ["context_pooled", "steps", "minutes", "final_loss"]),
            "",
            "## Response to the tone words",
            markdown_table(rows, ["context_pooled", "guidance", "word", "response", "seed std"]),
        ]
    )
    write_result(
        "text_conditioning_quick" if args.quick else "text_conditioning",
        "Text conditioning: cross-attention alone vs with the pooled text embedding",
        data=setting.description,
        seed=0,
        wall_seconds=time.perf_counter() - started,
        body=body,
        numbers={"training": training, "responses": rows},
    )


if __name__ == "__main__":
    main()
