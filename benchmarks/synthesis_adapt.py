"""Pretrain once, adapt: is a mask-to-image generator started from an image model pretrained on every
unlabelled image a better source of synthetic training pairs than one trained from scratch on the few
labelled pairs?

    .venv/bin/python -m benchmarks.synthesis_adapt [--quick] [--datasets acdc brain] [--labels 20]
        [--synthetic 40] [--seeds 0 1 2] [--pretrain-minutes 10] [--generator-steps 400]
        [--segmenter-steps 3000] [--work DIR]

Per dataset (splits of benchmarks.segmentation, at 64 px; test patients / slice bands never train anything):
1. The backbone: an image-only meddiff `generate` model trained for ``--pretrain-minutes`` on the dataset's
   unlabelled images (ACDC: every training-patient slice; brain: every pool and sweep slice), masks unused.
2. Three generators on the same N labelled pool pairs, each with the same budget: SPADE from scratch
   (``--generator-steps`` steps, the architecture of the backbone), SPADE adapted from the backbone with
   every weight trained (``init_from``, the same number of steps) and a ControlNet over the frozen backbone
   (``mask_conditioning: controlnet``, for as long as the scratch model trained, in wall time: its steps
   cost more).
3. Semantic consistency: a U-Net judge trained on every pool pair segments each generator's images for
   test masks; its mIoU (and per-class IoU) against the input masks, next to the judge on the real test
   images. KID against the real test images in the domain network's features.
4. Downstream: a U-Net on the N real pairs vs N real + M synthetic pairs per generator (images for
   augmented copies of the N training masks), early stopping on held-out pixels of its own training images
   with a step cap it should not reach (the table says how many stopped early), 3 seeds, real test pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import RESULTS, command_line, markdown_table, write_result
from benchmarks.segmentation import DATA, _write_pngs, choose_labels
from benchmarks.synthesis import (
    SIZE,
    _diffusion_train,
    _judge_config,
    _pair_folder,
    _pick,
    _seg,
    _segmenter_config,
    augmented_masks,
    budget,
    fit_segmenter,
    load_setting,
    summarise_downstream,
    verdicts,
    with_synthetic,
)
from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.domain_net import DomainTrainConfig
from meddiff.metrics.features import extract_features
from meddiff.metrics.generative import scores_from_features, select_feature_net
from meddiff.metrics.segmentation import segmentation_scores
from meddiff.tasks import generate, segmenter, synthesize

DATASETS = ("acdc", "brain")
SCRATCH, ADAPTED, CONTROLNET = "SPADE from scratch", "SPADE adapted (all weights)", "ControlNet (frozen backbone)"
FOLDERS = {SCRATCH: "scratch", ADAPTED: "adapted", CONTROLNET: "controlnet"}
NOISE = NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction")


def pretrain(images: torch.Tensor, data: dict, b, minutes: float, run: Path) -> dict:
    """The backbone: an image-only generator trained for ``minutes`` on ``images`` (reused if ``run`` holds it)."""
    record = run / "bench.json"
    if record.is_file():
        return json.loads(record.read_text())
    folder = _write_pngs(images, run.parent / "unlabelled")
    config = generate.GenerateConfig(
        data=from_dict(DataConfig, {"kind": "image_folder", "root": str(folder), **data}),
        model=b.unet,
        noise=NOISE,
        train=dataclasses.replace(_diffusion_train(b), steps=1_000_000, max_minutes=minutes, lr=1e-3),
        sampler=SamplerConfig(name="dpm++", steps=20),
        joint_mask=False,
        grid_samples=4,
    )
    result = generate.fit(config, run, progress=False)
    shutil.rmtree(folder)
    info = {"images": len(images), "steps": result.step, "minutes": result.seconds / 60}
    record.write_text(json.dumps(info))
    return info


def train_generators(labelled: ArrayDataset, b, backbone: Path, work: Path) -> tuple[dict, dict]:
    """The three generators (loaded) and how each trained."""
    data = from_dict(DataConfig, _pair_folder(labelled, work / "pairs"))
    sampler = SamplerConfig(name="dpm++", steps=b.sampler_steps, guidance_scale=b.guidance)
    base = synthesize.SynthesizeConfig(
        data=data, model=b.unet, noise=NOISE, train=_diffusion_train(b), sampler=sampler, grid_samples=4
    )
    configs = {
        SCRATCH: base,
        ADAPTED: dataclasses.replace(base, init_from=str(backbone)),
        CONTROLNET: dataclasses.replace(base, init_from=str(backbone), mask_conditioning="controlnet"),
    }
    loaded, info = {}, {}
    for name, config in configs.items():
        run = work / FOLDERS[name]
        shutil.rmtree(run, ignore_errors=True)
        if name == CONTROLNET:  # as long as the scratch model trained, in wall time
            train = dataclasses.replace(config.train, steps=1_000_000, max_minutes=info[SCRATCH]["minutes"])
            config = dataclasses.replace(config, train=train)
        result = synthesize.fit(config, run, progress=False)
        loaded[name] = synthesize.load(run)
        model = loaded[name].model
        frozen = model.base if name == CONTROLNET else None  # the backbone ControlNet leaves as it is
        total = sum(p.numel() for p in model.parameters())
        trained = total - (sum(p.numel() for p in frozen.parameters()) if frozen is not None else 0)
        info[name] = {"steps": result.step, "minutes": result.seconds / 60, "parameters": total, "trained": trained}
        print(json.dumps({name: info[name]}), flush=True)
    return loaded, info


def draw(synth: synthesize.Synthesizer, masks: torch.Tensor, seed: int) -> torch.Tensor:
    sampler = from_dict(SamplerConfig, synth.stored["sampler"], "sampler.")
    seeds = range(seed, seed + len(masks))
    return synthesize.synthesize(synth, masks.long(), sampler, seeds, batch_size=32, autocast_bf16=True)


def consistency(setting, generators: dict, judge, feature_net, b) -> list[dict]:
    """The judge on each generator's images for test masks, and KID against the real test images."""
    test = setting.test
    index = torch.linspace(0, len(test) - 1, min(b.fidelity_masks, len(test))).round().long().unique()
    real, masks, k = test.images[index], test.masks[index].long(), test.num_classes
    real_features = extract_features(real, feature_net)
    names = test.class_names

    def row(label: str, images: torch.Tensor, target: torch.Tensor) -> dict:
        scores = segmentation_scores(segmenter.predict(judge, images), target.long(), k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # KID on few images
            kid = scores_from_features(real_features, extract_features(images, feature_net), feature_net.name)
        per_class = {f"IoU {n}": float(v) for n, v in zip(names, scores.iou.tolist(), strict=True)}
        return {
            "images": label,
            "n": len(images),
            "KID ×1e3": 1e3 * kid["kid_mean"],
            "judge mIoU": scores.miou,
            **per_class,
        }

    rows = [row(f"real test images (all {len(test)}; KID: against themselves)", test.images, test.masks)]
    for name, synth in generators.items():
        rows.append(row(name, draw(synth, masks, 10_000), masks))
    return rows


def downstream(setting, generators: dict, labelled: ArrayDataset, m: int, seeds: list[int], b, work: Path) -> list:
    test, rows = setting.test, []
    aug = augmented_masks(labelled, setting, m, 1000)
    sets = {"real only": labelled}
    for name, synth in generators.items():
        sets[f"real + {name}"] = with_synthetic(labelled, draw(synth, aug, 1000), aug)
    for seed in seeds:
        for name, data in sets.items():
            model, result = fit_segmenter(data, _segmenter_config(b, seed), work / "segmenter")
            scores = _seg(segmenter.predict(model, test.images), test.masks, test.num_classes)
            rows.append({"training data": name, "seed": seed, "pairs": len(data), **scores, "steps": result.step})
            print(f"  {setting.name} seed {seed} {name}: mIoU {scores['miou']:.3f} ({result.step} steps)", flush=True)
    return rows


def run_dataset(name: str, args, b, work: Path) -> dict:
    started = time.monotonic()
    setting = load_setting(name, args.quick)
    labelled = _pick(setting.pool, choose_labels(setting, min(args.labels, len(setting.pool)), 0))
    folder = work / name
    pretrained = pretrain(setting.unlabelled, setting.diffusion_data, b, args.pretrain_minutes, folder / "backbone")
    print(json.dumps({"backbone": pretrained}), flush=True)
    generators, info = train_generators(labelled, b, folder / "backbone", folder)
    feature_net = select_feature_net(
        setting.pool.images, cache_dir=folder / "domain_net", train_config=DomainTrainConfig(steps=b.domain_steps)
    )
    judge, judge_result = fit_segmenter(setting.pool, _judge_config(b), folder / "judge")
    fidelity = consistency(setting, generators, judge, feature_net, b)
    down = downstream(setting, generators, labelled, args.synthetic, args.seeds, b, folder)
    return {
        "description": setting.description,
        "labelled": len(labelled),
        "test": len(setting.test),
        "pool": len(setting.pool),
        "backbone": pretrained,
        "generators": info,
        "judge_steps": judge_result.step,
        "feature_net": feature_net.name,
        "fidelity": fidelity,
        "downstream": down,
        "minutes": (time.monotonic() - started) / 60,
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
    }


def section(name: str, r: dict, cap: int) -> str:
    gens = "; ".join(
        f"{g}: {i['steps']} steps in {i['minutes']:.1f} min ({i['parameters'] / 1e6:.2f} M parameters, "
        f"{i['trained'] / 1e6:.2f} M trained)"
        for g, i in r["generators"].items()
    )
    bb = r["backbone"]
    down = summarise_downstream(r["downstream"])
    stopped = sum(row["steps"] < cap for row in r["downstream"])
    columns = list(dict.fromkeys(k for row in r["fidelity"] for k in row))
    return (
        f"## {name}\n\n{r['description']}. Backbone: {bb['images']} unlabelled images, {bb['steps']} steps in "
        f"{bb['minutes']:.1f} min (not counted in the generators' budgets). Generators on {r['labelled']} "
        f"labelled pairs: {gens}. Judge: every pool pair ({r['pool']}), {r['judge_steps']} steps; KID features: "
        f"`{r['feature_net']}`. {r['minutes']:.0f} min in all, run by `{r['command']}` on {r['date']}.\n\n"
        f"### Semantic consistency and KID (test masks)\n\n{markdown_table(r['fidelity'], columns)}\n\n"
        f"### Downstream ({r['labelled']} real pairs + {r['synthetic']} synthetic, {r['test']} real test pairs)\n\n"
        f"{markdown_table(down, list(down[0]))}\n\n{verdicts(r['downstream'])}. {stopped} of "
        f"{len(r['downstream'])} segmenters stopped early (cap {cap} steps).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and budgets (a smoke test)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--synthetic", type=int, default=40)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--generator-steps", type=int, default=400)
    parser.add_argument("--segmenter-steps", type=int, default=3000, help="cap of every downstream U-Net")
    parser.add_argument("--work", type=Path, default=None, help="keeps the backbones for a rerun")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    if args.quick:
        args.labels, args.synthetic, args.seeds = min(args.labels, 6), min(args.synthetic, 6), args.seeds[:1]
        args.pretrain_minutes = min(args.pretrain_minutes, 0.2)
    b = budget(args.quick, args.generator_steps, 500)  # the judge's cap: 3 x 500 steps, as in synthesis.md
    if not args.quick:
        b = dataclasses.replace(b, segmenter_train=dataclasses.replace(b.segmenter_train, steps=args.segmenter_steps))
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-adapt-"))
    name = "synthesis_adapt_quick" if args.quick else "synthesis_adapt"
    previous = RESULTS / f"{name}.json"  # datasets of earlier runs that this one does not redo are kept
    kept = json.loads(previous.read_text())["datasets"] if previous.is_file() else {}
    results = {k: v for k, v in kept.items() if k not in args.datasets}
    for dataset in args.datasets:
        results[dataset] = {**run_dataset(dataset, args, b, work), "synthetic": args.synthetic}
        body = (
            f"All at {SIZE} px. Generators share the budget rule of the issue: the same wall time for each "
            f"(SPADE from scratch and adapted: {b.generator_steps} steps of 8 pairs, the same UNet; ControlNet "
            "for as long as the scratch model took); the backbone's pretraining is reported apart. Downstream "
            f"U-Nets: base {b.segnet.base_channels}, at most {b.segmenter_train.steps} steps, early stopping every "
            f"{b.segmenter_train.eval_every} steps (patience {b.segmenter_train.patience}) on 10% held-out pixels "
            "of their own training images; mean ± sample std over seeds "
            f"{args.seeds}.\n\n" + "\n".join(section(k, v, b.segmenter_train.steps) for k, v in results.items())
        )
        write_result(
            name,
            "Pretrain once, adapt: mask-to-image generators started from an unlabelled-image backbone",
            data=", ".join(results) + " (../shared/data and nilearn's MNI152)",
            seed=str(args.seeds),
            wall_seconds=sum(60 * r["minutes"] for r in results.values()),
            body=body,
            numbers={"datasets": results, "budget": dataclasses.asdict(b)},
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
