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

``separate_turns`` packs several independent question/answer turns about one image into one sequence: each
turn's tokens see the image part (and the compression tokens, where the compression mask is on) and their
own turn, never another turn, so no answer can be copied from an earlier one. A turn starts at each
question token that follows a non-question token::

    roles   C C C | Q Q A A | Q Q A | Q A A
    turn    0 0 0 | 1 1 1 1 | 2 2 2 | 3 3 3         allowed[i, j] also needs turn_j in {0, turn_i}
"""
from __future__ import annotations

import torch

from .roles import ANSWER, CONTEXT, QUESTION


def turn_ids(roles: torch.Tensor) -> torch.Tensor:
    """(B, L) turn number of each position: 0 before the first question, k in the k-th question/answer turn."""
    is_question = roles == QUESTION
    previous = torch.nn.functional.pad(is_question[:, :-1], (1, 0), value=False)
    turn = torch.cumsum((is_question & ~previous).long(), dim=1)
    return turn * ((roles == QUESTION) | (roles == ANSWER))


def attention_allowed(roles: torch.Tensor, attention_mask: torch.Tensor, *,
                      compression_mask: bool = True, separate_turns: bool = False) -> torch.Tensor:
    """Boolean (B, L, L) matrix: may query position i attend to key position j.

    ``roles`` and ``attention_mask`` are (B, L), as made by ``comalite.sequence.collate`` (left or right
    padding). ``compression_mask=False`` gives the plain causal mask (the ablation, and stage 0);
    ``separate_turns=True`` hides the turns from each other (the module doc).
    """
    length = roles.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=roles.device).tril()
    valid = attention_mask.bool()
    allowed = causal[None] & valid[:, None, :] & valid[:, :, None]
    if compression_mask:
        after = (roles == QUESTION) | (roles == ANSWER)
        before = roles == CONTEXT
        allowed &= ~(after[:, :, None] & before[:, None, :])
    if separate_turns:
        turn = turn_ids(roles)
        allowed &= (turn[:, None, :] == 0) | (turn[:, None, :] == turn[:, :, None])
    return allowed | torch.eye(length, dtype=torch.bool, device=roles.device)[None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, L) booleans -> (B, 1, L, L) float mask of 0 (attend) and the dtype's minimum (block)."""
    blocked = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), blocked)[:, None]
