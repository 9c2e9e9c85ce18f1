"""From hidden states to embeddings: pooling over the compression tokens, and the embedding model.

Every input (query or candidate, image, text or both) ends with the K compression tokens; its embedding
is the mean of their last-layer hidden states, L2-normalised (the paper's training default). The LM head
is never computed. ``pooling="last"`` takes the last token instead (what the public eval script did).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from .backbone import Backbone, checkpoint_fingerprint
from .fingerprint import digest, tensors_fingerprint
from .progress import progress_bar
from .records import EmbedInput
from .result import load_result, model_config_of, read_result
from .sequence import COMPRESS, PAD, collate, embed_example


def pool(hidden: torch.Tensor, roles: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H) unit vectors, from the compression positions (or the last token)."""
    roles = roles.to(hidden.device)
    if pooling == "mean":
        weights = (roles == COMPRESS).to(hidden.dtype)
        if not bool((weights.sum(1) > 0).all()):
            raise ValueError("an input has no compression token to pool: was it built with embed_example?")
        pooled = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    elif pooling == "last":
        # The last non-padding position, wherever the padding sits.
        positions = torch.arange(roles.shape[1], device=hidden.device).expand_as(roles)
        last = torch.where(roles != PAD, positions, -1).max(1).values
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")
    return F.normalize(pooled.float(), dim=-1)


def encode(backbone: Backbone, inputs: list[EmbedInput], pooling: str = "mean") -> torch.Tensor:
    """Embeddings (n, H) of ``inputs`` in one padded batch, with grad if grad is enabled (training)."""
    examples = [embed_example(backbone.processor, item) for item in inputs]
    batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
    return pool(backbone.hidden_states(batch), batch["roles"], pooling)


@torch.no_grad()
def compression_states(backbone: Backbone, inputs: list[EmbedInput]) -> torch.Tensor:
    """Last-layer hidden states at the K compression positions, (n, K, H), neither pooled nor normalised:
    what ``pool`` averages."""
    examples = [embed_example(backbone.processor, item) for item in inputs]
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
    return digest([checkpoint_fingerprint(backbone.config.backbone), tensors_fingerprint(weights), pooling, settings])


class EmbeddingModel:
    """A backbone used as an embedding model: ``embed(list[EmbedInput]) -> (n, H)`` float32 unit rows.

    ``name`` labels it in tables; ``fingerprint`` (``model_fingerprint``) keys evaluation caches. Load a
    trained one with ``load``.
    """

    def __init__(self, backbone: Backbone, name: str, *, pooling: str = "mean", batch_size: int = 16):
        self.backbone, self.name, self.pooling, self.batch_size = backbone, name, pooling, batch_size
        self.fingerprint = model_fingerprint(backbone, pooling)

    @classmethod
    def load(cls, result_dir: str | Path, *, name: str | None = None, batch_size: int = 16,
             **model_overrides) -> "EmbeddingModel":
        """Load a stage-1 or stage-2 result folder (``comalite.result``) for embedding, with the pooling and
        model settings it was trained with (``model_overrides``: where it runs, e.g. ``device="cpu"``)."""
        result_dir = Path(result_dir)
        settings = read_result(result_dir)["settings"]
        backbone = load_result(result_dir, model_cfg=model_config_of(result_dir, **model_overrides))
        return cls(backbone.eval(), name or result_dir.name, pooling=settings.get("pooling", "mean"),
                   batch_size=batch_size)

    @torch.no_grad()
    def embed(self, inputs: list[EmbedInput], *, progress: bool = False) -> np.ndarray:
        self.backbone.eval()
        chunks = range(0, len(inputs), self.batch_size)
        out = [encode(self.backbone, inputs[i:i + self.batch_size], self.pooling).cpu()
               for i in progress_bar(chunks, enabled=progress, desc=f"embed {self.name}")]
        if not out:
            return np.zeros((0, self.backbone.hf.config.text_config.hidden_size), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed([EmbedInput(text=t) for t in texts])

    def embed_images(self, paths: list[str], instruction: str = "<|image_1|> Represent the given image.") -> np.ndarray:
        return self.embed([EmbedInput(text=instruction, image=str(p)) for p in paths])
