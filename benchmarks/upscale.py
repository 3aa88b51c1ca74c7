"""Super-resolution on held-out real images: SR3 (``meddiff upscale``) against bicubic interpolation and a
regression UNet of the same size trained with L1 for the same minutes (the standard SR baselines).

    .venv/bin/python -m benchmarks.upscale [--datasets brain acdc] [--factor 2] [--minutes 6]
        [--steps 5 10 20 50] [--work DIR] [--name upscale] [--quick]

Datasets (to 128 px from 64 px with --factor 2, from 32 px with 4; nothing held out is ever trained on):
- ``brain``: MNI152 axial slices at 128 px (the 1 mm template is ~180 px across, so 128 px holds real
  detail); training = the training side of ``benchmarks.segmentation``'s bands, held out = its 3 test bands.
- ``acdc``: ACDC cine-MRI padded and resized to 128 px; training = the 70 training patients' slices, held
  out = every 5th slice of the 20 test patients.

Every model trains on random 64-px crops of the training images with the same UNet (``configs/
upscale_brain.yaml``'s) for the same minutes: SR3 image-only, SR3 label-aware (brain: the held-out masks,
made at 64 px by nearest neighbour as a generator's would be, drive SPADE) and the regression UNet (the SR3
network at a fixed time input, the bicubic image as its input channels, L1 to the truth). The held-out
images are downsampled 2x (antialiased bicubic) and upscaled back; PSNR and SSIM against the truth, KID
(x1000, domain feature network trained at 128 px on the training images) against the held-out truth, beside
the real-vs-real floor (the held-out images' even vs odd halves). Cost: seconds and peak memory above the
start of one image upscaled to 256 and to 512 px (20 steps, one image, this machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, write_result
from benchmarks.samplers import pair_folder
from benchmarks.segmentation import Phase, _write_pngs, acdc, brain_bands
from meddiff.config import from_dict, read_yaml
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.samples import brain_mri
from meddiff.metrics.domain_net import DomainNetConfig, train_domain_net
from meddiff.metrics.features import extract_features
from meddiff.metrics.generative import scores_from_features
from meddiff.metrics.image import psnr, ssim
from meddiff.nets.unet import UNet
from meddiff.report.grids import image_grid, save_png
from meddiff.rundir import RunDir
from meddiff.tasks import upscale
from meddiff.tasks.runs import load_trained, run_config
from meddiff.train.engine import Trainer

SIZE, CROP = 128, 64
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "upscale_brain.yaml"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Data:
    name: str
    description: str
    train: ArrayDataset  # high-resolution training images (and masks)
    held_out: torch.Tensor  # [N, C, 128, 128]
    held_out_masks: torch.Tensor | None


def brain_data(quick: bool) -> Data:
    data = brain_mri(SIZE)
    _, test, train = brain_bands(len(data))
    keep = torch.nonzero(train)[:, 0]
    held = torch.nonzero(test)[:, 0][:: 6 if quick else 1]
    train_set = ArrayDataset(data.images[keep], data.masks[keep], [data.names[i] for i in keep], data.class_names)
    return Data(
        "brain",
        f"MNI152 T1 axial slices at {SIZE} px, {len(keep)} training slices, {len(held)} held-out slices (3 bands)",
        train_set,
        data.images[held],
        data.masks[held],
    )


def acdc_data(quick: bool) -> Data:
    setting = acdc(quick, SIZE)
    images = setting.unlabelled
    return Data(
        "acdc",
        f"ACDC cine-MRI at {SIZE} px, {len(images)} training slices (70 patients), {len(setting.test)} held-out "
        "slices (every 5th of the 20 test patients)",
        ArrayDataset(images, None, [f"u{i:05d}" for i in range(len(images))]),
        setting.test.images,
        None,
    )


def base_config(data_config: DataConfig, minutes: float, label_aware: bool, factor: int) -> upscale.UpscaleConfig:
    """``configs/upscale_brain.yaml`` on this data, to a time budget, without grids or checkpoints midway."""
    raw = read_yaml(CONFIG)
    raw.pop("task")
    raw["data"] = {}
    config = from_dict(upscale.UpscaleConfig, raw)
    train = dataclasses.replace(
        config.train, max_minutes=minutes, steps=1_000_000, sample_every=1_000_000, checkpoint_every=1_000_000
    )
    return dataclasses.replace(config, data=data_config, train=train, label_aware=label_aware, factor=factor)


def training_folder(train: ArrayDataset, folder: Path) -> DataConfig:
    """The config reading the training images (and masks) from ``folder``, written there unless an earlier
    run into the same ``--work`` did."""
    if train.masks is None:
        if not folder.is_dir():
            _write_pngs(train.images, folder)
        return from_dict(DataConfig, {"kind": "image_folder", "root": str(folder), "size": SIZE})
    if not folder.is_dir():
        pair_folder(train, folder)
    settings = {"kind": "image_mask_folder", "root": str(folder), "size": SIZE, "class_names": train.class_names}
    settings["hflip"] = True  # as benchmarks.samplers.pair_folder, which wrote the folder
    return from_dict(DataConfig, settings)


def crops(config: DataConfig) -> DataConfig:
    return dataclasses.replace(config, fit="random_crop", size=CROP, short_side=SIZE)


def fit_regression(config: upscale.UpscaleConfig, run: Path):
    """The regression baseline: the SR3 UNet at a fixed time input (0) with x_t = 0, so only the bicubic
    channels carry the image, trained with L1 to the truth; returns the engine's ``TrainResult``."""
    dataset = build_dataset(config.data)
    config = dataclasses.replace(config, model=upscale.model_config(config, dataset.in_channels, 0))
    RunDir(run).prepare(config, False)
    torch.manual_seed(config.train.seed)
    model = UNet(config.model)
    stored = run_config("upscale-regression", config)

    def loss_fn(net, batch, generator):
        high = batch["image"]
        return F.l1_loss(regress(net, upscale.downsample(high, config.factor), config.factor).float(), high)

    return Trainer(run, model, dataset, config.train, loss_fn, stored, progress=False).fit()


