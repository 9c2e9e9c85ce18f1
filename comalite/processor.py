"""An image-only Qwen2-VL processor: a tokenizer plus the PIL image processor, no torchvision.

transformers' ``Qwen2VLProcessor`` needs torchvision (for its video processor) even to load; comalite only
ever feeds images, so it pairs the tokenizer with ``Qwen2VLImageProcessorPil`` itself and expands the
vision span by hand. Building sequences token by token (instead of formatting strings) is also what lets
``comalite.sequence`` know exactly which position holds what, which the compression mask needs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .vision_cache import VisionCache

VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


def compression_token(i: int) -> str:
    """The i-th compression token's string; all K are added to the tokenizer as special tokens."""
    return f"<|cmp_{i}|>"


class VLProcessor:
    """Tokenizer + image processor of a Qwen2-VL-family checkpoint, with K compression tokens added."""

    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil, n_compress: int = 0):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.vision_start_id = self.token_id(VISION_START)
        self.vision_end_id = self.token_id(VISION_END)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        self.im_start_id = self.token_id("<|im_start|>")
        self.im_end_id = self.token_id("<|im_end|>")
        self.compress_ids: list[int] = []
        self.set_compression_tokens(n_compress)
        self.vision_cache: VisionCache | None = None  # set by load_backbone when model.vision_cache_mb > 0

    @classmethod
    def from_pretrained(cls, path: str | Path, *, n_compress: int = 0, min_pixels: int | None = None,
                        max_pixels: int | None = None) -> "VLProcessor":
        """Load the tokenizer and image processor of a checkpoint folder (or a hub id already cached)."""
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), **pixels)
        return cls(tokenizer, image_processor, n_compress)

    @classmethod
    def for_model(cls, checkpoint: str | Path, cfg, n_compress: int | None = None) -> "VLProcessor":
        """The processor a ``ModelConfig`` reads its inputs with: the checkpoint's, at the config's image sizes,
        with its K compression tokens (``n_compress``: a result folder's own K instead)."""
        return cls.from_pretrained(checkpoint, n_compress=cfg.n_compress if n_compress is None else n_compress,
                                   min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token {token!r}: is this a Qwen2-VL-family checkpoint?")
        return tid

    def set_compression_tokens(self, n_compress: int) -> None:
        """Make sure ``<|cmp_0|>`` .. ``<|cmp_{K-1}|>`` exist as special tokens; remember their ids."""
        tokens = [compression_token(i) for i in range(n_compress)]
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            self.tokenizer.add_tokens(missing, special_tokens=True)
        self.compress_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no BOS/EOS: Qwen adds none)."""
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_image(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (n_patches, C*T*14*14) and grid (t, h, w) of one image, resized within the pixel budget."""
        out = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"][0]

    def n_image_tokens(self, grid_thw: torch.Tensor) -> int:
        """LLM tokens one image costs: its patches merged ``merge_size`` x ``merge_size``."""
        return int(grid_thw.prod()) // self.image_processor.merge_size ** 2

    def image_span(self, grid_thw: torch.Tensor) -> list[int]:
        """``<|vision_start|>`` + one ``<|image_pad|>`` per LLM image token + ``<|vision_end|>``."""
        return [self.vision_start_id] + [self.image_pad_id] * self.n_image_tokens(grid_thw) + [self.vision_end_id]

    def tokens_for_size(self, width: int, height: int) -> int:
        """How many LLM tokens an image of this size costs after resizing (for lessons and budgets)."""
        return self.n_image_tokens(self.encode_image(Image.new("RGB", (width, height)))[1])
