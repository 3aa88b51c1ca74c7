"""Text-guided editing (Imagic): the alpha x interpolation sweep on brain MRI slices and cataract frames.

    PYTHONPATH=. .venv/bin/python -m benchmarks.editing [--quick]

Per dataset, meddiff's text-conditioned model (``tasks.textgen``, MiniLM captions from the label-map
template) is trained on the training images only; held-out images (never seen in training) are then
edited towards prompts that change one visible thing. Every edit runs Imagic's stages A (embedding) and B
(fine-tuning) once, then stage C for every alpha of ALPHAS with linear and spherical interpolation and the
same seeds, so the two interpolations are compared on the same fine-tuned model.

- brain: MNI152 T1 axial slices (``meddiff.data.samples.brain_mri``), 64 px, image + 4-class label map
  diffused jointly. Held out: 3 bands of consecutive slices with a 2-slice gap (as in the segmentation
  benchmark). Edits: "high contrast" and "low contrast" (band-4 slice; quick: high only) and the
  white-matter extent (its size word in the caption moved two steps; band-6 slice). The brain model trains
  3000 steps (``TEXT_STEPS``), the cataract model 1000.
- cataract: the 24 labelled instrument frames + 100 unlabelled frames of ../shared/data, 64 px RGB,
  image only. Held out: every frame of Cataract-1K video 53153 and CatInstSeg video 11-07-49. Captions
  (a captions file): the template on the instrument mask for labelled frames, the prefix alone for
  unlabelled ones. Edits (one frame with an instrument from each held-out video): instrument removed
  (Cataract-1K frame), "bright" or "dark", whichever the frame is not (CatInstSeg frame; full mode only).

Both models train with ``tone.prob`` 0.3 (``text.tone``: random dark / bright / low / high contrast
variants named in the caption), which is how they learn the tone words.

Measures per output: PSNR and SSIM to the input (fidelity); domain text alignment (the run's network,
``metrics.text_alignment``; not a CLIP score) with the target prompt, and the margin: its unclamped
``100 * cos`` with the target prompt minus with the source caption (> 0: the image now reads more like the
target than like the source); a direct measure of the requested change, signed so that > 0 is the
requested direction, where one exists without a learned model (contrast: % change of the intensity
standard deviation; bright / dark: mean intensity change in percentage points of the range; white matter:
its share of the edited label map minus the input's, percentage points); collapse
(``edit.run.collapsed``: blank or saturated).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table, write_result
from benchmarks.segmentation import brain_bands
from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.samples import brain_mri
from meddiff.data.writers import write_pair_folder
from meddiff.diffusion.schedulers import SamplerConfig
from meddiff.edit.imagic import ImagicConfig, imagic, sample_edits
from meddiff.edit.meddiff_model import MeddiffEditModel
from meddiff.edit.run import collapsed
from meddiff.metrics.image import psnr, ssim, to_unit_range
from meddiff.metrics.text_alignment import DomainAlignmentScore
from meddiff.report.grids import image_grid, pairs_grid, save_png
from meddiff.report.plots import metric_curves
from meddiff.tasks import textgen
from meddiff.tasks.runs import to_uint8
from meddiff.text.captions import BRAIN_PREFIX, SIZE_WORDS, template_captions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPHAS = [0.0, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.4]
INTERPS = ("linear", "slerp")
BRAIN_CLASSES = ["background", "other brain tissue", "grey matter", "white matter"]
CATARACT_CLASSES = ["background", "instrument"]
CATARACT_PREFIX = "cataract surgery microscope frame"
THESIS_RANGE = (1.4, 1.7)
# the smallest change over alpha 0 that counts as applied (the units of each edit's measure): a visible step,
# well above the seed-to-seed spread of the measures in the first runs
VISIBLE = {
    "high contrast": 10.0,
    "low contrast": 10.0,
    "white-matter extent": 2.0,
    "bright": 5.0,
    "dark": 5.0,
    "instrument removed": 1.0,
}
MIN_SSIM_SHARE = 0.8  # SSIM to the input at least this share of alpha 0's
RESPONSE_SAMPLES = 8
# the brain model (image + 4 label channels, 70 slices) still drew blurred, noisy slices after 1000 steps
TEXT_STEPS = {"brain": 3000, "cataract": 1000}
STUDY_ALPHAS = [0.0, 1.4]
STUDY_GUIDANCE = (1.0, 3.0)


@dataclass
class Edit:
    """One held-out image, its source caption, a target prompt and the direct measure of the change it asks
    for (``measure(images, masks)``: per output, > 0 in the requested direction; None: no such measure)."""

    name: str
    kind: str  # what the prompt changes
    image: torch.Tensor  # [1, C, H, W] in [-1, 1]
    mask: torch.Tensor | None  # [1, H, W] class ids (joint models)
    source: str
    target: str
    measure: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None


@dataclass
class Setting:
    name: str
    description: str
    config: textgen.TextGenConfig
    edits: list[Edit]


def _quantise(images: torch.Tensor) -> torch.Tensor:
    """As the images are read back from 8-bit PNGs."""
    return to_uint8(images).float() / 127.5 - 1


def _uint8_hwc(images: torch.Tensor) -> np.ndarray:
    arrays = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return arrays[..., 0] if arrays.shape[-1] == 1 else arrays


def _model_config(data: dict, captions: dict, joint_mask: bool, steps: int, alignment_steps: int):
    return from_dict(
        textgen.TextGenConfig,
        {
            "data": data,
            "model": {
                "base_channels": 32,
                "channel_mults": [1, 2, 2, 4],
                "blocks_per_level": 1,
                "attention_levels": [2, 3],
            },
            "noise": {"beta_schedule": "cosine", "prediction_type": "v_prediction"},
            "train": {
                "steps": steps,
                "batch_size": 8,
                "lr": 1e-3,
                "warmup_steps": 50,
                "ema_decay": 0.995,
                "mixed_precision": "bf16",
                "log_every": 25,
                "sample_every": 100_000,
                "checkpoint_every": 100_000,
                "keep_checkpoints": 1,
            },
            "sampler": {"name": "dpm++", "steps": 20, "guidance_scale": 2.0},
            "captions": captions,
            "joint_mask": joint_mask,
            "caption_drop_prob": 0.1,
            "tone": {"prob": 0.3},
            "alignment": {"steps": alignment_steps, "image_size": 64},
            "grid_samples": 8,
        },
    )


def _shift_size(caption: str, cls: str, seen: set[str]) -> str:
    """``caption`` with the size word of ``cls`` moved two steps (towards the side with room), kept to size
    words that occur for that class in the training captions."""
    words = [w for _, w in SIZE_WORDS]
    found = re.search(rf"(tiny|small|medium|large|very large) {cls}", caption)
    current = words.index(found.group(1))
    candidates = [w for w in words if w in seen]
    up = [w for w in candidates if words.index(w) >= current + 2]
    down = [w for w in candidates if words.index(w) <= current - 2]
    new = up[0] if up else (down[-1] if down else candidates[-1] if candidates[-1] != found.group(1) else candidates[0])
    return caption.replace(found.group(0), f"{new} {cls}")


def _size_rank(caption: str, cls: str) -> int:
    words = [w for _, w in SIZE_WORDS]
    return words.index(re.search(rf"(tiny|small|medium|large|very large) {cls}", caption).group(1))


def tone_change(word: str, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image, the change a tone word asks for over its ``reference``, > 0 in the word's direction: dark /
    bright: mean intensity (percentage points of the range); low / high contrast: % change of the intensity
    standard deviation."""
    unit, ref = to_unit_range(images), to_unit_range(reference)
    if word in ("dark", "bright"):
        sign = 1 if word == "bright" else -1
        return sign * 100 * (unit.mean(dim=(1, 2, 3)) - ref.mean(dim=(1, 2, 3)))
    sign = 1 if word == "high contrast" else -1
    return sign * 100 * (unit.std(dim=(1, 2, 3)) / ref.std(dim=(1, 2, 3)) - 1)


