"""ACDC on the semi-supervised field's protocol: 1, 3 or 7 labelled training patients (the first ones of
split.csv, both phases, every slice), the other training patients unlabelled, scored on the 20 test
patients as per-case (patient and phase) 3D Dice and HD95 of RV, myocardium and LV cavity.

    .venv/bin/python -m benchmarks.segmentation_acdc [--patients 1 3 7] [--seeds 0 1 2] [--size 128]
                                                     [--methods unet mlp selftrain finetune] [--work DIR]
                                                     [--update]

Stages (each one's wall time is printed and reported): (1) an image-only diffusion model (meddiff
``generate``, ``joint_mask: false``) trains on every training-patient slice, unlabelled, at ``--size`` padded
squares, on random ``--crop``-px windows; (2) ``run_sweep`` picks its decoder blocks and timesteps on the
first labelled patient against the 10 validation patients (never a test patient); (3) per patient count and
seed: the U-Net from scratch (``segment baseline``), the pixel MLP on diffusion features (``segment fit``:
the segment defaults, the island filter at the size the labels support) and self-training (``segment
self-train``: that classifier labels ``--max-unlabelled`` unlabelled slices, a U-Net learns from its surest
80% per class beside the true labels) and the diffusion UNet fine-tuned end to end as a segmenter (the
segmenter's ``backbone``). Every fit goes through the task's own entry point, so the numbers are those a
user gets. ``--update`` keeps the results file's rows of the methods, counts and seeds not rerun.
Predictions are made at ``--size`` and brought back to each slice's native grid (pad removed, nearest
neighbour) before scoring, as SSL4MIS-style evaluations do; HD95 is in native pixels with one slice counted
as one pixel (the data carry no spacing).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import RESULTS, command_line, markdown_table, mean_std, write_result
from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.fit import Fit
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.metrics.volumes import volume_scores
from meddiff.nets.segnet import SegNetConfig
from meddiff.nets.unet import UNetConfig
from meddiff.segment.features import FeatureConfig
from meddiff.segment.islands import fill_islands
from meddiff.segment.pixels import PixelConfig
from meddiff.tasks import generate, segment, segmenter
from meddiff.tasks.segment import SegmentConfig, SweepConfig, load_diffusion, run_sweep, to_native
from meddiff.tasks.segmenter import SegmenterConfig, SelfTraining, select_images
from meddiff.train.engine import TrainConfig

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
CLASSMAP = Path(__file__).resolve().parents[1] / "configs" / "data" / "classmaps" / "acdc.yaml"
CASE = re.compile(r"(patient\d+_frame\d+)_slice_(\d+)")
STRUCTURES = ["RV", "Myo", "LV"]
METHODS = {
    "unet": "U-Net from scratch",
    "mlp": "diffusion features + pixel MLP",
    "selftrain": "self-training (pixel MLP teacher, U-Net student)",
    "finetune": "diffusion UNet fine-tuned end to end",
    "unet+aug": "U-Net from scratch, flips and rotations",
    "selftrain+aug": "self-training, student with flips and rotations",
}
# the augmentation of the "+aug" methods' networks: SSL4MIS's ACDC recipe (random flips, rotations to 20°)
AUGMENT = {"hflip": True, "vflip": True, "rotate": 20.0}
# mean Dice (%) at 1 / 3 / 7 labelled patients, from the UniMatch repository (../shared/reference/anchors.md)
PUBLISHED = {
    "supervised only": (28.5, 41.5, 62.5),
    "UA-MT": (None, 61.0, 81.5),
    "CPS": (None, 60.3, 83.3),
    "UniMatch": (85.4, 88.9, 89.9),
}
PUBLISHED_COUNTS = (1, 3, 7)


def data_config(split: str, size: int, augment: bool = False) -> DataConfig:
    return from_dict(
        DataConfig,
        {
            "kind": "image_mask_folder",
            "root": str(ACDC),
            "class_map": str(CLASSMAP),
            "split_file": str(ACDC / "split.csv"),
            "split": split,
            "size": size,
            "fit": "pad",
            **(AUGMENT if augment else {}),
        },
    )


def split_rows() -> list[dict]:
    with open(ACDC / "split.csv") as f:
        return list(csv.DictReader(f))


def labelled_patients(count: int) -> list[str]:
    """The first ``count`` training patients in split.csv's order."""
    return list(dict.fromkeys(r["patient"] for r in split_rows() if r["split"] == "train"))[:count]


def slice_names(patients: list[str], split: str = "train") -> list[str]:
    return [r["name"] for r in split_rows() if r["split"] == split and r["patient"] in set(patients)]


