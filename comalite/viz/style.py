"""What every plot of :mod:`comalite.viz` shares: the resolution and colours it uses and how it saves.

The other modules import from here and never the other way round.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

SAVE_DPI = 120
"""Resolution of saved figures: sharp enough for docs, small enough to keep next to every run."""

MASK_ALLOWED_COLOUR = "#1f2a44"
MASK_BLOCKED_COLOUR = "#f0f0f0"
CORRECT_COLOUR = "#2ca02c"
WRONG_COLOUR = "#c0392b"
DIAGONAL_COLOUR = "#d62728"

ROLE_COLOURS = {
    "image": "#6baed6",
    "prompt": "#fdae6b",
    "instruction": "#fee391",
    "text": "#fdd0a2",
    "system": "#bcbddc",
    "compress": "#e6550d",
    "question": "#74c476",
    "answer": "#9e9ac8",
    "pad": "#d9d9d9",
}
"""Band colour of each segment role in the attention-mask plot; other roles get ``EXTRA_COLOURS``."""

EXTRA_COLOURS = ("#fd8d3c", "#41b6c4", "#f768a1", "#addd8e", "#a1d99b", "#c994c7", "#fec44f")

MODALITY_MARKERS = ("o", "^", "s", "D", "P", "X")
"""Scatter markers given to modalities in order of appearance (e.g. query = circle, target = triangle)."""


def save(fig: Figure, save_to: str | Path | None) -> None:
    """Write ``fig`` to ``save_to`` (parent folders created); do nothing when it is ``None``."""
    if save_to is None:
        return
    path = Path(save_to)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")


def figure_png(fig: Figure) -> dict[str, str]:
    """A figure as notebook output data (base64 PNG), closed afterwards so the notebook does not show it twice."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=SAVE_DPI, bbox_inches="tight")
    plt.close(fig)
    return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)}


def display_data(data: dict[str, str]) -> dict:
    """One notebook output entry, the form a widget's ``Output`` keeps in ``.outputs``: setting those directly
    (instead of ``with output:``) also works without a running kernel."""
    return {"output_type": "display_data", "data": data, "metadata": {}}