def _tone_gain(word: str, image: torch.Tensor) -> Callable:
    """``tone_change`` of each output over the input."""
    return lambda images, masks: tone_change(word, images, image.expand_as(images))


def _share_gain(mask: torch.Tensor, cls: int, larger: bool) -> Callable:
    """Change of the class's share of the label map (percentage points), > 0 towards the requested size."""
    before, sign = (mask == cls).float().mean(), 1 if larger else -1
    return lambda images, masks: sign * 100 * ((masks == cls).float().mean(dim=(1, 2)) - before)


def brain(work: Path, quick: bool, steps: int, alignment_steps: int) -> Setting:
    data = brain_mri(64)
    band, test, train_slices = brain_bands(len(data))
    train = torch.nonzero(train_slices)[:, 0].tolist()
    root = write_pair_folder(
        work / "brain_train",
        _uint8_hwc(data.images[train]),
        data.masks[train].numpy(),
        [data.names[i] for i in train],
        {"class_names": BRAIN_CLASSES},
    )
    config = _model_config(
        {"kind": "image_mask_folder", "root": str(root), "size": 64, "hflip": True, "class_names": BRAIN_CLASSES},
        {"prefix": BRAIN_PREFIX},
        True,
        steps,
        alignment_steps,
    )
    train_captions = template_captions(data.masks[train].long(), BRAIN_CLASSES, BRAIN_PREFIX)
    seen = {
        m.group(1)
        for c in train_captions
        for m in [
            re.search(
                r"(tiny|small|medium|large|very large) "
                r"white matter",
                c,
            )
        ]
        if m
    }
    held_out = [int(torch.nonzero(band == b)[:, 0].float().median()) for b in ([4] if quick else [4, 6])]
    edits = []
    for k, i in enumerate(held_out):
        image, mask = _quantise(data.images[i : i + 1]), data.masks[i : i + 1].long()
        source = template_captions(mask, BRAIN_CLASSES, BRAIN_PREFIX)[0]
        if k == 0:
            edits += [
                Edit(data.names[i], word, image, mask, source, f"{source}, {word}", _tone_gain(word, image))
                for word in (["high contrast"] if quick else ["high contrast", "low contrast"])
            ]
        else:
            target = _shift_size(source, "white matter", seen)
            edits.append(
                Edit(
                    data.names[i],
                    "white-matter extent",
                    image,
                    mask,
                    source,
                    target,
                    _share_gain(mask, 3, _size_rank(target, "white matter") > _size_rank(source, "white matter")),
                )
            )
    return Setting(
        "brain",
        f"MNI152 T1 axial slices, 64 px, image + 4-class label map; {len(train)} training "
        f"slices, {int(test.sum())} held out (3 bands, 2-slice gap)",
        config,
        edits,
    )


