"""A text-conditioned diffusion model of images (+ label maps), the model that ``meddiff edit`` edits with.

The foundation UNet with cross-attention to the token embeddings of a caption (``meddiff.text``: MiniLM by
default, or a local CLIP text model). It diffuses the image, or ``[image, one-hot label map in [-1, 1]]``
together (``generate.PairCodec``), so an edit changes the label map with the image and decodes it to valid
class ids. Captions come from a CSV file or from the label map by a documented template
(``text.captions``); ``caption_drop_prob`` of the training samples get the empty prompt's embedding, which
is the null conditioning of classifier-free guidance at sampling and editing time. With ``tone.prob > 0``
the model also learns the words dark / bright / low contrast / high contrast (``text.tone``).

After the diffusion model, ``fit`` trains the run's text-alignment network (``metrics.text_alignment``:
a small image encoder matched contrastively to the caption embeddings of the training images), which
``meddiff edit run`` uses to score text alignment when no CLIP model is given, and writes
``captions.csv``: the training captions, i.e. the vocabulary prompts should use.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch

from meddiff.config import from_dict
from meddiff.data.build import DataConfig, build_dataset
from meddiff.devices import model_device
from meddiff.diffusion.conditioning import Conditioning
from meddiff.diffusion.objective import Diffusion
from meddiff.diffusion.sampling import sample
from meddiff.diffusion.schedulers import NoiseConfig, SamplerConfig
from meddiff.errors import UserError
from meddiff.files import atomic_write
from meddiff.metrics.text_alignment import (
    ALIGNMENT_DIR,
    AlignmentTrainConfig,
    DomainTextAligner,
    has_aligner,
    load_aligner,
    save_aligner,
    train_aligner,
)
from meddiff.nets.unet import UNet, UNetConfig
from meddiff.report.grids import image_grid, pairs_grid, save_png
from meddiff.rundir import RunDir
from meddiff.runlock import releases_run_lock
from meddiff.tasks.generate import PairCodec
from meddiff.tasks.pretrained import TrainParts, check_pretrained_options, new_unet, task_model
from meddiff.tasks.runs import RunHandle, load_trained, run_config
from meddiff.text.captions import CaptionConfig, Captioner
from meddiff.text.encoders import MINILM, TextEncoder, TextEncoding, load_text_encoder
from meddiff.text.tone import ToneConfig, all_variants, tone_variants
from meddiff.train.engine import TrainConfig, Trainer, TrainResult, seed_everything

TASK = "textgen"
CAPTIONS_FILE = "captions.csv"


@dataclass
class TextGenConfig:
    """``meddiff edit fit`` / ``meddiff train`` config of the text-conditioned model (``task: textgen``)."""

    data: DataConfig = field(default_factory=DataConfig)
    # in/out channels and context_dim are set from the data and the text encoder; cross-attention sits at
    # the attention_levels (and the middle block); context_pooled adds the tokens' mean to the time embedding
    model: UNetConfig = field(default_factory=UNetConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(guidance_scale=2.0))  # training grids
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    text_encoder: str = MINILM  # "minilm" or a local CLIP text model / Stable Diffusion folder
    text_max_length: int | None = None  # tokens per prompt (default: 64 MiniLM, 77 CLIP)
    joint_mask: bool = True  # diffuse the label map with the image (needs labelled data)
    caption_drop_prob: float = 0.1  # share of training samples given the empty prompt (for guidance)
    tone: ToneConfig = field(default_factory=ToneConfig)  # intensity variants named in the caption
    alignment: AlignmentTrainConfig = field(default_factory=AlignmentTrainConfig)  # steps 0: skip
    grid_samples: int = 8
    # a pretrained image-only generate run to start from (its model and noise replace the sections above);
    # cross-attention, the pooled text embedding and the mask channels start silent
    init_from: str | None = None
    train_parts: TrainParts = "all"  # with init_from: all, or only the new parts (adapters)

    def __post_init__(self) -> None:
        check_pretrained_options(self.init_from, self.train_parts)
        if not 0.0 <= self.caption_drop_prob < 1.0:
            raise ValueError(f"caption_drop_prob must be in [0, 1), got {self.caption_drop_prob}")


@dataclass(repr=False)
class TextModel(RunHandle):
    """A trained text-conditioned model, ready to sample (``meddiff.load(run).sample(prompts)``) or edit."""

    task: ClassVar[str] = TASK
    config_class: ClassVar[type] = TextGenConfig
    unet: UNet
    diffusion: Diffusion
    codec: PairCodec
    encoder: TextEncoder
    null: TextEncoding  # the empty prompt
    stored: dict
    checkpoint: Path

    @property
    def size(self) -> int:
        return int(self.stored["data"]["size"])

    @property
    def class_names(self) -> list[str] | None:
        return self.stored["codec"]["class_names"] if self.codec.num_classes else None

    def conditioning(self, text: TextEncoding) -> Conditioning:
        return text_conditioning(text, self.null)

    def networks(self) -> list[torch.nn.Module]:
        return [self.unet]

    def sample(
        self,
        prompts: Sequence[str],
        steps: int = 20,
        sampler: str = "dpm++",
        guidance: float = 1.0,
        seed: int = 0,
        size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sample per prompt (``i`` from seed ``seed + i``): images ``[N, C, H, W]`` in [-1, 1] and masks
        ``[N, H, W]`` (None for an image-only model), on the CPU."""
        settings = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance)
        side = size or self.size
        return generate_from_text(
            self.unet, self.diffusion, self.codec, self.encoder, self.null, list(prompts), settings, seed, (side, side)
        )


