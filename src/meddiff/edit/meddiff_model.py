"""meddiff's text-conditioned model (``tasks.textgen``) as an ``EditableModel``: pixel space, image and
one-hot label-map channels diffused together; edited masks are decoded by argmax (valid class ids)."""

from __future__ import annotations

from pathlib import Path

import torch

from meddiff.config import from_dict
from meddiff.data.build import DataConfig
from meddiff.data.cadis import cadis_spec
from meddiff.data.classmap import LabelSpec, label_spec
from meddiff.data.fit import Fit
from meddiff.tasks import textgen
from meddiff.text.encoders import TextEncoding


class MeddiffEditModel:
    """A trained ``textgen`` run, with what reading a user's image and mask needs (size, fit, label spec)."""

    def __init__(self, model: textgen.TextModel):
        self.model = model
        self.unet, self.diffusion, self.null = model.unet, model.diffusion, model.null
        self.data = from_dict(DataConfig, model.stored["data"], "data.")

    @classmethod
    def load(cls, run: Path) -> MeddiffEditModel:
        return cls(textgen.load(run))

    @property
    def image_channels(self) -> int:
        return self.model.codec.image_channels

    @property
    def class_names(self) -> list[str] | None:
        return self.model.class_names

    @property
    def fit(self) -> Fit:
        """How an input image is brought to the model's size: as the training data was (random crops
        become the central crop)."""
        mode = "center_crop" if self.data.fit == "random_crop" else self.data.fit
        return Fit(self.data.size, mode, self.data.short_side)

    def label_spec(self) -> LabelSpec:
        """How the stored ids of a mask file become class ids, as for the training masks."""
        names = tuple(self.class_names or ())
        if self.data.kind == "cadis":
            return cadis_spec(self.data.cadis_task)
        if self.data.kind in ("image_mask_folder", "nifti"):
            spec = label_spec(self.data.class_map, self.data.remap, self.data.class_names)
            return (
                spec
                if spec.class_names is not None
                else LabelSpec(names, spec.lut, spec.allowed, spec.source, spec.colours)
            )
        return LabelSpec(names, source="the model's classes")

    def encode_prompt(self, prompt: str) -> TextEncoding:
        return self.model.encoder.encode([prompt])

    def encode_input(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch = {"image": image} if mask is None else {"image": image, "mask": mask}
        return self.model.codec.encode(batch)

    def decode_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.codec.decode(x)
