"""The compression attention mask: the one idea that makes stage 1 teach compression.

Causal attention everywhere, except that the question/answer part may not look at anything before the
compression tokens. The compression tokens themselves see the whole image and prompt. So every bit of the
image that an answer needs has to pass through the K compression tokens.

    allowed[i, j] = (j <= i) and neither i nor j is padding
                    and not (role_i in {question, answer} and role_j == context)

The image span includes ``<|vision_start|>`` and ``<|vision_end|>`` (role context): leaving
``<|vision_end|>`` visible would leak the image past the compression tokens.

The model receives this as a 4D additive float mask (0 where allowed, dtype-min where blocked): eager
attention adds it as-is (a bool mask would be added as 1.0/0.0, silently wrong), sdpa accepts it too.
Every row keeps its diagonal, so a padding row attends to itself alone and no row is ever fully masked
(that would give NaN).
"""
from __future__ import annotations

import torch

from .roles import ANSWER, CONTEXT, QUESTION


def attention_allowed(roles: torch.Tensor, attention_mask: torch.Tensor, *,
                      compression_mask: bool = True) -> torch.Tensor:
    """Boolean (B, L, L) matrix: may query position i attend to key position j.

    ``roles`` and ``attention_mask`` are (B, L), as made by ``comalite.sequence.collate`` (left or right
    padding). ``compression_mask=False`` gives the plain causal mask (the ablation, and stage 0).
    """
    length = roles.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=roles.device).tril()
    valid = attention_mask.bool()
    allowed = causal[None] & valid[:, None, :] & valid[:, :, None]
    if compression_mask:
        after = (roles == QUESTION) | (roles == ANSWER)
        before = roles == CONTEXT
        allowed &= ~(after[:, :, None] & before[:, None, :])
    return allowed | torch.eye(length, dtype=torch.bool, device=roles.device)[None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, L) booleans -> (B, 1, L, L) float mask of 0 (attend) and the dtype's minimum (block)."""
    blocked = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), blocked)[:, None]