class TestCases:
    """The test patients' slices at the working size, and their native masks grouped into 3D cases."""

    def __init__(self, size: int):
        self.dataset = build_dataset(data_config("test", size))
        self.fit = Fit(size, "pad")
        self.cases: dict[str, list[int]] = {}
        for i, name in enumerate(self.dataset.names):
            case, _ = CASE.match(name).groups()
            self.cases.setdefault(case, []).append(i)
        for rows in self.cases.values():
            rows.sort(key=lambda i: int(CASE.match(self.dataset.names[i]).group(2)))
        self.truth = {
            case: np.stack([np.array(Image.open(ACDC / "masks" / f"{self.dataset.names[i]}.png")) for i in rows])
            for case, rows in self.cases.items()
        }

    def score(self, labels: torch.Tensor) -> dict:
        """Per-case Dice and HD95 of working-size predictions ``[N, S, S]`` (one per test slice)."""
        dice, hd95 = [], []
        for case, rows in self.cases.items():
            truth = self.truth[case]
            native = truth.shape[1:]
            volume = np.stack([to_native(labels[i], native, self.fit).numpy() for i in rows])
            scores = volume_scores(volume, truth, num_classes=4)
            dice.append(scores.dice)
            hd95.append(scores.hd95)
        dice_array, hd_array = np.array(dice), np.array(hd95)
        return {
            "cases": len(self.cases),
            "dice": dice_array.mean(axis=0).tolist(),
            "mean_dice": float(dice_array.mean()),
            "hd95": np.nanmean(hd_array, axis=0).tolist(),
            "mean_hd95": float(np.nanmean(hd_array)),
            "missed": int(np.isnan(hd_array).sum()),  # (case, structure) pairs with an empty prediction
        }


def train_diffusion(args, work: Path) -> tuple[Path, dict]:
    """The image-only diffusion model on every training slice (reused when ``work`` holds it)."""
    run = work / "diffusion"
    info_file = run / "bench.json"
    if info_file.is_file():
        return run, json.loads(info_file.read_text())
    train = build_dataset(data_config("train", args.size))
    folder = work / "unlabelled"
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(train.names, train.images, strict=True):
        Image.fromarray(((image[0] + 1) * 127.5).round().byte().numpy()).save(folder / f"{name}.png")
    config = generate.GenerateConfig(
        data=from_dict(
            DataConfig,
            {
                "kind": "image_folder",
                "root": str(folder),
                "size": args.crop,
                "fit": "random_crop",
                "short_side": args.size,
            },
        ),
        model=UNetConfig(base_channels=32, channel_mults=[1, 2, 2, 4], blocks_per_level=1, attention_levels=[]),
        noise=NoiseConfig(beta_schedule="cosine", prediction_type="v_prediction"),
        train=TrainConfig(
            steps=args.diffusion_steps,
            batch_size=8,
            lr=1e-3,
            warmup_steps=20,
            ema_decay=0.995,
            mixed_precision="bf16",
            sample_every=100_000,
            checkpoint_every=100_000,
            keep_checkpoints=1,
            log_every=50,
        ),
        sampler=SamplerConfig(name="dpm++", steps=20),
        joint_mask=False,
        grid_samples=4,
    )
    result = generate.fit(config, run, progress=False)
    shutil.rmtree(folder)
    info = {
        "steps": result.step,
        "minutes": result.seconds / 60,
        "final_loss": float(np.mean(list(result.losses.values())[-50:])),
        "images": len(train),
    }
    info_file.write_text(json.dumps(info))
    return run, info


def choose_features(diffusion_run: Path, size: int, work: Path) -> dict:
    """Blocks and timesteps from the sweep: trained on the first labelled patient, scored on the validation
    patients (every 5th slice)."""
    out = work / "sweep"
    if (out / "sweep.json").is_file():
        return json.loads((out / "sweep.json").read_text())["recommended"]
    model, diffusion, _ = load_diffusion(diffusion_run)
    train = select_images(build_dataset(data_config("train", size)), slice_names(labelled_patients(1)))
    val = build_dataset(data_config("val", size))
    val = ArrayDataset(val.images[::5], val.masks[::5], val.names[::5], val.class_names)
    sweep = SweepConfig(timesteps=[50, 150, 250], members=2, max_pixels=8000, top_blocks=3, top_timesteps=2)
    config = SegmentConfig(diffusion=diffusion_run, pixels=PixelConfig(prior_correction="fitted"), sweep=sweep)
    run_sweep(model, diffusion, config, train, val, out)
    return json.loads((out / "sweep.json").read_text())["recommended"]


