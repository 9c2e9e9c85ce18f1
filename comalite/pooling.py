"""Pooling: how an input's last hidden states become its embedding; one registered object per method.

A ``Pooling`` holds its computation over (B, L, H) hidden states and the positions' roles, the same
computation as the exported model card's snippet writes it (inputs left-padded, so the K compression tokens
are the last K positions), and the words the card uses. ``stage2.pooling`` names one; a result records the
name with its settings, and everything that loads the result pools the same way (``comalite.embedding``,
``comalite.export``). To add a method, register one more ``Pooling`` here (``tests/test_pooling.py`` shows how).

Nothing here imports torch: the settings check the name against this registry before anything heavy loads.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError
from .roles import COMPRESS, PAD


@dataclass(frozen=True)
class Pooling:
    name: str
    pool: Callable          # (hidden (B, L, H), roles (B, L)) -> (B, H), not yet normalised
    snippet: str            # the same, as the exported snippet writes it over `hidden` (left padding, K tokens last)
    words: str              # what it takes, for the model card ("the embedding is <words> of the last layer")
    needs_compression: bool = True  # refuse inputs without compression tokens (they were built wrongly)


POOLINGS: dict[str, Pooling] = {}
"""The pooling methods by name: ``stage2.pooling`` chooses one."""


def register(pooling: Pooling) -> Pooling:
    POOLINGS[pooling.name] = pooling
    return pooling


def get_pooling(name: str) -> Pooling:
    if name not in POOLINGS:
        raise ConfigError(f"pooling {name!r} is not one comalite knows; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[name]


def _mean_of_compression_tokens(hidden, roles):
    weights = (roles == COMPRESS).to(hidden.dtype)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def _last_token(hidden, roles):
    # The last non-padding position, wherever the padding sits: the first real token of the reversed row.
    real = (roles != PAD).int()
    last = roles.shape[1] - 1 - real.flip(1).argmax(1)
    return hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)


register(Pooling("mean", _mean_of_compression_tokens, "hidden[:, -K:].mean(1)",
                 "the mean of the K compression tokens' hidden states"))
register(Pooling("last", _last_token, "hidden[:, -1]",
                 "the hidden state of the last token (the last compression token)"))
