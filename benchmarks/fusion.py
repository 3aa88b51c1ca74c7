"""Multi-modal image fusion on the Harvard MRI-PET (42 pairs) and MRI-SPECT (73 pairs) sets: the diffusion
fusion model against the classic rules and the published CDDFuse numbers, with the published protocol.

    .venv/bin/python -m benchmarks.fusion [--quick] [--steps N] [--minutes M] [--work DIR]

Cross-set protocol, so that no scored pair was ever trained on: a model trained (``meddiff fuse fit``,
``configs/fuse_mri_<set>.yaml`` with the step budget below) on all MRI-PET pairs is tested on all
MRI-SPECT pairs, and the reverse. On each test set the same evaluator (``meddiff.metrics.fusion``, the
CDDFuse repository's semantics) scores the diffusion model (min-max output, as the published learned
models), the four classic rules (output clipped) and, copied from the paper, CDDFuse (not rerun: labelled
"published"). Wall time per pair is the fusing of one 256x256 pair (read and write excluded), 1 process.
``--quick`` trains a few steps and tests on 6 pairs per set; it writes ``fusion_quick`` results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table, write_result
from meddiff.fusion.folders import list_pairs, read_source
from meddiff.fusion.rules import RULES
from meddiff.metrics.fusion import METRICS, PUBLISHED_METRICS
from meddiff.report.grids import image_grid, save_png
from meddiff.tasks import fuse, load_task_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "harvard_fusion"
SETS = {"MRI_PET": "PET", "MRI_SPECT": "SPECT"}
CONFIGS = {"MRI_PET": REPO / "configs" / "fuse_mri_pet.yaml", "MRI_SPECT": REPO / "configs" / "fuse_mri_spect.yaml"}
# CDDFuse (CVPR 2023) Table 5, as quoted in ../shared/reference/fusion-metrics.md: published, not rerun.
CDDFUSE = {
    "MRI_PET": dict(EN=4.23, SD=70.73, SF=29.57, MI=2.03, SCD=1.69, VIF=0.71, Qabf=0.71, SSIM=1.49),
    "MRI_SPECT": dict(EN=3.90, SD=58.31, SF=20.87, MI=2.49, SCD=1.35, VIF=0.97, Qabf=0.78, SSIM=1.48),
}
FIGURE_PAIRS = 3
ABLATION_EVERY = 4


def subset(folder: Path, names: list[str], out: Path) -> Path:
    """A folder of symlinks to the named files of ``folder`` (quick mode's smaller test sets)."""
    out.mkdir(parents=True)
    for path in folder.iterdir():
        if path.stem in names:
            (out / path.name).symlink_to(path)
    return out


def train(train_set: str, run_dir: Path, steps: int, minutes: float) -> dict:
    """``meddiff fuse fit`` of the set's config with ``steps`` steps (or ``minutes`` of training)."""
    _, config = load_task_config(CONFIGS[train_set])
    config.data = dataclasses.replace(config.data, root=DATA / train_set)
    config.train = dataclasses.replace(
        config.train,
        steps=steps,
        max_minutes=minutes,
        warmup_steps=min(30, steps // 5),
        sample_every=steps,
        checkpoint_every=steps,
    )
    started = time.perf_counter()
    result = fuse.fit(config, run_dir, progress=False)
    prior = json.loads((run_dir / "prior.json").read_text())
    return {
        "steps": result.step,
        "train_seconds": time.perf_counter() - started,
        "budget_stop": result.stopped_by_budget,
        "final_loss": float(np.mean(list(result.losses.values())[-20:])),
        "prior_counts": prior["counts"],
        "sampler": f"{config.sampler.name} {config.sampler.steps} steps",
        "batch": f"{config.train.batch_size} random {config.data.size}px crops",
    }


def score(method: str, dir_a: Path, dir_b: Path, out: Path, **options) -> tuple[dict, list[dict]]:
    """Fuse the test folders with ``method`` (rule or run), score them: mean metrics with the median
    seconds per pair, and the per-pair rows."""
    fuse.run(method, dir_a, dir_b, out, progress=False, **options)
    rows = fuse.evaluate(dir_a, dir_b, out, progress=False)
    seconds = [f["seconds"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    return {**fuse.mean_scores(rows), "s/pair": float(np.median(seconds)), "pairs": len(rows)}, rows


def figure(test_set: str, dir_a: Path, dir_b: Path, outputs: dict[str, Path], path: Path) -> None:
    """Rows of example pairs: MRI | colour source | each method's colour PNG as written by ``fuse run``."""
    pairs = list_pairs(dir_a, dir_b)
    tiles = []
    for name, path_a, path_b in pairs[:: max(1, len(pairs) // FIGURE_PAIRS)][:FIGURE_PAIRS]:
        files = [path_a, path_b, *(folder / f"{name}.png" for folder in outputs.values())]
        tiles += [read_source(file).expand(-1, 3, -1, -1) for file in files]
    save_png(image_grid(torch.cat(tiles), nrow=2 + len(outputs)), path)


def beats(model: dict, other: dict) -> int:
    """On how many of the 8 published metrics (all higher-is-better) ``model`` scores above ``other``."""
    return sum(model[m] > other[m] for m in PUBLISHED_METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, 6 test pairs per set (fusion_quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default 500; quick 12)")
    parser.add_argument("--minutes", type=float, default=None, help="training time cap per model (default 2.5)")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and fused folders here")
    args = parser.parse_args()
    steps = args.steps or (12 if args.quick else 500)
    minutes = args.minutes or (1.0 if args.quick else 2.5)
    name = "fusion_quick" if args.quick else "fusion"
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent")
    torch.manual_seed(0)
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-fusion-"))
    work.mkdir(parents=True, exist_ok=True)
    results, training, figures, ablations = {}, {}, {}, {}
    for train_set, test_set in [("MRI_PET", "MRI_SPECT"), ("MRI_SPECT", "MRI_PET")]:
        print(f"training on {train_set} ({steps} steps, cap {minutes} min)", flush=True)
        run_dir = work / f"run_{train_set}"
        training[train_set] = train(train_set, run_dir, steps, minutes)
        dir_a, dir_b = DATA / test_set / "MRI", DATA / test_set / SETS[test_set]
        if args.quick:
            names = [n for n, _, _ in list_pairs(dir_a, dir_b)][:6]
            dir_a = subset(dir_a, names, work / f"{test_set}_subset" / "MRI")
            dir_b = subset(dir_b, names, work / f"{test_set}_subset" / SETS[test_set])
        rows, outputs = {}, {}
        for method in [str(run_dir), *RULES]:
            label = f"diffusion (trained on {train_set})" if method == str(run_dir) else method
            outputs[label] = work / f"fused_{test_set}_{Path(method).name}"
            print(f"  {test_set}: {label}", flush=True)
            rows[label], per_pair = score(method, dir_a, dir_b, outputs[label])
            if method == str(run_dir):
                model_pairs = per_pair
        # Ablation of keep_background on every ABLATION_EVERY-th test pair (sampling is the costly part).
        names = [n for n, _, _ in list_pairs(dir_a, dir_b)][::ABLATION_EVERY]
        sub_a = subset(dir_a, names, work / f"{test_set}_ablation" / "MRI")
        sub_b = subset(dir_b, names, work / f"{test_set}_ablation" / SETS[test_set])
        print(f"  {test_set}: ablation without background mask ({len(names)} pairs)", flush=True)
        raw, _ = score(str(run_dir), sub_a, sub_b, work / f"fused_{test_set}_raw", keep_background=False)
        masked = {**fuse.mean_scores([r for r in model_pairs if r["name"] in names]), "pairs": len(names)}
        ablations[test_set] = {"with background mask (default)": masked, "without background mask": raw}
        results[test_set] = rows
        figures[test_set] = f"{name}_{test_set}.png"
        shown = {k: v for k, v in outputs.items() if k.split()[0] in ("diffusion", "max", "laplacian")}
        figure(test_set, dir_a, dir_b, shown, RESULTS / figures[test_set])
    wall = time.perf_counter() - started

    body = [__doc__.split("\n\n", 2)[2].strip(), ""]
    body += [
        "Metrics: the published protocol (CDDFuse evaluator semantics): sources read as 8-bit BT.601 grey, "
        "rounded; PET/SPECT scored on Y; SSIM = scikit-image SSIM with data_range 2, summed over both "
        "sources; SSIM_wang (11x11 Gaussian, L=255) is a different convention, not comparable to published "
        "SSIM. MI in nats. Higher is better for all 8 published metrics (EN..SSIM). The diffusion output is the "
        "DDIM sample of Y with pixels black in both sources set to black (`keep_background`, ablated below), "
        "min-max stretched to 0..255; rule outputs are clipped. Training targets (the fusion prior) are "
        "per pair the best classic rule under 2 SSIM + VIF + 3 Qabf on the training set.",
        "",
    ]
    numbers = {
        "training": training,
        "results": results,
        "cddfuse_published": CDDFUSE,
        "beats": {},
        "ablation_keep_background": ablations,
    }
    summary, sections = [], []
    for train_set, test_set in [("MRI_PET", "MRI_SPECT"), ("MRI_SPECT", "MRI_PET")]:
        rows = results[test_set]
        model_label = f"diffusion (trained on {train_set})"
        model = rows[model_label]
        count = {"vs_max": beats(model, rows["max"]), "vs_cddfuse": beats(model, CDDFUSE[test_set])}
        numbers["beats"][test_set] = count
        t = training[train_set]
        table = [{"method": k, **v} for k, v in rows.items()] + [
            {"method": "CDDFuse (published, not rerun)", **CDDFUSE[test_set]}
        ]
        pairs = model["pairs"]
        summary.append(
            {
                "test set": f"{test_set} ({pairs} pairs)",
                "trained on": train_set,
                "training steps": t["steps"],
                "s/pair (diffusion)": model["s/pair"],
                "beats pixel max (of 8)": count["vs_max"],
                "beats CDDFuse published (of 8)": count["vs_cddfuse"],
            }
        )
        sections += [
            f"## Test set {test_set} ({pairs} pairs), model trained on {train_set}",
            "",
            f"Model: {t['steps']} training steps of {t['batch']}"
            f"{' (stopped by the time cap)' if t['budget_stop'] else ''} in {t['train_seconds'] / 60:.1f} min "
            "(incl. computing the prior), "
            f"sampler {t['sampler']}, bf16; prior targets won per rule on {train_set}: {t['prior_counts']}.",
            "",
            markdown_table(table, ["method", *PUBLISHED_METRICS, "AG", "CC", "PSNR", "SSIM_wang", "s/pair"]),
            "",
            f"Diffusion model beats pixel max on **{count['vs_max']}/8** and published CDDFuse on "
            f"**{count['vs_cddfuse']}/8** of the published metrics (EN SD SF MI SCD VIF Qabf SSIM).",
            "",
            f"Ablation, same model on every {ABLATION_EVERY}th test pair: sampled Y kept as is vs set to "
            "black where both sources are black (`keep_background`, the default):",
            "",
            markdown_table(
                [{"variant": k, **v} for k, v in ablations[test_set].items()], ["variant", *PUBLISHED_METRICS, "pairs"]
            ),
            "",
            f"![examples {test_set}]({figures[test_set]})",
            "",
            f"Figure: {FIGURE_PAIRS} test pairs; columns MRI | {SETS[test_set]} | "
            + " | ".join(k for k in rows if k.split()[0] in ("diffusion", "max", "laplacian"))
            + " (colour PNGs as `meddiff fuse run` writes them).",
            "",
        ]
    body += ["## Summary", "", markdown_table(summary, list(summary[0])), "", *sections]
    assert set(METRICS) <= set(next(iter(results["MRI_PET"].values())))
    write_result(
        name,
        "Image fusion: diffusion model vs classic rules vs published CDDFuse (MRI-PET, MRI-SPECT)",
        data=f"{DATA} (MRI_PET 42 pairs, MRI_SPECT 73 pairs; cross-set train/test)",
        seed=0,
        wall_seconds=wall,
        body="\n".join(body),
        numbers=numbers,
    )
    print(f"wrote {RESULTS / name}.md in {wall / 60:.1f} min")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
