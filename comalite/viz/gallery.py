"""Retrieval results: the top-k ranking, a gallery of a query's best candidates, the hits of image searches
and an interactive neighbour explorer for notebooks."""
from __future__ import annotations

import html
import textwrap
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..data.images import load_image
from .style import CORRECT_COLOUR, WRONG_COLOUR, display_data, figure_png, save

if TYPE_CHECKING:
    import ipywidgets
    from PIL import Image


# ----------------------------------------------------------------------------------- retrieval gallery


def top_k(scores: Sequence[float] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest scores, best first.

    Ties keep the lower index first (a stable sort), and NaN scores rank last, so the result never
    depends on sort internals. ``k`` larger than the number of scores returns them all.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = np.argsort(-s, kind="stable")[:k]
    return order, s[order]


def _wrap(text: str, width: int, max_lines: int) -> str:
    """Wrap ``text`` into at most ``max_lines`` lines of ``width`` characters, ending in '…' if cut."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return "\n".join(lines)


def _draw_item(ax, image: Image.Image | None, text: str) -> None:
    """Draw an image with its text as a caption, or a text-only item as a wrapped text box."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is not None:
        ax.imshow(np.asarray(image.convert("RGB")))
        if text:
            ax.set_xlabel(_wrap(text, 28, 4), fontsize=8)
    else:
        ax.set_facecolor("#f7f7f7")
        ax.text(0.5, 0.5, _wrap(text, 22, 9), ha="center", va="center", fontsize=9, transform=ax.transAxes)


def _frame(ax, colour: str, width: float) -> None:
    """Colour the border of a gallery panel."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_retrieval_gallery(
    query_image: Image.Image | None,
    query_text: str,
    candidates: Sequence[tuple[Image.Image | None, str]],
    scores: Sequence[float] | np.ndarray,
    correct_index: int,
    k: int = 5,
    save_to: str | Path | None = None,
) -> Figure:
    """Show a query beside its ``k`` best-scoring candidates, each with its rank and score.

    The correct candidate has a green frame and a ✓. If it is not in the top k it is appended as an
    extra panel with its rank, so a miss shows what the model should have found. Each panel's axes
    label is ``"query"`` or ``"candidate <index>"``.
    """
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(candidates):
        raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
    if not 0 <= correct_index < len(candidates):
        raise ValueError(f"correct_index {correct_index} outside 0..{len(candidates) - 1}")
    ranking, _ = top_k(scores, len(scores))
    rank_of = {int(index): rank for rank, index in enumerate(ranking, start=1)}
    shown = [int(i) for i in ranking[:k]]
    if correct_index not in shown:
        shown.append(correct_index)

    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(2.6 * (1 + len(shown)), 3.6), squeeze=False)
    query_ax, *candidate_axes = axes[0]
    _draw_item(query_ax, query_image, query_text)
    query_ax.set_title("query", fontweight="bold")
    query_ax.set_label("query")
    _frame(query_ax, "#333333", 1.5)
    for ax, index in zip(candidate_axes, shown):
        image, text = candidates[index]
        _draw_item(ax, image, text)
        ax.set_label(f"candidate {index}")
        correct = index == correct_index
        mark = "  ✓" if correct else ""
        ax.set_title(f"#{rank_of[index]}  score {scores[index]:.3f}{mark}", fontsize=9,
                     color=CORRECT_COLOUR if correct else "black")
        _frame(ax, CORRECT_COLOUR if correct else "#bbbbbb", 4 if correct else 1)
    fig.suptitle(f"correct candidate ranked #{rank_of[correct_index]} of {len(candidates)}", fontsize=10)
    fig.tight_layout()
    save(fig, save_to)
    return fig


def plot_search_results(
    searches: Sequence[tuple[Image.Image | None, str, Sequence[tuple[str, float]]]],
    *,
    marked: Collection[str] = (),
    save_to: str | Path | None = None,
) -> Figure:
    """One row per search ``(query image or None, query text, hits)``: the query, then its hits (``(image
    path, score)``, best first, as ``comalite.search.ImageIndex.search`` returns them), each titled with
    its rank and score and labelled with its file name. Hits whose path is in ``marked`` (the image a
    caption describes, say) are framed green with a ✓."""
    if not searches:
        raise ValueError("no searches to show")
    columns = 1 + max(len(hits) for _, _, hits in searches)
    fig, axes = plt.subplots(len(searches), columns, figsize=(2.3 * columns, 3.0 * len(searches)), squeeze=False)
    for row, (query_image, query_text, hits) in zip(axes, searches):
        _draw_item(row[0], query_image, query_text)
        row[0].set_title("query", fontweight="bold")
        _frame(row[0], "#333333", 1.5)
        for rank, (ax, (path, score)) in enumerate(zip(row[1:], hits), start=1):
            _draw_item(ax, load_image(path), Path(path).name)
            correct = path in marked
            ax.set_title(f"#{rank}  score {score:.3f}" + ("  ✓" if correct else ""), fontsize=9,
                         color=CORRECT_COLOUR if correct else "black")
            _frame(ax, CORRECT_COLOUR if correct else "#bbbbbb", 4 if correct else 1)
        for ax in row[1 + len(hits):]:
            ax.axis("off")
    fig.tight_layout()
    save(fig, save_to)
    return fig


# ---------------------------------------------------------------------------------------- answer cards


def plot_answer_cards(images: Sequence, columns: dict[str, Sequence[str]], *, truth: str = "truth",
                      save_to: str | Path | None = None) -> Figure:
    """One card per sample: its image (a path or a PIL image), then one line per column in order (e.g. the
    question, the ``truth`` column, each model's answer); an answer equal to the truth is green, another red.
    A picture of what a table of answers hides: the scene each question was asked about."""
    n = len(images)
    if any(len(values) != n for values in columns.values()):
        raise ValueError(f"{n} images but columns of {sorted({len(v) for v in columns.values()})} entries")
    fig, axes = plt.subplots(1, n, figsize=(2.7 * n, 2.7 + 0.42 * len(columns)), squeeze=False)
    for i, ax in enumerate(axes[0]):
        image = load_image(images[i]) if isinstance(images[i], (str, Path)) else images[i]
        ax.imshow(np.asarray(image.convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        y = -0.05
        for line, (name, values) in enumerate(columns.items()):
            text = _wrap(f"{name}: {values[i]}", 34, 2)
            if name == truth or line == 0 or truth not in columns:
                colour = "black"
            else:
                colour = CORRECT_COLOUR if str(values[i]) == str(columns[truth][i]) else WRONG_COLOUR
            ax.text(0.0, y, text, transform=ax.transAxes, fontsize=8, va="top", color=colour,
                    fontweight="bold" if name == truth else "normal")
            y -= 0.1 * (text.count("\n") + 1) + 0.03
    fig.tight_layout()
    save(fig, save_to)
    return fig


# ---------------------------------------------------------------------------------- neighbour explorer


def _neighbour_table(
    candidate_labels: Sequence[str], indices: np.ndarray, values: np.ndarray, target: int | None
) -> dict[str, str]:
    """The top-k neighbours as an HTML table plus a plain-text version; the target row gets a ✓."""
    rows_html, rows_text = [], []
    for rank, (index, value) in enumerate(zip(indices, values), start=1):
        mark = "✓" if index == target else ""
        label = str(candidate_labels[index])
        cells = [str(rank), html.escape(label), f"{value:.3f}", mark]
        rows_html.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        rows_text.append(f"{rank}. {label}  {value:.3f} {mark}".rstrip())
    head = "<tr><th>rank</th><th>candidate</th><th>score</th><th></th></tr>"
    return {"text/html": f"<table>{head}{''.join(rows_html)}</table>", "text/plain": "\n".join(rows_text)}


def neighbour_explorer(
    query_labels: Sequence[str],
    sim: np.ndarray,
    candidate_labels: Sequence[str],
    *,
    render: Callable[[int, np.ndarray, np.ndarray], Figure] | None = None,
    k: int = 5,
    targets: Sequence[int] | None = None,
) -> ipywidgets.VBox:
    """A notebook widget: pick a query from a dropdown, see its ``k`` nearest candidates.

    ``sim`` is (queries × candidates). The neighbours show as a table (the query's ``targets`` entry,
    if given, ticked) or, with ``render``, as the figure ``render(query_index, topk_indices,
    topk_scores)`` returns. The result is ``VBox([dropdown, output])``.
    """
    # Imported here so scripts that only save figures do not load the widget machinery.
    import ipywidgets as widgets

    sim = np.asarray(sim, dtype=float)
    if sim.shape != (len(query_labels), len(candidate_labels)):
        expected = (len(query_labels), len(candidate_labels))
        raise ValueError(f"sim has shape {sim.shape}, the labels say {expected}")
    if not query_labels:
        raise ValueError("no queries to explore")
    picker = widgets.Dropdown(options=[(f"{i}: {label}", i) for i, label in enumerate(query_labels)],
                              value=0, description="query")
    output = widgets.Output()

    def show(query_index: int) -> None:
        indices, values = top_k(sim[query_index], k)
        if render is None:
            target = None if targets is None else targets[query_index]
            data = _neighbour_table(candidate_labels, indices, values, target)
        else:
            data = figure_png(render(query_index, indices, values))
        # Setting .outputs directly (instead of `with output:`) also works without a running kernel.
        output.outputs = (display_data(data),)

    picker.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([picker, output])


def plot_query_candidates(queries: dict, *, n_candidates: int = 4, save_to: str | Path | None = None):
    """One row per ``{title: EvalQuery}``: the query, then its first candidates in their order, the truth
    (candidate 0) framed green. A picture of the data, before any model scores it."""
    fig, axes = plt.subplots(len(queries), 1 + n_candidates, figsize=(2.3 * (1 + n_candidates), 3.4 * len(queries)),
                             squeeze=False)
    for row, (title, query) in zip(axes, queries.items()):
        items = [query.query, *query.candidates[:n_candidates]]
        for j, (ax, item) in enumerate(zip(row, items)):
            text = item.text.replace("<|image_1|>", "").strip()
            _draw_item(ax, load_image(item.image) if item.image else None, text)
            ax.set_title(f"{title}: query" if j == 0 else "candidate 0 (truth)" if j == 1 else f"candidate {j - 1}",
                         fontsize=9, color=CORRECT_COLOUR if j == 1 else "black")
            _frame(ax, "#333333" if j == 0 else CORRECT_COLOUR if j == 1 else "#bbbbbb", 4 if j == 1 else 1)
        for ax in row[len(items):]:
            ax.axis("off")
    fig.tight_layout()
    save(fig, save_to)
    return fig
