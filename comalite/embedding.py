"""From hidden states to embeddings: pooling over the compression tokens, and the embedding model.

Every input (query or candidate, image, text or both) ends with the K compression tokens; its embedding
is the mean of their last-layer hidden states, L2-normalised (the paper's training default). The LM head
is never computed. ``pooling="last"`` takes the last token instead (what the public eval script did); the
methods live in ``comalite.pooling``.

``EmbeddingModel.encode`` is the user's entry point: texts, images (files or PIL images) and mixed inputs
in, a float32 matrix of unit rows out.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbone import Backbone
from .checkpoints import checkpoint_fingerprint
from .data.images import IMAGE_SUFFIXES
from .errors import InputError
from .fingerprint import digest, tensors_fingerprint
from .progress import progress_bar
from .records import IMAGE_PLACEHOLDER, EmbedInput
from .result import load_result, model_config_of, pooling_of
from .pooling import get_pooling
from .prefetch import ImagePrefetcher, images_of
from .roles import COMPRESS
from .sequence import collate, embed_example


def pool(hidden: torch.Tensor, roles: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H) unit vectors, pooled by the registered method ``pooling``
    (``comalite.pooling``: the mean over the compression positions, or the last token)."""
    method = get_pooling(pooling)
    roles = roles.to(hidden.device)
    if method.needs_compression and not bool((roles == COMPRESS).any(1).all()):
        raise ValueError("an input has no compression token to pool: was it built with embed_example?")
    return F.normalize(method.pool(hidden, roles).float(), dim=-1)


def _examples(backbone: Backbone, inputs: list[EmbedInput], images: ImagePrefetcher | None = None) -> list:
    """``embed_example`` of each input, bounded by the backbone's ``model.embed_max_length`` (and
    ``model.embed_too_long``): an over-long input is refused, naming it, before it reaches the model."""
    cfg = backbone.config
    limit, too_long = getattr(cfg, "embed_max_length", 0), getattr(cfg, "embed_too_long", "refuse")
    return [embed_example(backbone.processor, item, max_length=limit, too_long=too_long, images=images)
            for item in inputs]


def encode(backbone: Backbone, inputs: list[EmbedInput], pooling: str = "mean",
           images: ImagePrefetcher | None = None) -> torch.Tensor:
    """Embeddings (n, H) of ``inputs`` in one padded batch, with grad if grad is enabled (training);
    ``images``: their patches prepared ahead (``comalite.prefetch``)."""
    examples = _examples(backbone, inputs, images)
    batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
    return pool(backbone.hidden_states(batch), batch["roles"], pooling)


@torch.no_grad()
def compression_states(backbone: Backbone, inputs: list[EmbedInput]) -> torch.Tensor:
    """Last-layer hidden states at the K compression positions, (n, K, H), neither pooled nor normalised:
    what ``pool`` averages."""
    examples = _examples(backbone, inputs)
    batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
    hidden = backbone.hidden_states(batch)
    is_compress = (batch["roles"] == COMPRESS).to(hidden.device)
    return hidden[is_compress].reshape(len(inputs), len(backbone.processor.compress_ids), -1).float().cpu()


EMBEDDING_SETTINGS = ("quantization", "dtype", "attn_implementation", "max_pixels", "min_pixels")
"""Model settings that change an embedding besides the weights (K is in the compression rows' shape)."""


def model_fingerprint(backbone: Backbone, pooling: str) -> str:
    """A hash of everything an embedding depends on: the checkpoint, every adapter weight, the compression
    rows, the pooling and the image/precision settings. Evaluation caches are keyed by it."""
    weights = {n: p for n, p in backbone.hf.named_parameters() if "lora_" in n}
    weights["compression.rows"] = backbone.compression.rows
    settings = {k: getattr(backbone.config, k) for k in EMBEDDING_SETTINGS}
    if getattr(backbone.config, "embed_too_long", "refuse") == "truncate":  # cut inputs embed differently
        settings["embed_truncated_at"] = backbone.config.embed_max_length
    return digest([checkpoint_fingerprint(backbone.config.backbone), tensors_fingerprint(weights), pooling, settings])


