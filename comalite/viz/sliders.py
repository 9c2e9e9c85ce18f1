"""One setting, moved by hand: a slider widget that redraws a picture, the same picture as a static strip (GitHub
and other viewers without a kernel show a widget only as text), and the three pictures the lessons move.

A picture is a function ``draw(value, ax)`` that draws the picture for one value of the setting on ``ax``;
:func:`slider` and :func:`strip` take the same function, so the widget and its static copy cannot disagree.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .style import CORRECT_COLOUR, DIAGONAL_COLOUR, display_data, figure_png, save

if TYPE_CHECKING:
    import ipywidgets
    from PIL import Image

Draw = Callable[[Any, Axes], None]
"""``draw(value, ax)``: the picture for one value of a setting."""


def slider(draw: Draw, values: Sequence, *, description: str, value=None, label: Callable = str,
           panel: tuple[float, float] = (5.0, 4.2)) -> ipywidgets.VBox:
    """A notebook widget: a slider over ``values`` (shown by ``label``) and, under it, ``draw(value, ax)``
    redrawn whenever the slider moves (on release). Starts at ``value`` (default: the first)."""
    import ipywidgets as widgets  # here, so scripts that only save figures do not load the widget machinery

    values = list(values)
    if not values:
        raise ValueError("a slider needs at least one value")
    start = values[0] if value is None else value
    if start not in values:
        raise ValueError(f"the starting value {start!r} is not one of the slider's values {values}")
    picker = widgets.SelectionSlider(options=[(label(v), v) for v in values], value=start, description=description,
                                     continuous_update=False, style={"description_width": "initial"})
    output = widgets.Output()

    def show(chosen) -> None:
        fig, ax = plt.subplots(figsize=panel)
        draw(chosen, ax)
        output.outputs = (display_data(figure_png(fig)),)

    picker.observe(lambda change: show(change["new"]), names="value")
    show(start)
    return widgets.VBox([picker, output])


def strip(draw: Draw, values: Sequence, *, panel: tuple[float, float] = (4.0, 3.6),
          save_to: str | Path | None = None) -> Figure:
    """``draw(value, ax)`` for each of ``values``, side by side: a slider's static copy."""
    fig, axes = plt.subplots(1, len(values), figsize=(panel[0] * len(values), panel[1]), squeeze=False)
    for chosen, ax in zip(values, axes[0]):
        draw(chosen, ax)
    fig.tight_layout()
    save(fig, save_to)
    return fig


# ------------------------------------------------------------------------------------- the lessons' pictures


def softmax_rows(sim: np.ndarray, temperature: float) -> np.ndarray:
    """Each row of a query x target cosine matrix as InfoNCE's probabilities over the targets at ``temperature``."""
    logits = np.asarray(sim, dtype=float) / temperature
    logits -= logits.max(axis=1, keepdims=True)  # exp of the largest is 1: no overflow at small temperatures
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def draw_softmax_rows(sim: np.ndarray, temperature: float, ax: Axes) -> None:
    """The probabilities InfoNCE gives each query's targets at ``temperature`` (0 white, 1 dark), its own target
    framed; the title says the mean probability of the own target against a uniform 1/B."""
    probabilities = softmax_rows(sim, temperature)
    n = len(probabilities)
    ax.imshow(probabilities, cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest")
    for i in range(min(probabilities.shape)):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=DIAGONAL_COLOUR, lw=1.5))
    ax.set_xlabel("target")
    ax.set_ylabel("query")
    own = float(np.diag(probabilities).mean())
    ax.set_title(f"temperature {temperature:g}: p(own target) {own:.2f} (1/B = {1 / probabilities.shape[1]:.2f})",
                 fontsize=9)
    ax.set_xticks(range(probabilities.shape[1]))
    ax.set_yticks(range(n))


def draw_token_grid(image: Image.Image, rows: int, cols: int, ax: Axes, *, pixels_per_token: int = 28) -> None:
    """``image`` resized to the ``rows`` x ``cols`` tokens the processor gives it, one cell per LLM token."""
    height, width = rows * pixels_per_token, cols * pixels_per_token
    ax.imshow(image.convert("RGB").resize((width, height)), extent=(0, width, height, 0))
    for x in range(0, width + 1, pixels_per_token):
        ax.axvline(x, color="white", lw=0.6)
    for y in range(0, height + 1, pixels_per_token):
        ax.axhline(y, color="white", lw=0.6)
    ax.set_title(f"{width} x {height} px: {rows} x {cols} = {rows * cols} tokens", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_toy_scores(angles: Sequence[float], query: int, candidates: Sequence[int], ax: Axes, *,
                    title: str = "") -> None:
    """2-D unit vectors at ``angles`` (degrees): the ``query``'s arrow black, its ``candidates`` grey but the
    first (the truth, MMEB's index 0) green, each labelled with its cosine to the query."""
    radians = np.deg2rad(np.asarray(angles, dtype=float))
    vectors = np.stack([np.cos(radians), np.sin(radians)], axis=1)
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="#cccccc"))
    for rank, row in enumerate(candidates):
        colour = CORRECT_COLOUR if rank == 0 else "#888888"
        x, y = vectors[row]
        ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": colour, "lw": 2})
        ax.text(1.15 * x, 1.15 * y, f"{vectors[query] @ vectors[row]:.2f}", color=colour, ha="center", va="center",
                fontsize=8)
    x, y = vectors[query]
    ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "black", "lw": 2.5})
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