def text_conditioning(text: TextEncoding, null: TextEncoding) -> Conditioning:
    """Cross-attention conditioning on ``text`` whose null version is the empty prompt."""
    return Conditioning(context=text.tokens, context_mask=text.mask, null_context=null.tokens)


def _codec(config: TextGenConfig, image_channels: int, num_classes: int) -> PairCodec:
    if config.joint_mask and not num_classes:
        raise UserError("joint_mask is true but the data has no masks; set joint_mask: false for images only")
    return PairCodec(image_channels, num_classes if config.joint_mask else 0)


def dataset_captions(captioner: Captioner, dataset) -> list[str]:
    """Captions of every (unaugmented) training sample, in dataset order."""
    batch = {"name": dataset.names}
    if dataset.masks is not None:
        batch["mask"] = dataset.masks.long()
    if dataset.attributes is not None:
        batch["attribute"] = dataset.attributes
    return captioner(batch)


@releases_run_lock
def fit(config: TextGenConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the text-conditioned model (then its text-alignment network) on ``config.data``."""
    dataset = build_dataset(config.data)
    captioner = Captioner(
        config.captions, dataset.names, dataset.class_names, dataset.attribute_names, config.data.kind
    )
    encoder = load_text_encoder(config.text_encoder, config.text_max_length)
    codec = _codec(config, dataset.in_channels, dataset.num_classes)
    size = tuple(dataset[0]["image"].shape[-2:])
    model_config, noise, backbone = task_model(
        config.init_from,
        dataset.in_channels,
        config.model,
        config.noise,
        in_channels=codec.channels,
        out_channels=codec.channels,
        context_dim=encoder.dim,
        context_pooled=config.model.context_pooled,
        num_classes=0,
    )
    if not model_config.attention_levels:
        where = f"the backbone {config.init_from}" if backbone else "model"
        raise UserError(f"attention_levels of {where} is empty: cross-attention to the text needs at least one level")
    config = replace(config, model=model_config, noise=noise)
    RunDir(run_dir).prepare(config, resume)
    captions = dataset_captions(captioner, dataset)
    _write_captions(Path(run_dir) / CAPTIONS_FILE, dataset.names, captions)
    seed_everything(config.train.seed)
    model, trained = new_unet(config.model, backbone, config.train_parts)
    diffusion = Diffusion(config.noise)
    null = encoder.encode([""])
    stored = run_config(TASK, config)
    stored["codec"] = {
        "image_channels": codec.image_channels,
        "num_classes": codec.num_classes,
        "class_names": dataset.class_names,
    }
    stored["text"] = {"encoder": encoder.name, "max_length": encoder.max_length, "caption_prefix": captioner.prefix}

    def loss_fn(net, batch, generator):
        captions = captioner(batch)
        if config.tone.prob:
            images, captions = tone_variants(batch["image"], captions, config.tone, generator)
            batch = {**batch, "image": images}
        cond = text_conditioning(encoder.encode(captions), null)
        return diffusion.loss(net, codec.encode(batch), cond, generator, cond_drop_prob=config.caption_drop_prob)

    grid_captions = [captions[i] for i in torch.linspace(0, len(captions) - 1, config.grid_samples).long()]

    def sample_fn(net, path):
        images, masks = generate_from_text(
            net, diffusion, codec, encoder, null, grid_captions, config.sampler, seed=config.train.seed, size=size
        )
        save_png(_grid(images, masks, codec), path)

    trainer = Trainer(
        run_dir, model, dataset, config.train, loss_fn, stored, sample_fn, progress, param_groups={"model": trained}
    )
    result = trainer.fit(resume=resume)
    alignment_dir = Path(run_dir) / ALIGNMENT_DIR
    if config.alignment.steps and not (resume and has_aligner(alignment_dir)):
        images = dataset.images
        if config.tone.prob:
            images, captions = all_variants(images, captions, config.tone)
        pooled = encoder.encode(captions).pooled
        aligner, _ = train_aligner(images, pooled, captions, config.alignment, progress, model_device(model))
        save_aligner(aligner, alignment_dir)
    return result


def _write_captions(path: Path, names: list[str], captions: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["name", "caption"])
    writer.writerows(zip(names, captions, strict=True))
    atomic_write(path, text.getvalue().encode("utf-8"))


def _grid(images: torch.Tensor, masks: torch.Tensor | None, codec: PairCodec):
    scale = max(1, 128 // images.shape[-1])
    if masks is None:
        return image_grid(images, nrow=4, scale=scale)
    return pairs_grid(images, masks, codec.num_classes, ncol=4, scale=scale)


def generate_from_text(
    model: torch.nn.Module,
    diffusion: Diffusion,
    codec: PairCodec,
    encoder: TextEncoder,
    null: TextEncoding,
    prompts: list[str],
    sampler: SamplerConfig,
    seed: int,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One sample per prompt (sample ``i`` drawn with seed ``seed + i``), decoded to images (+ masks)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    cond = text_conditioning(encoder.encode(prompts), null)
    x = sample(model, diffusion, sampler, (len(prompts), codec.channels, *size), cond, generator=generators)
    images, masks = codec.decode(x)
    return images.cpu(), (masks.cpu() if masks is not None else None)


def load(run_or_checkpoint: Path, ema: bool = True, device: str | torch.device = "cpu") -> TextModel:
    """A trained text-conditioned model (EMA weights by default, on ``device``) with its text encoder (whose
    token embeddings move to the model's device when sampling)."""
    unet, stored, path = load_trained(run_or_checkpoint, ema=ema, device=device, task=TASK)
    encoder = load_text_encoder(stored["text"]["encoder"], stored["text"]["max_length"])
    if encoder.dim != unet.config.context_dim:
        raise UserError(
            f"{path}: text encoder '{encoder.name}' gives {encoder.dim}-d tokens but the model was "
            f"trained on {unet.config.context_dim}-d tokens"
        )
    codec = PairCodec(stored["codec"]["image_channels"], stored["codec"]["num_classes"])
    diffusion = Diffusion(from_dict(NoiseConfig, stored["noise"], "noise."))
    return TextModel(unet, diffusion, codec, encoder, encoder.encode([""]), stored, path)


def load_run_aligner(model: TextModel) -> DomainTextAligner | None:
    """The run's text-alignment network, or None when the run has none (``alignment.steps: 0``)."""
    folder = RunDir.of_checkpoint(model.checkpoint).root / ALIGNMENT_DIR
    return load_aligner(folder) if has_aligner(folder) else None
