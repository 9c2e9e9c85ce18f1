"""Pooling methods live in one registry (``comalite.pooling``): each one's computation agrees with the expression
the exported snippet writes, and a new method registered there reaches the settings, the embedding and the export
without touching any other module."""
from __future__ import annotations

import pytest
import torch

from comalite.config import load_config
from comalite.embedding import pool
from comalite.errors import ConfigError
from comalite.export import usage_snippet
from comalite.pooling import POOLINGS, Pooling, get_pooling, register
from comalite.roles import COMPRESS, CONTEXT, PAD

K = 3


def _left_padded(lengths: list[int], hidden_size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden states and roles of left-padded inputs that end with K compression tokens."""
    length = max(lengths)
    roles = torch.full((len(lengths), length), PAD)
    for row, n in enumerate(lengths):
        roles[row, length - n:] = CONTEXT
        roles[row, length - K:] = COMPRESS
    return torch.randn(len(lengths), length, hidden_size, generator=torch.Generator().manual_seed(0)), roles


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_each_pooling_computes_what_its_export_snippet_writes(name):
    hidden, roles = _left_padded([7, 4, 9])
    method = get_pooling(name)
    snippet = eval(method.snippet, {"hidden": hidden, "K": K})  # noqa: S307  (our own expression)
    torch.testing.assert_close(method.pool(hidden, roles), snippet, atol=1e-6, rtol=0)


def test_an_unknown_pooling_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match="choose one of mean, last"):
        load_config("tiny-smoke", ["stage2.pooling=max"])


def test_a_pooling_registered_in_one_place_reaches_settings_embedding_and_export(monkeypatch):
    """The worked example of adding a method: one ``register`` call, nothing else edited."""
    monkeypatch.setitem(POOLINGS, "max", None)  # the registry forgets it again after the test
    register(Pooling("max", lambda hidden, roles: hidden.masked_fill((roles != COMPRESS)[..., None], -1e9).amax(1),
                     "hidden[:, -K:].amax(1)", "the element-wise maximum over the K compression tokens"))
    assert load_config("tiny-smoke", ["stage2.pooling=max"]).stage2.pooling == "max"
    hidden, roles = _left_padded([6, 8])
    expected = torch.nn.functional.normalize(hidden[:, -K:].amax(1), dim=-1)
    torch.testing.assert_close(pool(hidden, roles, "max"), expected)
    snippet = usage_snippet("exports/x", "base", model_class="Qwen2VLForConditionalGeneration", k=K, pooling="max",
                            quantization="none", dtype="fp32")
    assert "normalize(hidden[:, -K:].amax(1).float(), dim=-1)" in snippet
    assert "the element-wise maximum over the K compression tokens" in snippet
