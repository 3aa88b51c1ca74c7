"""The conditioning a UNet call receives, and its "null" version for classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Conditioning:
    """Batched conditioning inputs; every field is optional and matches a ``UNet.forward`` keyword.

    Classifier-free guidance drops the *guided* parts: the label map becomes all zeros, class labels become
    ``null_class``, the context becomes ``null_context`` (the embedding of the empty prompt; zeros if not
    given). ``cond_image`` (concatenated channels) is structural input and is kept, unless
    ``guide_cond_image`` is set, in which case it is zeroed as well.
    """

    cond_image: torch.Tensor | None = None
    label_map: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    null_context: torch.Tensor | None = None
    null_class: int = 0
    guide_cond_image: bool = False

    _MODEL_KEYS = ("cond_image", "label_map", "context", "context_mask", "class_labels")

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``UNet.forward`` (only the fields that are set)."""
        return {k: getattr(self, k) for k in self._MODEL_KEYS if getattr(self, k) is not None}

    @property
    def is_guidable(self) -> bool:
        """True when dropping conditioning changes anything, i.e. guidance has an effect."""
        return any(v is not None for v in (self.label_map, self.context, self.class_labels)) or (
            self.guide_cond_image and self.cond_image is not None
        )

    def drop(self, keep: torch.Tensor) -> Conditioning:
        """Per-sample dropout: where ``keep`` ``[B]`` is False the sample gets the null conditioning."""

        def where(value: torch.Tensor | None, null: torch.Tensor | float) -> torch.Tensor | None:
            if value is None:
                return None
            k = keep.to(value.device).view(-1, *([1] * (value.dim() - 1)))
            return torch.where(k, value, torch.as_tensor(null, dtype=value.dtype, device=value.device))

        context_mask = self.context_mask
        if self.context is not None:
            null_ctx = self.null_context if self.null_context is not None else torch.zeros_like(self.context[:1])
            if context_mask is not None:  # the null prompt attends to all of its tokens
                context_mask = where(context_mask, True)
            context = where(self.context, null_ctx.expand_as(self.context))
        else:
            context = None
        return replace(
            self,
            cond_image=where(self.cond_image, 0.0) if self.guide_cond_image else self.cond_image,
            label_map=where(self.label_map, 0.0),
            context=context,
            context_mask=context_mask,
            class_labels=where(self.class_labels, self.null_class),
        )

    def to(self, device: torch.device) -> Conditioning:
        """The same conditioning with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def null(self) -> Conditioning:
        """The unconditional version of this batch (for the guidance pass)."""
        batch = len(self)
        return self.drop(torch.zeros(batch, dtype=torch.bool))

    def cat(self, other: Conditioning) -> Conditioning:
        """Concatenate two batches field by field (conditional and unconditional passes in one call)."""
        merged = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            merged[f.name] = torch.cat([a, b]) if f.name in self._MODEL_KEYS and a is not None else a
        return Conditioning(**merged)

    def __len__(self) -> int:
        for key in self._MODEL_KEYS:
            value = getattr(self, key)
            if value is not None:
                return value.shape[0]
        return 0