def unet_train(args, seed: int) -> TrainConfig:
    return TrainConfig(
        steps=args.unet_steps,
        batch_size=8,
        lr=1e-3,
        warmup_steps=20,
        ema_decay=0.99,
        eval_every=25,
        patience=8,
        checkpoint_every=100_000,
        keep_checkpoints=1,
        log_every=25,
        seed=seed,
    )


def run_method(method: str, args, names: list[str], seed: int, features: dict, diffusion_run: Path, work: Path):
    """Fit one method through its task's entry point; returns a predictor of working-size images and facts."""
    data = data_config("train", args.size)
    augment = method.endswith("+aug")
    method = method.removesuffix("+aug")
    if method in ("mlp", "selftrain"):
        classifier_run = work / "classifier"
        if not (classifier_run / "metrics.json").is_file():
            config = SegmentConfig(
                diffusion=diffusion_run, data=data, images=names, features=FeatureConfig(**features), seed=seed
            )
            segment.fit(config, classifier_run, progress=False)
        metrics = json.loads((classifier_run / "metrics.json").read_text())
    if method == "mlp":
        classifier, stored = segment.load(classifier_run)

        def predict(images: torch.Tensor) -> torch.Tensor:
            labels = classifier.predict(images).labels
            return torch.stack([fill_islands(m, stored["min_island"]) for m in labels])

        return predict, {
            "steps": metrics["steps"],
            "stopped_early": metrics["stopped_early"],
            "min_island": stored["min_island"],
        }
    model_config = SegNetConfig(base_channels=16, depth=4)
    config = SegmenterConfig(
        data=data_config("train", args.size, augment), images=names, model=model_config, train=unet_train(args, seed)
    )
    if method == "finetune":
        config.backbone = diffusion_run
    if method == "selftrain":
        config.self_training = SelfTraining(
            classifier=classifier_run, unlabelled=data, max_unlabelled=args.max_unlabelled, keep=args.keep
        )
    run = work / f"{method}{'+aug' if augment else ''}"
    result = segmenter.fit(config, run, progress=False)
    model, _ = segmenter.load(run)
    facts = {"steps": result.step, "stopped_early": result.stopped_early, "best_step": result.best_step}
    if method == "selftrain":
        facts["pseudo"] = json.loads((run / "self_training.json").read_text())["rounds"][0]
    return (lambda images: segmenter.predict(model, images)), facts