def reuse_or_fit(fit, run: Path) -> dict:
    """Train with ``fit`` unless ``run`` already holds this benchmark's model (``--work`` of an earlier run:
    its ``bench.json`` records how it was trained); returns the steps and minutes."""
    record = run / "bench.json"
    if record.is_file():
        return {**json.loads(record.read_text()), "reused": True}
    result = fit()
    trained = {"steps": result.step, "minutes": result.seconds / 60}
    record.write_text(json.dumps(trained))
    return trained


def regress(net: torch.nn.Module, low: torch.Tensor, factor: int) -> torch.Tensor:
    size = (low.shape[-2] * factor, low.shape[-1] * factor)
    up = upscale.bicubic(low, size)
    level = torch.zeros_like(up[:, :1])
    zeros = torch.zeros(low.shape[0], device=low.device)
    return net(torch.zeros_like(up), zeros, cond_image=torch.cat([up, level], dim=1)).clamp(-1, 1)


def score(name: str, images: torch.Tensor, truth: torch.Tensor, feature_net, truth_features) -> dict:
    fake = extract_features(images, feature_net)
    kid = scores_from_features(truth_features, fake, feature_net.name, kid_subsets=100, seed=0)
    # SSIM divides by the local variance, which is ~0 in the scans' black background: there an output's
    # faint noise costs more SSIM than any error on the anatomy, so the score with the background
    # taken from the truth is given beside it, with the noise itself in grey levels
    background = truth <= truth.amin(dim=(-2, -1), keepdim=True) + 0.02
    return {
        "method": name,
        "PSNR dB": float(psnr(images, truth)),
        "SSIM": float(ssim(images, truth)),
        "SSIM, truth's background": float(ssim(torch.where(background, truth, images), truth)),
        "background noise (grey levels)": float(images[background].std() * 127.5),
        "KID x1000": 1000 * kid["kid_mean"],
        "KID std x1000": 1000 * kid["kid_std"],
    }


