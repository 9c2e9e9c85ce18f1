"""The K learnable compression tokens' embedding rows, kept apart from the (frozen) embedding table.

Only these K rows train; the 151,936-row table of the real model stays frozen and unquantised. A forward
hook on the input embedding swaps in the rows wherever a compression id appears, so the model code is
untouched and the rows carry gradients even with gradient checkpointing. The rows live in their own
small file, which is also how stage 1 hands them to stage 2.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CorruptFileError

FILENAME = "compression.safetensors"


class CompressionTokens(nn.Module):
    """K trainable embedding rows for the token ids ``token_ids`` (fp32 master copy)."""

    def __init__(self, token_ids: list[int], rows: torch.Tensor):
        super().__init__()
        if len(token_ids) != rows.shape[0]:
            raise ValueError(f"{len(token_ids)} compression ids but {rows.shape[0]} rows")
        self.token_ids = list(token_ids)
        self.rows = nn.Parameter(rows.detach().float().clone())
        self._handle = None

    @classmethod
    def initialise(cls, embedding: nn.Embedding, token_ids: list[int], seed: int = 0) -> "CompressionTokens":
        """Start every row at the mean embedding plus small seeded noise (distinct, in-distribution)."""
        weight = embedding.weight.detach().float()
        mean, std = weight.mean(0), weight.std(0)
        noise = torch.randn(len(token_ids), weight.shape[1], generator=torch.Generator().manual_seed(seed))
        return cls(token_ids, mean + 0.1 * std * noise)

    def attach(self, embedding: nn.Embedding) -> None:
        """Install the swap-in hook on ``embedding`` (idempotent)."""
        self.detach_hook()
        if not self.token_ids:
            return
        lookup = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        lookup[torch.tensor(self.token_ids, dtype=torch.long)] = torch.arange(len(self.token_ids))
        self.register_buffer("lookup", lookup.to(embedding.weight.device), persistent=False)
        self._handle = embedding.register_forward_hook(self._swap_in)

    def detach_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _swap_in(self, module, inputs, output):
        index = self.lookup[inputs[0]]
        is_compress = (index >= 0)[..., None]
        rows = self.rows[index.clamp(min=0)].to(output.dtype)
        return torch.where(is_compress, rows, output)

    def save(self, folder: str | Path) -> None:
        save_file({"rows": self.rows.detach().cpu().contiguous(),
                   "token_ids": torch.tensor(self.token_ids)}, str(Path(folder) / FILENAME))

    @classmethod
    def load(cls, folder: str | Path) -> "CompressionTokens":
        path = Path(folder) / FILENAME
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: is {folder} a comalite stage-1/2 result folder?")
        try:
            data = load_file(str(path))
            return cls(data["token_ids"].tolist(), data["rows"])
        except (SafetensorError, KeyError, ValueError) as err:  # truncated, not safetensors, or other tensors
            raise CorruptFileError(f"{path}: cannot read the compression rows ({err}): the file is truncated or "
                                   f"corrupt. Delete {Path(folder)} and run the stage that wrote it again") from None