IMAGE_INSTRUCTION = f"{IMAGE_PLACEHOLDER}\nRepresent the given image."
"""The text a bare image is embedded with: MMEB's text for image candidates (ShapesWorld's too), so a bare
image is embedded the way stage 2 saw its image targets."""

Item = Union[str, os.PathLike, Image.Image, EmbedInput, tuple, dict]
"""What ``EmbeddingModel.encode`` takes, one per input (the rules are in its docstring)."""


def with_placeholder(text: str) -> str:
    """``text`` of an input with an image, with ``<|image_1|>`` in front (MMEB's ``<|image_1|>\\n...``) unless it
    already says where the image goes."""
    if IMAGE_PLACEHOLDER in text:
        return text
    return f"{IMAGE_PLACEHOLDER}\n{text}" if text else IMAGE_PLACEHOLDER


def _image(image, where: str) -> str | Image.Image:
    """An item's image as ``EmbedInput`` holds it: a PIL image as is, a path as a str naming an existing file."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"{where}: an image must be a file path or a PIL.Image.Image, not {type(image).__name__}")
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise InputError(f"{where}: image file {path} not found. Fix the path or drop the item.")
    return path


def as_embed_input(item: Item, index: int, instruction: str | None = None) -> EmbedInput:
    """Item ``index`` of ``EmbeddingModel.encode`` as an ``EmbedInput``, by the rules in ``encode``."""
    where = f"item {index}"
    if isinstance(item, EmbedInput):
        if item.image:  # "" means no image, as in embed_example
            item = dataclasses.replace(item, image=_image(item.image, where))
        return item if item.origin else dataclasses.replace(item, origin=where)
    if isinstance(item, str):
        if Path(item).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(item):
            raise InputError(f"{where} is the text {item!r}, which names an image file: pass pathlib.Path({item!r}) "
                             "to embed the image, or EmbedInput(text=...) to embed these characters as text.")
        if instruction and IMAGE_PLACEHOLDER in instruction:
            raise InputError(f"{where} is a text, but the instruction {instruction!r} holds {IMAGE_PLACEHOLDER}: "
                             "encode texts and images in separate calls, each with its own instruction.")
        return EmbedInput(text=(instruction or "") + item, origin=where)
    if isinstance(item, (os.PathLike, Image.Image)):
        text = IMAGE_INSTRUCTION if instruction is None else instruction
        return EmbedInput(with_placeholder(text), _image(item, where), where)
    if isinstance(item, tuple) and len(item) == 2:
        text, image = item
    elif isinstance(item, dict) and item and set(item) <= {"text", "image"}:
        text, image = item.get("text", ""), item.get("image")
    else:
        raise InputError(f"{where}: cannot embed a {type(item).__name__}. Give a text (str), an image "
                         "(pathlib.Path or PIL.Image.Image), a (text, image) pair, a dict with 'text' and/or "
                         "'image', or an EmbedInput.")
    if not isinstance(text, str):
        raise InputError(f"{where}: the text of a (text, image) input must be a str, not {type(text).__name__}")
    if image is None:
        return EmbedInput(text=text, origin=where)
    return EmbedInput(with_placeholder(text), _image(image, where), where)


def _checked(item: EmbedInput, index: int) -> EmbedInput:
    """``item``, if its text places its image at most once and only when it has one (else the sequence
    builder would fail mid-run, without naming the item)."""
    n = item.text.count(IMAGE_PLACEHOLDER)
    if n > 1 or (n and item.image is None):
        raise InputError(f"item {index}: its text holds {IMAGE_PLACEHOLDER} {n} time(s) for "
                         f"{'one image' if item.image is not None else 'no image'}: give one image and at most "
                         f"one {IMAGE_PLACEHOLDER}.")
    return item


class EmbeddingModel:
    """A backbone used as an embedding model: ``encode(items) -> (n, H)`` float32 unit rows.

    ``encode`` takes texts, image files, PIL images and mixed inputs; ``embed`` takes ``EmbedInput`` records
    as the evaluation passes them. ``name`` labels it in tables; ``fingerprint`` (``model_fingerprint``)
    keys evaluation caches and image indexes. Load a trained one with ``load``. ``workers`` threads read the
    images that ``prepare`` announces ahead of ``embed`` (``comalite.prefetch``; 0: read in turn).
    """

    def __init__(self, backbone: Backbone, name: str, *, pooling: str = "mean", batch_size: int = 16,
                 workers: int = 0):
        self.backbone, self.name, self.pooling, self.batch_size = backbone, name, pooling, batch_size
        self.fingerprint = model_fingerprint(backbone, pooling)
        self.images = ImagePrefetcher(backbone.processor, workers)

    @classmethod
    def load(cls, result_dir: str | Path, *, name: str | None = None, batch_size: int = 16, workers: int = 0,
             **model_overrides) -> "EmbeddingModel":
        """Load a stage-1 or stage-2 result folder (``comalite.result``) for embedding, with the pooling and
        model settings it was trained with (``model_overrides``: where it runs, e.g. ``device="cpu"``)."""
        result_dir = Path(result_dir)
        backbone = load_result(result_dir, model_cfg=model_config_of(result_dir, **model_overrides))
        return cls(backbone.eval(), name or result_dir.name, pooling=pooling_of(result_dir), batch_size=batch_size,
                   workers=workers)

    def prepare(self, inputs: list[EmbedInput]) -> None:
        """Start reading the images of ``inputs``, which the next calls of ``embed`` take in this order (the
        evaluation announces a dataset's inputs; an ``embed`` of others is served in turn)."""
        self.images.follow(images_of(inputs))

    @property
    def dim(self) -> int:
        """Length of an embedding (the language model's hidden size)."""
        return self.backbone.hf.config.text_config.hidden_size

    @torch.no_grad()
    def embed(self, inputs: list[EmbedInput], *, progress: bool = False, batch_size: int | None = None) -> np.ndarray:
        """Embeddings (n, H) of ``inputs`` as float32 unit rows, ``batch_size`` (default ``self.batch_size``)
        at a time."""
        self.backbone.eval()
        size = batch_size or self.batch_size
        out = []
        with progress_bar(total=len(inputs), enabled=progress, desc=f"embed {self.name}", unit="input") as bar:
            for i in range(0, len(inputs), size):
                out.append(encode(self.backbone, inputs[i:i + size], self.pooling, self.images).cpu())
                bar.update(len(out[-1]))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def encode(self, items: Sequence[Item], *, batch_size: int | None = None, show_progress: bool = True,
               instruction: str | None = None) -> np.ndarray:
        """Embeddings (n, H) of ``items`` as float32 unit rows, in batches of ``batch_size`` (default
        ``self.batch_size``), with a progress bar (``TQDM_DISABLE=1`` hides every bar).

        Each item is one of:

        - a ``str``: a text, embedded as ``instruction + text`` (by default the text alone, as MMEB embeds
          label and caption candidates). A ``str`` naming an existing image file is refused: pass a
          ``pathlib.Path`` for the image;
        - a ``pathlib.Path`` (any ``os.PathLike``) to an image file, or a ``PIL.Image.Image``: an image,
          embedded with ``instruction`` as its text (by default ``IMAGE_INSTRUCTION``,
          ``"<|image_1|>\\nRepresent the given image."``, MMEB's image candidates); an instruction without
          ``<|image_1|>`` gets it in front;
        - a ``(text, image)`` pair or a ``{"text": ..., "image": ...}`` dict (the image a path, str allowed
          here, or a PIL image; either part may be left out): the text is kept as given, ``<|image_1|>`` put
          in front when an image comes without one; ``instruction`` does not apply;
        - an ``EmbedInput``, embedded exactly as it is.

        A PIL image is embedded from memory and never cached (it has no file to key a cache by). An unknown
        item type or an image file that is not there raises ``InputError`` naming the item's index, before
        anything is embedded.
        """
        if isinstance(items, (str, os.PathLike, Image.Image, EmbedInput, dict, tuple)):
            raise InputError(f"encode takes a list of items, not one {type(items).__name__}: encode([item])")
        if items is None or isinstance(items, (bytes, np.ndarray)) or not hasattr(items, "__iter__"):
            raise InputError(f"encode takes a list of items (texts, images, (text, image) pairs), not "
                             f"{'None' if items is None else type(items).__name__}: encode([item, ...])")
        inputs = [_checked(as_embed_input(item, i, instruction), i) for i, item in enumerate(items)]
        return self.embed(inputs, progress=show_progress, batch_size=batch_size)
