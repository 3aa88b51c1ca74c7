"""Self-training (``meddiff segment self-train``): the few-label pixel classifier labels the unlabelled
images, its surest pixels become training labels, and a U-Net segmenter learns from them beside the true
labels; with two rounds a second segmenter learns from the first one's labels.

The run folder is a ``segmenter`` run (``meddiff.load(run).segment(images)``) holding the last round's model;
with two rounds the first round's run is ``rounds/1`` inside it. ``self_training.json`` records, per round,
the teacher and how many pixels of each class it labelled and how many were kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from meddiff.config import to_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import build_dataset
from meddiff.errors import UserError
from meddiff.files import write_json
from meddiff.segment.pseudo import PseudoLabels, classifier_pseudo_labels, network_pseudo_labels
from meddiff.tasks import segment, segmenter
from meddiff.tasks.segmenter import SegmenterConfig
from meddiff.train.engine import TrainResult

console = Console(stderr=True)
SUMMARY_FILE = "self_training.json"


def unlabelled_images(config: SegmenterConfig, labelled: ArrayDataset) -> tuple[torch.Tensor, list[str]]:
    """The unlabelled images of ``config.self_training`` not in ``labelled``, at most ``max_unlabelled`` of them
    evenly spaced, checked against the labelled images' size and channels."""
    settings = config.self_training
    dataset = build_dataset(settings.unlabelled)
    known = set(labelled.names)
    rows = [i for i, name in enumerate(dataset.names) if name not in known]
    if not rows:
        raise UserError("'self_training.unlabelled' holds no image that is not also a labelled image")
    if settings.max_unlabelled is not None and len(rows) > settings.max_unlabelled:
        picks = torch.linspace(0, len(rows) - 1, settings.max_unlabelled).round().long().tolist()
        rows = [rows[i] for i in picks]
    images = dataset.images[rows]
    if images.shape[1:] != labelled.images.shape[1:]:
        raise UserError(
            f"'self_training.unlabelled' images are {list(images.shape[1:])} (channels, height, width) but the "
            f"labelled ones are {list(labelled.images.shape[1:])}: give both the same size, fit and channels"
        )
    return images, [dataset.names[i] for i in rows]


def _summary(teacher: str, labels: PseudoLabels, class_names: list[str], result: TrainResult) -> dict:
    return {
        "teacher": teacher,
        "unlabelled_images": len(labels.masks),
        "predicted_pixels": dict(zip(class_names, labels.predicted, strict=True)),
        "kept_pixels": dict(zip(class_names, labels.kept, strict=True)),
        "steps": result.step,
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "best_held_out_loss": result.best_score,
    }


def self_train(
    config: SegmenterConfig, run_dir: Path, labelled: ArrayDataset, resume: bool = False, progress: bool = True
) -> TrainResult:
    """Train ``config.self_training.rounds`` segmenters on ``labelled`` plus a teacher's confident labels of
    the unlabelled images; the last one is the run at ``run_dir``."""
    settings = config.self_training
    started = time.monotonic()
    classifier, stored = segment.load(Path(settings.classifier))
    if stored["image_channels"] != labelled.in_channels or stored["config"].data.size != labelled.images.shape[-1]:
        raise UserError(
            f"{settings.classifier}: the classifier works on {stored['config'].data.size}-px images with "
            f"{stored['image_channels']} channel(s); the labelled data are {labelled.images.shape[-1]} px with "
            f"{labelled.in_channels}: train both at the same size"
        )
    images, names = unlabelled_images(config, labelled)
    classes = labelled.class_names
    if progress:
        console.print(f"round 1: the pixel classifier labels {len(images)} unlabelled images")
    labels = classifier_pseudo_labels(
        classifier, images, len(classes), settings.keep, settings.max_disagreement, stored["min_island"]
    )
    run_dir = Path(run_dir)
    rounds, teacher = [], f"pixel classifier {settings.classifier}"
    for number in range(1, settings.rounds + 1):
        round_dir = run_dir if number == settings.rounds else run_dir / "rounds" / str(number)
        pseudo = ArrayDataset(images, labels.masks, names, classes)
        result = segmenter.fit_dataset(config, round_dir, labelled, resume=resume, progress=progress, pseudo=pseudo)
        rounds.append(_summary(teacher, labels, classes, result))
        if number < settings.rounds:
            model, _ = segmenter.load(round_dir)
            if progress:
                console.print(f"round {number + 1}: the round-{number} segmenter labels the unlabelled images")
            labels = network_pseudo_labels(model, images, len(classes), settings.keep)
            teacher = f"segmenter {round_dir}"
    write_json(
        run_dir / SUMMARY_FILE,
        {"self_training": to_dict(settings), "rounds": rounds},
    )
    result.seconds = time.monotonic() - started
    return result