def summarise(rows: list[dict], counts: list[int]) -> tuple[str, list[dict]]:
    table = []
    for count in counts:
        for key, name in METHODS.items():
            runs = [r for r in rows if r["patients"] == count and r["method"] == key]
            if not runs:
                continue

            table.append(
                {
                    "labelled patients": count,
                    "method": name,
                    "seeds": len(runs),
                    "mean Dice": mean_std([r["mean_dice"] for r in runs]),
                    **{f"Dice {s}": mean_std([r["dice"][k] for r in runs]) for k, s in enumerate(STRUCTURES)},
                    "HD95 (px)": mean_std([r["mean_hd95"] for r in runs]),
                    "missed structures": sum(r["missed"] for r in runs),
                    "steps": round(statistics.mean(r["steps"] for r in runs)),
                    "stopped early": f"{sum(bool(r['stopped_early']) for r in runs)}/{len(runs)}",
                    "fit min": statistics.mean(r["fit_s"] for r in runs) / 60,
                }
            )
        for name, values in PUBLISHED.items():
            if count in PUBLISHED_COUNTS and values[PUBLISHED_COUNTS.index(count)] is not None:
                table.append(
                    {
                        "labelled patients": count,
                        "method": f"{name} (published)",
                        "mean Dice": f"{values[PUBLISHED_COUNTS.index(count)] / 100:.3f}",
                    }
                )
    columns = list(next(r for r in table if "seeds" in r))
    return markdown_table(table, columns), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=64, help="diffusion training window (px)")
    parser.add_argument("--diffusion-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=1000, help="cap; early stopping ends most fits")
    parser.add_argument("--max-unlabelled", type=int, default=256)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/segmentation_acdc"))
    parser.add_argument(
        "--update", action="store_true", help="keep the results file's rows of other methods, counts and seeds"
    )
    args = parser.parse_args()
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.monotonic()
        stages[name] = stages.get(name, 0.0) + (now - since)
        print(f"[{(now - started) / 60:6.1f} min] {name}: {(now - since) / 60:.1f} min", flush=True)
        return now

    mark = time.monotonic()
    diffusion_run, diffusion = train_diffusion(args, args.work)
    mark = stage("diffusion pretraining", mark)
    features = choose_features(diffusion_run, args.size, args.work)
    mark = stage("block x timestep sweep", mark)
    test = TestCases(args.size)
    mark = stage("loading test cases", mark)
    rows: list[dict] = []
    for count in args.patients:
        names = slice_names(labelled_patients(count))
        for seed in args.seeds:
            work = args.work / f"p{count}_s{seed}"
            shutil.rmtree(work, ignore_errors=True)
            for method in args.methods:
                fit_started = time.monotonic()
                predict, facts = run_method(method, args, names, seed, features, diffusion_run, work)
                fit_s = time.monotonic() - fit_started
                labels = predict(test.dataset.images)
                scores = test.score(labels)
                rows.append(
                    {"patients": count, "seed": seed, "method": method, "slices": len(names), "fit_s": fit_s}
                    | facts
                    | scores
                )
                print(
                    f"  {count} patient(s), seed {seed}, {method}: mean Dice {scores['mean_dice']:.3f}, "
                    f"HD95 {scores['mean_hd95']:.1f} px ({fit_s / 60:.1f} min)",
                    flush=True,
                )
                mark = stage(f"{method} fits and test predictions", mark)
            shutil.rmtree(work, ignore_errors=True)
            write_report(args, rows, stages, test, diffusion, features, time.monotonic() - started, complete=False)
    write_report(args, rows, stages, test, diffusion, features, time.monotonic() - started, complete=True)


def write_report(args, rows, stages, test, diffusion, features, wall: float, complete: bool) -> None:
    """The results file, rewritten after every patient count and seed so that a long run leaves what it
    measured; until the run ends its body says which fits are still to come."""
    rows = [{"measured_by": command_line()} | r for r in rows]
    if args.update and (RESULTS / "segmentation_acdc.json").is_file():
        rerun = {(r["patients"], r["seed"], r["method"]) for r in rows}
        earlier = json.loads((RESULTS / "segmentation_acdc.json").read_text())
        kept = [r for r in earlier["rows"] if (r["patients"], r["seed"], r["method"]) not in rerun]
        rows = [{"measured_by": earlier["command"]} | r for r in kept] + rows
    counts = sorted({r["patients"] for r in rows})
    table_md, table = summarise(rows, counts)
    status = (
        ""
        if complete
        else (
            "**Incomplete**: this command is still running (or was stopped); done so far: "
            + ", ".join(f"{r['patients']} patient(s) seed {r['seed']} {r['method']}" for r in rows)
            + ".\n\n"
        )
    )
    body = status + (
        f"Working size {args.size} px (slices padded to a square, then resized); {len(test.dataset)} test "
        f"slices in {len(test.cases)} cases (20 patients x 2 phases). Labelled slices: "
        + ", ".join(f"{c} patient(s) = {len(slice_names(labelled_patients(c)))}" for c in counts)
        + f". Diffusion model: {diffusion['images']} unlabelled training slices, {diffusion['steps']} steps on "
        f"random {args.crop}-px windows ({diffusion['minutes']:.1f} min), final loss {diffusion['final_loss']:.4f}"
        f"; features: decoder blocks {features['blocks']}, timesteps {features['timesteps']} (sweep on "
        "patient 1 vs the validation patients). U-Nets: base 16, depth 4, batch 8, at most "
        f"{args.unet_steps} steps with early stopping on 10% held-out labelled pixels (every 25 steps, "
        f"patience 8). Self-training: {args.max_unlabelled} unlabelled slices (evenly spaced over the other "
        f"training patients), keep {args.keep:.0%} per class.\n\n"
        "Mean Dice = mean over cases of the mean over RV, Myo and LV (the published rows' convention); HD95 in "
        "native pixels, averaged over the (case, structure) pairs where both prediction and truth are non-empty; "
        "'missed structures' counts the pairs with an empty prediction (no HD95). Scores: mean ± sample std over "
        "seeds.\n\n"
        + table_md
        + "\n\nWall time per stage of this command (min): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in stages.items())
        + ".\n\nRows measured by: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r["measured_by"] for r in rows))
    )
    write_result(
        "segmentation_acdc",
        "ACDC semi-supervised protocol: 1 / 3 / 7 labelled patients, per-case 3D Dice and HD95",
        data=f"../shared/data/acdc (split.csv: 70 train / 10 val / 20 test patients), {args.size} px",
        seed=str(args.seeds),
        wall_seconds=wall,
        body=body,
        numbers={"rows": rows, "table": table, "stages": stages, "features": features, "diffusion": diffusion},
    )


if __name__ == "__main__":
    main()