def cost(handle: upscale.Upscaler, side: int, with_masks: bool) -> dict:
    """Seconds and peak memory above the start of one ``side``-px output (20 steps)."""
    low = torch.zeros(1, handle.image_channels, side // handle.factor, side // handle.factor)
    masks = torch.zeros(1, side // handle.factor, side // handle.factor, dtype=torch.long) if with_masks else None
    with Phase() as phase:
        handle.upscale(low, masks, steps=20, bf16=True)
    return {"output px": side, "s per image": phase.seconds, "peak MB above start": phase.added_mb}


def run_dataset(data: Data, args: argparse.Namespace, work: Path) -> tuple[str, dict]:
    started = time.monotonic()
    folder = work / data.name
    data_config = crops(training_folder(data.train, folder / "train"))
    runs = {"SR3": (folder / "sr3", False)}
    if data.held_out_masks is not None:
        runs["SR3 label-aware"] = (folder / "sr3_labels", True)
    regression = folder / "regression"
    fits = {  # name -> (run folder, how to train it)
        **{
            name: (
                run,
                functools.partial(
                    upscale.fit, base_config(data_config, args.minutes, aware, args.factor), run, progress=False
                ),
            )
            for name, (run, aware) in runs.items()
        },
        "regression UNet (L1)": (
            regression,
            functools.partial(fit_regression, base_config(data_config, args.minutes, False, args.factor), regression),
        ),
    }
    trained = {}
    for name, (run, fit) in fits.items():
        trained[name] = reuse_or_fit(fit, run)
        print(json.dumps({name: trained[name]}), flush=True)
    net, _, _ = load_trained(regression)

    truth = data.held_out
    factor = args.factor
    low = upscale.downsample(truth, factor)
    low_masks = upscale.shrink_masks(data.held_out_masks, factor) if data.held_out_masks is not None else None
    feature_net, _ = train_domain_net(data.train.images, DomainNetConfig(image_size=SIZE))
    truth_features = extract_features(truth, feature_net)
    halves = scores_from_features(truth_features[0::2], truth_features[1::2], feature_net.name, kid_subsets=100)
    rows = [score("bicubic", upscale.bicubic(low, (SIZE, SIZE)), truth, feature_net, truth_features)]
    with torch.no_grad():
        regressed = torch.cat([regress(net, chunk, factor) for chunk in low.split(16)])
    rows.append(score("regression UNet (L1)", regressed, truth, feature_net, truth_features))
    pictures = {"bicubic": upscale.bicubic(low, (SIZE, SIZE)), "regression": regressed}
    for name, (run, label_aware) in runs.items():
        handle = upscale.load(run)
        for steps in args.steps:
            start = time.perf_counter()
            out = handle.upscale(low, low_masks if label_aware else None, steps=steps, seed=0, bf16=True)
            row = score(f"{name}, {steps} steps", out.images, truth, feature_net, truth_features)
            rows.append({**row, "s per image": (time.perf_counter() - start) / len(low)})
            print(json.dumps(rows[-1]), flush=True)
            if steps == 20:
                pictures[name] = out.images
    costs = [
        {"model": name, **cost(upscale.load(run), side, label)}
        for name, (run, label) in runs.items()
        for side in (256, 512)
    ]
    if data.name == "brain":  # ACDC figures stay uncommitted (the data's licence)
        index = torch.linspace(0, len(truth) - 1, 6).long()
        tiles = torch.stack([pictures[k][index] for k in pictures] + [truth[index]], dim=1).flatten(0, 1)
        save_png(image_grid(tiles, nrow=len(pictures) + 1, scale=1), RESULTS / f"{args.name}_brain.png")
    floor = f"{1000 * halves['kid_mean']:.2f} ± {1000 * halves['kid_std']:.2f}"
    training = "; ".join(
        f"{k}: {v['steps']} steps in {v['minutes']:.1f} min"
        + (" (trained by an earlier run into --work)" if v.get("reused") else "")
        for k, v in trained.items()
    )
    section = (
        f"## {data.name}\n\n{data.description}. Trained on 64-px crops: {training}. KID floor (held-out even vs "
        f"odd halves): {floor}.\n\n"
        + markdown_table(
            rows,
            [
                "method",
                "PSNR dB",
                "SSIM",
                "SSIM, truth's background",
                "background noise (grey levels)",
                "KID x1000",
                "s per image",
            ],
        )
        + "\n\nCost of one image (20 steps, bf16 where native):\n\n"
        + markdown_table(costs, ["model", "output px", "s per image", "peak MB above start"])
        + (
            f"\n\nColumns of `{args.name}_brain.png`: "
            + ", ".join(["bicubic", "regression", *[f"{k} (20 steps)" for k in runs], "truth"])
            + "; six held-out slices."
            if data.name == "brain"
            else ""
        )
        + f"\n\n{(time.monotonic() - started) / 60:.1f} min."
    )
    return section, {"rows": rows, "costs": costs, "trained": trained, "floor": halves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["brain", "acdc"])
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes of every model")
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--factor", type=int, default=2, choices=[2, 4], help="upscaling factor to 128 px")
    parser.add_argument("--name", default="upscale", help="results file name (its brain figure: <name>_brain.png)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="FID on .* images is biased upward")  # KID is the measure here
    if args.quick:
        args.minutes, args.steps = 0.1, [2]
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="meddiff-upscale-"))
    loaders = {"brain": brain_data, "acdc": acdc_data}
    sections, numbers = [], {}
    for name in args.datasets:
        section, numbers[name] = run_dataset(loaders[name](args.quick), args, work)
        sections.append(section)
        write_result(
            args.name,
            f"Super-resolution {SIZE // args.factor} -> {SIZE} px: SR3 vs bicubic vs a regression UNet",
            data=", ".join(args.datasets),
            seed=0,
            wall_seconds=time.monotonic() - started,
            body=f"Factor {args.factor}. Not yet measured: ISBI-EM, the cataract frames, the downstream segmenter at "
            "256 px (see the issue note).\n\n" + "\n\n".join(sections),
            numbers=numbers,
        )


if __name__ == "__main__":
    main()
