"""The pieces :mod:`comalite.viz.diagrams` builds its pictures from: a blank canvas, boxes, arrows, and the
words of GradCache's steps (each naming the code it stands for)."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

EDGE_COLOUR = "#444444"

GRADCACHE_STEPS = (
    ("Pass 1: embed every\nchunk, no graph",
     "under torch.no_grad(): cheap,\nno activations kept\nremember each chunk's RNG state\n"
     "keep only the embeddings (B × D)", "with torch.no_grad():"),
    ("Loss on the cached\nembeddings",
     "embeddings become leaves:\nrequires_grad_()\nloss_fn(*embeddings), then\nloss.backward()\n"
     "→ d loss / d embedding, B × D", "loss.backward()"),
    ("Pass 2: re-forward each\nchunk with graph",
     "restore the chunk's RNG state\n(same dropout masks)\nencode(chunk), then\n"
     "chunk_embedding.backward(cached)", "chunk_embedding.backward("),
    ("Result",
     "parameter .grad adds up over\nthe chunks to one full-batch\nbackward (the chain rule)\n"
     "the loss equals the one-pass loss\n\nchecked against full_batch_step\n(tests/test_gradcache.py)",
     "return loss.detach()"),
)
"""(title, what happens, a line of ``gradcache_step``'s source that does it): the test checks that line is there."""


def canvas(ax, figsize: tuple[float, float], width: float | None, height: float | None):
    """``(figure, axes)`` to draw on: ``ax`` itself, else a new pyplot figure; axes off, limits 0..width/height."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    fig: Figure = ax.figure
    if width is not None:
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def box(ax, left: float, bottom: float, width: float, height: float, title: str, body: str = "",
        colour: str = "#ffffff", *, linestyle: str = "-", fontsize: float = 8.5) -> None:
    """A rounded box with a bold title at its top and ``body`` (lines of text) below it, all centred."""
    ax.add_patch(FancyBboxPatch((left, bottom), width, height, boxstyle="round,pad=0,rounding_size=0.25",
                                fc=colour, ec=EDGE_COLOUR, lw=1.2, ls=linestyle))
    if not body:
        ax.text(left + width / 2, bottom + height / 2, title, ha="center", va="center", fontsize=fontsize + 1,
                weight="bold")
        return
    title_lines = title.count("\n") + 1
    ax.text(left + width / 2, bottom + height - 0.25, title, ha="center", va="top", fontsize=fontsize + 1,
            weight="bold")
    ax.text(left + width / 2, bottom + height - 0.35 - 0.45 * title_lines, body, ha="center", va="top",
            fontsize=fontsize, linespacing=1.45)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], *, colour: str = EDGE_COLOUR,
          label: str | None = None) -> None:
    """An arrow from ``start`` to ``end`` (data coordinates), ``label`` written left of its middle."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2, shrinkA=0, shrinkB=0))
    if label:
        ax.text((start[0] + end[0]) / 2 - 0.2, (start[1] + end[1]) / 2, label, fontsize=8, color=colour,
                ha="right", va="center")
