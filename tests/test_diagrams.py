"""Tests for comalite.viz.diagrams: each picture says what the code does, and the committed PNGs are current."""
from __future__ import annotations

import dataclasses
import inspect

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import same_color
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from PIL import Image

import comalite.mask
from comalite import viz
from comalite.config import Config
from comalite.gradcache import gradcache_step
from comalite.paths import figures_dir
from comalite.pooling import POOLINGS
from comalite.roles import ANSWER, COMPRESS, CONTEXT, QUESTION
from comalite.viz import diagrams
from comalite.viz.diagram_parts import GRADCACHE_STEPS
from comalite.viz.style import DIAGONAL_COLOUR

NAMES = ["recipe_overview", "mask_cartoon", "pooling", "infonce", "gradcache"]


@pytest.fixture(autouse=True)
def close_figures():
    """Close every figure a test made, so pyplot does not pile them up across tests."""
    yield
    plt.close("all")


def texts(fig) -> str:
    """Every string written on ``fig``, one per line."""
    return "\n".join(t.get_text() for t in fig.findobj(Text) if t.get_text())


def changed(**stage2) -> Config:
    """The default settings with K = 7 and the given stage-2 settings."""
    cfg = Config()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_compress=7),
                               stage2=dataclasses.replace(cfg.stage2, **stage2))


def test_the_package_exports_the_diagrams():
    for name in ("draw_recipe_overview", "draw_mask_cartoon", "draw_pooling", "draw_infonce", "draw_gradcache",
                 "save_diagrams"):
        assert name in viz.__all__ and getattr(viz, name) is getattr(diagrams, name)


def test_recipe_overview_names_every_stage_with_the_settings():
    defaults = Config()
    fig = viz.draw_recipe_overview()
    words = texts(fig)
    for expected in ("Stage 0", "Stage 1", "Stage 2", "Evaluation", "MMEB", "Precision@1", "InfoNCE", "LoRA",
                     "tiny world only", "pre-trained", f"K = {defaults.model.n_compress}",
                     f"τ = {defaults.stage2.temperature}", f"4-bit ({defaults.model.quantization})", "GradCache"):
        assert expected in words, expected
    # The numbers follow the settings, not the text of the picture.
    words = texts(viz.draw_recipe_overview(changed(temperature=0.25, pooling="last")))
    assert "K = 7" in words and "τ = 0.25" in words and "(last)" in words


def test_mask_cartoon_grid_is_the_mask_functions_output():
    roles = [role for _, role, count in diagrams.MASK_CARTOON_SEGMENTS for _ in range(count)]
    role_tensor = torch.tensor([roles])
    expected = comalite.mask.attention_allowed(role_tensor, torch.ones_like(role_tensor))[0].numpy()
    fig = viz.draw_mask_cartoon()
    (ax,) = fig.axes
    drawn = np.asarray(ax.images[0].get_array()).astype(bool)
    assert 12 <= len(roles) <= 16
    np.testing.assert_array_equal(drawn, expected)
    # What the picture is for: question/answer rows see the compression tokens, never the context (image).
    roles = np.array(roles)
    after = np.isin(roles, (QUESTION, ANSWER))
    assert not drawn[np.ix_(after, roles == CONTEXT)].any()
    assert drawn[np.ix_(after, roles == COMPRESS)].all()
    words = texts(fig)
    for name, _, _ in diagrams.MASK_CARTOON_SEGMENTS:
        assert name in words
    assert {"text prefix", "image", "compression tokens", "question", "answer"} <= set(words.split("\n"))


def test_mask_cartoon_changes_when_the_mask_function_does(monkeypatch):
    """A hand-drawn cartoon would not notice the mask changing; this one is computed."""
    monkeypatch.setattr(comalite.mask, "attention_allowed",
                        lambda roles, attention_mask, **_: torch.ones(1, roles.shape[1], roles.shape[1], dtype=bool))
    (ax,) = viz.draw_mask_cartoon().axes
    assert np.asarray(ax.images[0].get_array()).all()