def cataract(work: Path, quick: bool, steps: int, alignment_steps: int) -> Setting:
    common = dict(kind="image_mask_folder", class_names=CATARACT_CLASSES, size=64, fit="resize", channels=3)
    parts = [
        build_dataset(
            from_dict(DataConfig, {**common, "root": str(DATA / "cataract1k_samples"), "masks_dir": "masks_L"})
        ),
        build_dataset(from_dict(DataConfig, {**common, "root": str(DATA / "catinstseg_samples")})),
        build_dataset(from_dict(DataConfig, {**common, "root": str(DATA / "cadis_samples_mt"), "unpaired": "skip"})),
    ]
    images = _quantise(torch.cat([p.images for p in parts]))
    masks = torch.cat([p.masks.long() for p in parts])
    names = [n for p in parts for n in p.names]
    is_test = [bool(re.search(r"case_?53153|11-07-49", n)) for n in names]
    unlabelled = build_dataset(
        from_dict(
            DataConfig,
            {
                "kind": "image_folder",
                "size": 64,
                "fit": "resize",
                "root": str(DATA / "cataract_frames_unlabeled_csam2" / "images"),
            },
        )
    )
    pool = [i for i, t in enumerate(is_test) if not t]
    test = [i for i, t in enumerate(is_test) if t]
    train_images = torch.cat([images[pool], _quantise(unlabelled.images)])
    train_names = [f"labelled_{names[i]}" for i in pool] + [f"unlabelled_{n}" for n in unlabelled.names]
    median = float(to_unit_range(train_images).mean(dim=(1, 2, 3)).median())
    captions = template_captions(masks[pool], CATARACT_CLASSES, CATARACT_PREFIX) + [CATARACT_PREFIX] * len(unlabelled)
    root = write_pair_folder(work / "cataract_train", _uint8_hwc(train_images), None, train_names, {})
    with (work / "cataract_captions.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("name", "caption"), *zip(train_names, captions, strict=True)])
    config = _model_config(
        {"kind": "image_folder", "root": str(root / "images"), "size": 64, "hflip": False},
        {"source": "file", "file": str(work / "cataract_captions.csv")},
        False,
        steps,
        alignment_steps,
    )
    # held out: one frame with an instrument per test video (quick: the first only)
    chosen = [
        next(i for i in test if re.search(v, names[i]) and masks[i].eq(1).any())
        for v in (["53153"] if quick else ["53153", "11-07-49"])
    ]
    edits = []
    for k, i in enumerate(chosen):
        image = images[i : i + 1]
        source = template_captions(masks[i : i + 1], CATARACT_CLASSES, CATARACT_PREFIX)[0]
        if k == 0:
            no_instrument = re.sub(r" [^,]* instrument( at [a-z ]+)?$", " no instrument", source)
            edits.append(Edit(names[i], "instrument removed", image, None, source, no_instrument))
        else:
            word = "bright" if float(to_unit_range(image).mean()) <= median else "dark"
            edits.append(Edit(names[i], word, image, None, source, f"{source}, {word}", _tone_gain(word, image)))

    return Setting(
        "cataract",
        f"Cataract-1K + CatInstSeg + CaDIS labelled frames and 100 unlabelled frames, 64 px "
        f"RGB, image only; {len(train_images)} training frames ({len(pool)} labelled), {len(test)} "
        "held-out frames (Cataract-1K video 53153, CatInstSeg video 11-07-49)",
        config,
        edits,
    )


def train_model(setting: Setting, work: Path) -> tuple[Path, dict]:
    """The setting's text-conditioned model and its training record (reused if ``work`` holds a run trained
    for the same number of steps)."""
    run = work / f"run_{setting.name}"
    info_file = run / "bench.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info["steps"] == setting.config.train.steps:
            return run, info
    shutil.rmtree(run, ignore_errors=True)  # another step count, or an interrupted run
    start = time.perf_counter()
    result = textgen.fit(setting.config, run, progress=False)
    aligner = textgen.load_run_aligner(textgen.load(run))
    info = {
        "steps": result.step,
        "minutes": (time.perf_counter() - start) / 60,
        "final_loss": float(np.mean(list(result.losses.values())[-10:])),
        "aligner": aligner.name,
        "aligner_train_top1": aligner.record["train_top1"],
    }
    info_file.write_text(json.dumps(info))
    return run, info


def _similarity(scorer: DomainAlignmentScore, images: torch.Tensor, prompt: str) -> torch.Tensor:
    """The alignment network's unclamped ``100 * cos`` (margins between prompts need no clamping at 0)."""
    return scorer.aligner.similarity(images.float(), scorer.encoder.encode([prompt]).pooled)


def prompt_response(
    model: MeddiffEditModel, scorer: DomainAlignmentScore, edit: Edit, sampler: SamplerConfig, size: tuple[int, int]
) -> float:
    """How far the trained model (before editing) follows the edit's words: ``RESPONSE_SAMPLES`` samples with
    the source caption and with the target prompt from the same seeds; the mean over seeds of the direct
    change measure (else the alignment margin) of the target sample minus that of the source sample."""
    m = model.model
    drawn = {
        p: textgen.generate_from_text(
            m.unet, m.diffusion, m.codec, m.encoder, m.null, [p] * RESPONSE_SAMPLES, sampler, seed=0, size=size
        )
        for p in (edit.source, edit.target)
    }
    if edit.measure:
        score = {p: edit.measure(*out) for p, out in drawn.items()}
    else:
        score = {
            p: _similarity(scorer, out[0], edit.target) - _similarity(scorer, out[0], edit.source)
            for p, out in drawn.items()
        }
    return float((score[edit.target] - score[edit.source]).mean())


def run_edit(run: Path, setting: Setting, edit: Edit, imagic_config: ImagicConfig) -> tuple[list[dict], dict, dict]:
    """Stages A and B once, C for both interpolations; per-output rows, stage seconds and the samples."""
    model = MeddiffEditModel.load(run)
    scorer = DomainAlignmentScore(textgen.load_run_aligner(model.model), model.model.encoder)
    response = prompt_response(model, scorer, edit, imagic_config.sampler, tuple(edit.image.shape[-2:]))
    result = imagic(model, edit.image, edit.mask, edit.target, imagic_config)
    seconds = {
        "A": result.seconds["A_embedding"],
        "B": result.seconds["B_finetune"],
        "C_linear": result.seconds["C_sampling"],
    }
    outputs = {"linear": (result.images, result.masks)}
    start = time.perf_counter()
    target = model.encode_prompt(edit.target)
    slerp = sample_edits(
        model,
        result.embedding,
        target,
        tuple(model.encode_input(edit.image, edit.mask).shape[1:]),
        dataclasses.replace(imagic_config, interp="slerp"),
    )
    decoded = {a: model.decode_output(x) for a, x in slerp.items()}
    outputs["slerp"] = ({a: d[0] for a, d in decoded.items()}, {a: d[1] for a, d in decoded.items()})
    seconds["C_slerp"] = time.perf_counter() - start
    rows = []
    base = {"dataset": setting.name, "image": edit.name, "edit": edit.kind}
    for interp, (images, masks) in outputs.items():
        for alpha in imagic_config.alphas:
            x, m = images[alpha], masks[alpha]
            reference = edit.image.expand_as(x)
            p, s = psnr(x, reference, reduction="none"), ssim(x, reference, reduction="none")
            target_score = scorer(x, edit.target)
            margin = _similarity(scorer, x, edit.target) - _similarity(scorer, x, edit.source)
            change = edit.measure(x, m) if edit.measure else torch.full((x.shape[0],), float("nan"))
            broken = collapsed(x)
            for k in range(x.shape[0]):
                rows.append(
                    {
                        **base,
                        "interp": interp,
                        "alpha": alpha,
                        "seed": imagic_config.seed + k,
                        "psnr": float(p[k]),
                        "ssim": float(s[k]),
                        "align": float(target_score[k]),
                        "margin": float(margin[k]),
                        "change": float(change[k]),
                        "collapsed": bool(broken[k]),
                    }
                )
    input_scores = {
        "align": float(scorer(edit.image, edit.target)[0]),
        "margin": float(
            _similarity(scorer, edit.image, edit.target)[0] - _similarity(scorer, edit.image, edit.source)[0]
        ),
    }
    info = {
        **base,
        "source": edit.source,
        "target": edit.target,
        "seconds": seconds,
        "input": input_scores,
        "response": response,
        "stage_A_loss": [result.reconstruction_before, result.reconstruction_after],
        "stage_B_loss": [float(np.mean(result.finetune_losses[:10])), float(np.mean(result.finetune_losses[-10:]))]
        if result.finetune_losses
        else None,
    }
    return rows, info, outputs


def stage_b_study(run: Path, setting: Setting, edit: Edit, config: ImagicConfig, steps: tuple[int, ...]) -> list[dict]:
    """What the defaults of stage B and guidance rest on: for each stage-B step count (a fresh model each),
    PSNR and SSIM to the input at alpha 0 and the change measure at ``STUDY_ALPHAS``, for each guidance of
    ``STUDY_GUIDANCE`` (linear interpolation, the run's seeds)."""
    rows = []
    for n in steps:
        model = MeddiffEditModel.load(run)
        tuned = dataclasses.replace(config, finetune_steps=n, alphas=STUDY_ALPHAS)
        result = imagic(model, edit.image, edit.mask, edit.target, tuned)
        target = model.encode_prompt(edit.target)
        shape = tuple(model.encode_input(edit.image, edit.mask).shape[1:])
        for guidance in STUDY_GUIDANCE:
            if guidance == config.sampler.guidance_scale:  # imagic's own stage C
                outputs = {a: (result.images[a], result.masks[a]) for a in STUDY_ALPHAS}
            else:
                sampler = dataclasses.replace(config.sampler, guidance_scale=guidance)
                drawn = sample_edits(
                    model, result.embedding, target, shape, dataclasses.replace(tuned, sampler=sampler)
                )
                outputs = {a: model.decode_output(x) for a, x in drawn.items()}
            for alpha, (images, masks) in outputs.items():
                reference = edit.image.expand_as(images)
                rows.append(
                    {
                        "dataset": setting.name,
                        "edit": edit.kind,
                        "B steps": n,
                        "guidance": guidance,
                        "alpha": alpha,
                        "PSNR": float(psnr(images, reference)),
                        "SSIM": float(ssim(images, reference)),
                        "change": float(edit.measure(images, masks).mean()),
                    }
                )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean per dataset x edit x interp x alpha over seeds."""
    table = []
    keys = list(dict.fromkeys((r["dataset"], r["edit"], r["interp"]) for r in rows))
    for dataset, edit, interp in keys:
        for alpha in sorted({r["alpha"] for r in rows}):
            group = [
                r for r in rows if (r["dataset"], r["edit"], r["interp"], r["alpha"]) == (dataset, edit, interp, alpha)
            ]
            changes = [r["change"] for r in group if not np.isnan(r["change"])]
            table.append(
                {
                    "dataset": dataset,
                    "edit": edit,
                    "interp": interp,
                    "alpha": alpha,
                    "n": len(group),
                    "PSNR": float(np.mean([r["psnr"] for r in group])),
                    "SSIM": float(np.mean([r["ssim"] for r in group])),
                    "alignment": float(np.mean([r["align"] for r in group])),
                    "margin": float(np.mean([r["margin"] for r in group])),
                    "change": float(np.mean(changes)) if changes else float("nan"),
                    "collapse rate": float(np.mean([r["collapsed"] for r in group])),
                }
            )
    return table


def good_alphas(table: list[dict], dataset: str, edit: str, interp: str) -> tuple[list[float], str]:
    """Alphas that apply the text and keep the image (criterion fixed before the run), and the measure used:
    the direct change measure where the edit has one, else the alignment margin, has risen over alpha 0 by
    at least ``VISIBLE[edit]``; SSIM to the input at least ``MIN_SSIM_SHARE`` of alpha 0's; no collapsed
    output."""
    rows = sorted(
        (r for r in table if (r["dataset"], r["edit"], r["interp"]) == (dataset, edit, interp)),
        key=lambda r: r["alpha"],
    )
    key = "margin" if np.isnan(rows[0]["change"]) else "change"
    zero = rows[0]
    return [
        r["alpha"]
        for r in rows
        if r[key] - zero[key] >= VISIBLE[edit]
        and r["SSIM"] >= MIN_SSIM_SHARE * zero["SSIM"]
        and r["collapse rate"] == 0
    ], key


def _slug(edit: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", edit.lower()).strip("-")


def _grid(edit: Edit, outputs: dict, seeds: int, num_classes: int, path: Path) -> Path:
    """Rows: alpha (top: smallest); columns: input, linear seeds, slerp seeds."""
    images, masks = [], []
    for alpha in ALPHAS:
        images += [edit.image] + [outputs[i][0][alpha] for i in INTERPS]
        if edit.mask is not None:
            masks += [edit.mask] + [outputs[i][1][alpha] for i in INTERPS]
    images = torch.cat(images)
    if masks:
        return save_png(pairs_grid(images, torch.cat(masks), num_classes, ncol=1 + 2 * seeds, scale=2), path)
    return save_png(image_grid(images, nrow=1 + 2 * seeds, scale=2), path)


def _plots(table: list[dict], dataset: str, edit: str, prefix: str) -> list[Path]:
    rows = [r for r in table if (r["dataset"], r["edit"]) == (dataset, edit)]
    key = "margin" if np.isnan(rows[0]["change"]) else "change"
    wide: dict[float, dict] = {}
    for r in rows:
        row = wide.setdefault(r["alpha"], {"alpha": r["alpha"]})
        row[f"SSIM {r['interp']}"], row[f"{key} {r['interp']}"] = r["SSIM"], r[key]
    stem = f"{prefix}_{dataset}_{_slug(edit)}"
    label = "direct change measure (> 0: requested direction)" if key == "change" else "domain alignment margin"
    return [
        metric_curves(
            list(wide.values()),
            "alpha",
            [f"SSIM {i}" for i in INTERPS],
            RESULTS / f"{stem}_fidelity.png",
            title=f"{dataset}, {edit}: fidelity to the input",
            ylabel="SSIM to the input",
        ),
        metric_curves(
            list(wide.values()),
            "alpha",
            [f"{key} {i}" for i in INTERPS],
            RESULTS / f"{stem}_alignment.png",
            title=f"{dataset}, {edit}: the requested change",
            ylabel=label,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="end-to-end check in ~3 minutes (editing_quick)")
    parser.add_argument(
        "--text-steps",
        type=int,
        default=None,
        help=f"training steps of every text-conditioned model (default: {TEXT_STEPS})",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the text-conditioned models here (reused on rerun with the same --text-steps)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    prefix = "editing_quick" if args.quick else "editing"
    steps = {name: 20 if args.quick else args.text_steps or default for name, default in TEXT_STEPS.items()}
    alignment_steps = 30 if args.quick else 200
    seeds = 1 if args.quick else 2
    defaults = ImagicConfig()
    imagic_config = ImagicConfig(
        embed_steps=10 if args.quick else defaults.embed_steps,
        finetune_steps=15 if args.quick else defaults.finetune_steps,
        alphas=ALPHAS,
        seeds=seeds,
        bf16=True,
    )
    study_steps = (5, 15) if args.quick else (150, defaults.finetune_steps)
    rows, infos, training, grids, study = [], [], {}, [], []
    with tempfile.TemporaryDirectory(prefix="meddiff-editing-") as tmp:
        work = args.work or Path(tmp)
        settings = [brain(Path(tmp), args.quick, steps["brain"], alignment_steps)]  # training folders: always fresh
        if DATA.is_dir():
            settings.append(cataract(Path(tmp), args.quick, steps["cataract"], alignment_steps))
        for setting in settings:
            run, training[setting.name] = train_model(setting, work)
            print(setting.name, training[setting.name], flush=True)
            for edit in setting.edits:
                edit_rows, info, outputs = run_edit(run, setting, edit, imagic_config)
                rows += edit_rows
                infos.append(info)
                print(info["image"], info["edit"], {s: round(v, 1) for s, v in info["seconds"].items()}, flush=True)
                path = RESULTS / f"{prefix}_{setting.name}_{_slug(edit.kind)}_grid.png"
                grids.append((edit, _grid(edit, outputs, seeds, len(BRAIN_CLASSES), path)))
            measured = [e for e in setting.edits if e.measure]
            if measured:
                study += stage_b_study(run, setting, measured[-1], imagic_config, study_steps)
    table = summarise(rows)
    edits = list(dict.fromkeys((r["dataset"], r["edit"]) for r in table))
    figures = [p for dataset, edit in edits for p in _plots(table, dataset, edit, prefix)]
    write_result(
        prefix,
        "Text-guided editing (Imagic): alpha x interpolation on brain MRI and cataract frames",
        data="; ".join(f"{s.name}: {s.description}" for s in settings),
        seed=0,
        wall_seconds=time.perf_counter() - started,
        body=report(table, infos, training, imagic_config, figures, grids, study),
        numbers={
            "table": table,
            "edits": infos,
            "training": training,
            "outputs": rows,
            "stage_b_study": study,
            "good_alphas": {f"{d} {e} {i}": good_alphas(table, d, e, i)[0] for d, e in edits for i in INTERPS},
        },
    )


def report(
    table: list[dict],
    infos: list[dict],
    training: dict,
    config: ImagicConfig,
    figures: list[Path],
    grids: list[tuple[Edit, Path]],
    study: list[dict],
) -> str:
    seconds = {k: float(np.mean([i["seconds"][k] for i in infos])) for k in infos[0]["seconds"]}
    lines = [
        "Imagic on meddiff's small text-conditioned model (64 px, MiniLM captions, tone words learned from "
        "`tone.prob` 0.3): per edit, stage A "
        f"{config.embed_steps} steps (lr {config.embed_lr:g}), stage B {config.finetune_steps} steps (lr "
        f"{config.finetune_lr:g}), batch {config.batch_size}, then stage C with {config.sampler.name} "
        f"{config.sampler.steps} steps, guidance {config.sampler.guidance_scale:g}, {config.seeds} seed(s) per "
        "alpha, linear and slerp from the same fine-tuned model; bf16 autocast throughout.",
        "",
        "## Models",
        markdown_table(
            [{"dataset": k, **{n: v for n, v in t.items()}} for k, t in training.items()],
            ["dataset", "steps", "minutes", "final_loss", "aligner", "aligner_train_top1"],
        ),
        "",
        "## Edits",
        markdown_table(
            [
                {
                    "dataset": i["dataset"],
                    "image": i["image"],
                    "edit": i["edit"],
                    "target prompt": i["target"],
                    "A loss before -> after": f"{i['stage_A_loss'][0]:.4f} -> {i['stage_A_loss'][1]:.4f}",
                    "input margin": i["input"]["margin"],
                    "model response": i["response"],
                }
                for i in infos
            ],
            ["dataset", "image", "edit", "target prompt", "A loss before -> after", "input margin", "model response"],
        ),
        "",
        f"`model response`: how far the trained model follows the edit's words before any editing: {RESPONSE_SAMPLES} "
        "samples with the source caption and with the target prompt from the same seeds, mean of the change "
        "measure (else the margin) of the target sample minus the source sample. Imagic can only bring out what "
        "the model has learned: near 0, no alpha will apply the edit.",
        "",
        "## Stage wall times (mean per edit, seconds)",
        markdown_table([{k: v for k, v in seconds.items()}], list(seconds)),
        "",
        "## Stage B and guidance",
        "What the defaults rest on (one edit per dataset, a fresh model per stage-B step count, linear, the run's "
        "seeds): fidelity to the input at alpha 0 (a fine-tuned model should give the input back) and the change "
        f"measure at alpha {STUDY_ALPHAS[-1]:g}.",
        "",
        markdown_table(study, ["dataset", "edit", "B steps", "guidance", "alpha", "PSNR", "SSIM", "change"]),
        "",
        "## Sweep (mean over seeds; one held-out image per edit)",
        "`alignment`: domain text alignment with the target prompt, max(100 cos, 0) (the run's network, "
        "not a CLIP score); `margin`: 100 cos with the target prompt minus 100 cos with the source caption "
        "(unclamped; > 0: reads more like the target); `change`: the direct measure of the requested change, "
        "> 0 in the requested direction (high contrast: % change of the intensity standard deviation; bright / "
        "dark: mean intensity change, percentage points of the range; white-matter extent: change of its share "
        "of the edited label map, percentage points; none for instrument removal).",
        "",
        markdown_table(
            table,
            [
                "dataset",
                "edit",
                "interp",
                "alpha",
                "n",
                "PSNR",
                "SSIM",
                "alignment",
                "margin",
                "change",
                "collapse rate",
            ],
        ),
        "",
        "## Best alpha range",
        "Criterion (fixed before the run): the direct change measure (where the edit has one, else the "
        "alignment margin) has risen over alpha 0 by a visible step ("
        + ", ".join(f"{k} {v:g}" for k, v in VISIBLE.items())
        + "), SSIM to the input is at least "
        f"{MIN_SSIM_SHARE:.0%} of alpha 0's, and no output collapsed. "
        f"The cataract thesis found [{THESIS_RANGE[0]}, {THESIS_RANGE[1]}] (linear).",
        "",
    ]
    for dataset, edit in dict.fromkeys((r["dataset"], r["edit"]) for r in table):
        for i in INTERPS:
            good, key = good_alphas(table, dataset, edit, i)
            if not good:
                verdict = f"none ({key}): no alpha applies the text clearly while keeping the image"
            else:
                inside = [a for a in good if THESIS_RANGE[0] <= a <= THESIS_RANGE[1]]
                verdict = (
                    f"{', '.join(f'{a:g}' for a in good)} ({key}; range [{min(good):g}, {max(good):g}]; "
                    f"{len(inside)} of them inside the thesis' [{THESIS_RANGE[0]:g}, {THESIS_RANGE[1]:g}])"
                )
            lines.append(f"- {dataset}, {edit}, {i}: {verdict}")
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += [
        f"![{edit.kind}]({path.name}) ({edit.kind}: rows alpha {ALPHAS[0]:g}..{ALPHAS[-1]:g}; columns: input, "
        "linear seeds, slerp seeds)"
        for edit, path in grids
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