def test_pooling_shows_every_registered_pooling_with_its_own_weights():
    defaults = Config()
    words = texts(viz.draw_pooling())
    for name, pooling in POOLINGS.items():
        assert f'"{name}"' in words and pooling.snippet in words and pooling.words in words
    assert f'"{defaults.stage2.pooling}" (stage2.pooling)' in words
    assert f"model.n_compress = {defaults.model.n_compress}" in words
    roles = [role for _, role, count in diagrams.POOLING_LAYOUT for _ in range(count)]
    k = roles.count(COMPRESS)
    assert roles[-k:] == [COMPRESS] * k  # left padding: the K tokens last, as the exported card pools them
    mean = diagrams.pooling_weights("mean")
    np.testing.assert_allclose(mean, [1 / k if role == COMPRESS else 0 for role in roles])
    np.testing.assert_allclose(diagrams.pooling_weights("last"), np.eye(len(roles))[-1])
    assert f"weight {1 / k:.3g} each" in words.split("\n") and "weight 1" in words.split("\n")
    assert "model.n_compress = 7" in texts(viz.draw_pooling(changed()))


def test_infonce_shows_the_matrix_its_positives_and_the_loss():
    tau = Config().stage2.temperature
    fig = viz.draw_infonce(batch_size=4)
    (ax,) = fig.axes
    words = texts(fig)
    assert f"τ = {tau}" in words and "B = 4" in words and r"\tau" in words and "softmax" in words
    assert np.asarray(ax.images[0].get_array()).shape == (4, 4)
    frames = [p for p in ax.patches if isinstance(p, Rectangle) and same_color(p.get_edgecolor(), DIAGONAL_COLOUR)]
    assert sorted(p.get_xy() for p in frames) == [(i - 0.5, i - 0.5) for i in range(4)]
    # The printed loss is InfoNCELoss on the matrix's own embeddings (cosines times 1/tau are its logits).
    cosine = torch.tensor(np.asarray(ax.images[0].get_array()), dtype=torch.float32)
    loss = torch.nn.functional.cross_entropy(cosine / tau, torch.arange(4)).item()
    assert f"loss = {loss:.3f}" in words
    assert "τ = 0.5" in texts(viz.draw_infonce(config=changed(temperature=0.5)))


def test_gradcache_steps_are_the_implementations():
    source = inspect.getsource(gradcache_step)
    for _, _, code in GRADCACHE_STEPS:
        assert code in source, f"gradcache_step no longer does {code!r}: redraw the GradCache steps"
    s2 = Config().stage2
    words = texts(viz.draw_gradcache())
    for title, _, _ in GRADCACHE_STEPS:
        assert title in words
    assert "one chunk's activations at a time" in words
    assert f"batch of {s2.train.batch_size} pairs, encoded {s2.chunk_size} at a time" in words
    assert f"({-(-s2.train.batch_size // s2.chunk_size)} chunks a side)" in words
    assert "(11 chunks a side)" in texts(viz.draw_gradcache(changed(chunk_size=100)))  # the last one smaller


@pytest.mark.parametrize("name", NAMES)
def test_each_diagram_draws_into_a_given_axes(name):
    fig, ax = plt.subplots()
    assert diagrams.DIAGRAMS[name](ax=ax) is fig
    assert len(fig.axes) == 1 and texts(fig)


def test_save_diagrams_writes_five_deterministic_pngs(tmp_path):
    paths = viz.save_diagrams(tmp_path / "figures")
    assert [p.name for p in paths] == [f"{name}.png" for name in NAMES]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert b"tIME" not in data  # no time stamp: the same code writes the same bytes
    again = viz.save_diagrams(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_the_committed_diagrams_are_current(tmp_path):
    """docs/figures holds what the code draws now (same bytes under the matplotlib that drew them)."""
    folder = figures_dir()
    if folder is None:
        pytest.skip("not a checkout: no docs/figures")
    fresh = viz.save_diagrams(tmp_path)
    redo = "stale: run `python -m comalite.viz.diagrams docs/figures`"
    for path in fresh:
        committed = folder / path.name
        assert committed.is_file(), f"{committed} is missing: run `python -m comalite.viz.diagrams docs/figures`"
        with Image.open(committed) as old, Image.open(path) as new:
            assert old.size == new.size, f"{committed.name} {redo}"
            same_matplotlib = old.info.get("Software") == new.info.get("Software")
        if same_matplotlib:  # another matplotlib may draw a pixel differently; then the size has to do
            assert committed.read_bytes() == path.read_bytes(), f"{committed.name} {redo}"
