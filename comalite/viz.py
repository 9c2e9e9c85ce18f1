"""Pictures for the lessons: the stage-1 attention mask, training curves, similarity matrices, embedding
spaces, retrieval galleries, benchmark bars and an interactive neighbour explorer.

Every plotting function takes plain numpy arrays or lists (never a model object), returns the matplotlib
``Figure`` and, given ``save_to``, also writes it to that file (a PNG unless the suffix names another
format), so a notebook both shows the plot and keeps a copy next to the run's other outputs.

The figures are made with ``pyplot``, so a notebook shows them at the end of the cell; end the call with
``;`` (or assign the result) to avoid a second copy from the cell's return value.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import textwrap
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from mpl_toolkits.axes_grid1 import make_axes_locatable

if TYPE_CHECKING:
    import ipywidgets
    from PIL import Image

SAVE_DPI = 120
"""Resolution of saved figures: sharp enough for docs, small enough to keep next to every run."""

MASK_ALLOWED_COLOUR = "#1f2a44"
MASK_BLOCKED_COLOUR = "#f0f0f0"
CORRECT_COLOUR = "#2ca02c"
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
"""Band colour of each segment role in :func:`plot_attention_mask`; other roles get ``EXTRA_COLOURS``."""

EXTRA_COLOURS = ("#fd8d3c", "#41b6c4", "#f768a1", "#addd8e", "#a1d99b", "#c994c7", "#fec44f")

MODALITY_MARKERS = ("o", "^", "s", "D", "P", "X")
"""Scatter markers given to modalities in order of appearance (e.g. query = circle, target = triangle)."""


# --------------------------------------------------------------------------------------------- helpers


def _save(fig: Figure, save_to: str | Path | None) -> None:
    """Write ``fig`` to ``save_to`` (parent folders created); do nothing when it is ``None``."""
    if save_to is None:
        return
    path = Path(save_to)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")


def _ordered_unique(values: Sequence[Hashable]) -> list[Hashable]:
    """Distinct values, sorted when they can be (so class 2 comes before 10), else in order of appearance."""
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:
        return unique


def _category_colours(categories: Sequence[Hashable]) -> dict[Hashable, str]:
    """One colour per category: tab10/tab20 while they suffice, else evenly spaced along ``turbo``."""
    n = len(categories)
    if n <= 10:
        palette = matplotlib.colormaps["tab10"].colors[:n]
    elif n <= 20:
        palette = matplotlib.colormaps["tab20"].colors[:n]
    else:
        palette = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return {category: to_hex(colour) for category, colour in zip(categories, palette)}


def _wrap(text: str, width: int, max_lines: int) -> str:
    """Wrap ``text`` into at most ``max_lines`` lines of ``width`` characters, ending in '…' if cut."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- attention mask


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
    """Check ``mask`` is a square 0/1 (or boolean) matrix and return it as booleans (True = may attend)."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"mask must be a square (L, L) matrix, got shape {arr.shape}")
    # An additive mask (0 = allowed, -inf = blocked) would silently come out inverted, so refuse it.
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(
            "mask must hold 0/1 or booleans (1 = may attend); for an additive mask pass `mask == 0`"
        )
    return arr.astype(bool)


def _segments(roles: Sequence[str], length: int) -> list[tuple[str, int, int]]:
    """Runs of equal roles as ``(role, start, stop)``; ``roles`` must name every position."""
    if len(roles) != length:
        raise ValueError(f"roles names {len(roles)} positions but the mask has {length}")
    segments: list[tuple[str, int, int]] = []
    start = 0
    for pos in range(1, length + 1):
        if pos == length or roles[pos] != roles[start]:
            segments.append((str(roles[start]), start, pos))
            start = pos
    return segments


def _role_colours(segments: list[tuple[str, int, int]]) -> dict[str, str]:
    """Colour of each role, in order of first appearance (which is also the legend order)."""
    colours: dict[str, str] = {}
    extra = itertools.cycle(EXTRA_COLOURS)
    for role, _, _ in segments:
        if role not in colours:
            colours[role] = ROLE_COLOURS.get(role) or next(extra)
    return colours


def _draw_role_bands(ax, segments: list[tuple[str, int, int]], colours: dict[str, str]):
    """Add coloured segment bands above and left of the mask; return the top band (it carries the title)."""
    divider = make_axes_locatable(ax)
    top = divider.append_axes("top", size="5%", pad=0.05, sharex=ax)
    left = divider.append_axes("left", size="5%", pad=0.05, sharey=ax)
    top.set_label("roles-top")
    left.set_label("roles-left")
    length = segments[-1][2]
    for role, start, stop in segments:
        style = {"facecolor": colours[role], "edgecolor": "white", "lw": 0.5}
        top.add_patch(Rectangle((start - 0.5, 0), stop - start, 1, **style))
        left.add_patch(Rectangle((0, start - 0.5), 1, stop - start, **style))
        # Name a segment in place when its name fits (about 80 characters span the band at this size);
        # narrow ones (short turns, pads) rely on the legend.
        if stop - start >= (len(role) + 1) * length / 80:
            top.text((start + stop - 1) / 2, 0.5, role, ha="center", va="center", fontsize=8)
    top.set_ylim(0, 1)
    left.set_xlim(0, 1)
    top.tick_params(labelbottom=False, bottom=False, left=False, labelleft=False)
    left.tick_params(bottom=False, labelbottom=False)
    # The mask's own y tick labels would sit between band and mask, so the band carries them instead.
    ax.tick_params(labelleft=False)
    left.set_ylabel(ax.get_ylabel())
    ax.set_ylabel("")
    return top


def plot_attention_mask(
    mask: np.ndarray,
    roles: Sequence[str] | None = None,
    title: str = "Stage-1 attention mask",
    save_to: str | Path | None = None,
) -> Figure:
    """Draw an attention mask: row i is the attending position, column j the attended one.

    Allowed pairs are dark and blocked ones light. With ``roles`` (one name per position, e.g. "image",
    "prompt", "compress", "question", "answer", "pad") coloured bands along both axes show the segments,
    thin lines separate them, and the legend names them: in the CoMa mask the question/answer rows are
    light under the image and prompt columns, so the answers reach the image only through the
    compression tokens.
    """
    allowed = _as_binary_mask(mask)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.set_label("mask")
    ax.imshow(
        allowed.astype(np.uint8),
        cmap=ListedColormap([MASK_BLOCKED_COLOUR, MASK_ALLOWED_COLOUR]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xlabel("attended position j (key)")
    ax.set_ylabel("attending position i (query)")
    handles = [
        Patch(facecolor=MASK_ALLOWED_COLOUR, label="allowed: i sees j"),
        Patch(facecolor=MASK_BLOCKED_COLOUR, edgecolor="#999999", label="blocked"),
    ]
    title_ax = ax
    if roles is not None:
        segments = _segments(roles, allowed.shape[0])
        colours = _role_colours(segments)
        for _, start, _ in segments[1:]:
            ax.axhline(start - 0.5, color="#888888", lw=0.6)
            ax.axvline(start - 0.5, color="#888888", lw=0.6)
        title_ax = _draw_role_bands(ax, segments, colours)
        handles += [Patch(facecolor=colour, label=role) for role, colour in colours.items()]
    title_ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    _save(fig, save_to)
    return fig


# ------------------------------------------------------------------------------------------ loss curves


def ema_smooth(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard draws it); ``weight`` in [0, 1).

    The correction divides by ``1 - weight**t`` so the first points are not dragged towards zero.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    y = np.asarray(values, dtype=float).ravel()
    smoothed = np.empty_like(y)
    running = 0.0
    for t, value in enumerate(y):
        running = weight * running + (1 - weight) * value
        smoothed[t] = running / (1 - weight ** (t + 1))
    return smoothed


def plot_loss_curves(
    curves: Mapping[str, Sequence[float] | np.ndarray],
    *,
    smooth: float = 0,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """Plot one line per run against the index of each value (step, epoch or log entry).

    ``smooth`` is an EMA weight in [0, 1): above 0 each run is drawn faint as logged with its smoothed
    curve on top in the same colour, so noise and trend are both visible.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        y = np.asarray(values, dtype=float).ravel()
        x = np.arange(len(y))
        if smooth:
            # A label starting with "_" keeps the raw line out of the legend.
            (raw,) = ax.plot(x, y, lw=1, alpha=0.3, label=f"_{name} (raw)")
            ax.plot(x, ema_smooth(y, smooth), lw=1.8, color=raw.get_color(), label=name)
        else:
            ax.plot(x, y, lw=1.5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(frameon=False)
    _save(fig, save_to)
    return fig


# ------------------------------------------------------------------------------------ similarity matrix


def _matrix_figsize(rows: int, cols: int) -> tuple[float, float]:
    """A figure size that grows with the matrix but stays on screen."""
    return min(max(5.0, 2.5 + 0.3 * cols), 14.0), min(max(4.0, 1.5 + 0.3 * rows), 12.0)


def plot_similarity_matrix(
    sim: np.ndarray,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    mark_diagonal: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """Show a (rows × cols) cosine-similarity matrix with a colorbar.

    ``mark_diagonal`` frames cell (i, i): the matching pair in a query × target matrix. The colour
    range follows the data unless ``vmin``/``vmax`` fix it (fix them to compare two matrices, e.g. the
    K × K redundancy of compression tokens before and after training). Matrices up to 10 × 10 also
    print their values.
    """
    s = np.asarray(sim, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"sim must be a 2-D matrix, got shape {s.shape}")
    rows, cols = s.shape
    fig, ax = plt.subplots(figsize=_matrix_figsize(rows, cols))
    image = ax.imshow(s, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="cosine similarity", fraction=0.046, pad=0.04)
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
        ax.set_yticks(range(rows), [str(label) for label in row_labels])
    if col_labels is not None:
        if len(col_labels) != cols:
            raise ValueError(f"{len(col_labels)} column labels for {cols} columns")
        ax.set_xticks(range(cols), [str(label) for label in col_labels], rotation=45, ha="right")
    if mark_diagonal:
        for i in range(min(rows, cols)):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=DIAGONAL_COLOUR, lw=1.5))
    if max(rows, cols) <= 10:
        for (i, j), value in np.ndenumerate(s):
            # viridis is dark at the low end, so low cells get white text.
            colour = "white" if image.norm(value) < 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    if title:
        ax.set_title(title)
    _save(fig, save_to)
    return fig


# ------------------------------------------------------------------------------------- embedding space


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal-component scores, with a sign rule so reruns give the same picture."""
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(x), 2))
    n_comp = min(2, len(s))
    coords[:, :n_comp] = u[:, :n_comp] * s[:n_comp]
    # An SVD component's sign is arbitrary; make the entry of largest magnitude positive.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])
    return coords * np.where(signs == 0, 1, signs)


def _umap_2d(x: np.ndarray, seed: int, n_neighbors: int) -> np.ndarray:
    """UMAP to 2-D; ``n_neighbors`` is capped below the number of points so small sets work."""
    if len(x) < 4:
        raise ValueError("UMAP needs at least 4 points; use method='pca'")
    # Imported here: umap pulls in numba, whose compilation costs seconds the PCA path never needs.
    import umap

    with warnings.catch_warnings():
        # A fixed random_state makes umap warn that it runs single-threaded; that is the point of a seed.
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=float)


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0, *, n_neighbors: int = 15) -> np.ndarray:
    """Project ``x`` (n, D) to (n, 2) with ``"pca"`` (deterministic, ``seed`` unused) or ``"umap"``."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"x must be an (n, D) matrix, got shape {arr.shape}")
    if method == "pca":
        return _pca_2d(arr)
    if method == "umap":
        return _umap_2d(arr, seed, n_neighbors)
    raise ValueError(f"unknown projection method {method!r}; use 'pca' or 'umap'")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows left as they are)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def plot_embedding_space(
    points_by_model: Mapping[str, np.ndarray],
    *,
    labels: Sequence[Hashable],
    modality: Sequence[str] | None = None,
    method: str = "pca",
    seed: int = 0,
    normalize: bool = True,
    title: str | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """Scatter the same n items as embedded by each model, one panel per model.

    Colour is the class (``labels``), marker the ``modality`` (e.g. query/target); one legend serves
    all panels. Each model is projected on its own since their spaces differ. With ``normalize`` the
    rows are L2-normalised first, so the picture reflects the cosine geometry retrieval uses.
    """
    labels = list(labels)
    n = len(labels)
    modality = ["all"] * n if modality is None else [str(m) for m in modality]
    if len(modality) != n:
        raise ValueError(f"{len(modality)} modality entries for {n} labels")
    classes = _ordered_unique(labels)
    colours = _category_colours(classes)
    markers = {m: MODALITY_MARKERS[i % len(MODALITY_MARKERS)] for i, m in enumerate(dict.fromkeys(modality))}
    modality_arr = np.array(modality)
    point_colours = np.array([colours[label] for label in labels])
    axis_name = {"pca": "PC", "umap": "UMAP-"}.get(method, method)

    panels = len(points_by_model)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], points_by_model.items()):
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or len(points) != n:
            raise ValueError(f"{name}: expected ({n}, D) points, got shape {points.shape}")
        xy = project_2d(_unit_rows(points) if normalize else points, method, seed)
        # A scatter call has a single marker, so draw each modality separately.
        for mod, marker in markers.items():
            sel = modality_arr == mod
            ax.scatter(xy[sel, 0], xy[sel, 1], c=point_colours[sel], marker=marker, s=30,
                       edgecolors="white", linewidths=0.4, alpha=0.9)
        ax.set_title(name)
        ax.set_xlabel(f"{axis_name}1")
        ax.set_ylabel(f"{axis_name}2")
        ax.set_xticks([])
        ax.set_yticks([])

    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=str(c)) for c in classes]
    if len(markers) > 1:
        handles += [Line2D([], [], ls="", marker=mk, color="#555555", label=m) for m, mk in markers.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               ncols=1 + len(handles) // 16)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, save_to)
    return fig


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
    _save(fig, save_to)
    return fig


# ---------------------------------------------------------------------------------------- results bars


def plot_results_bars(
    table: Mapping[str, Mapping[str, float]],
    *,
    chance: Mapping[str, float] | None = None,
    title: str | None = None,
    ylabel: str = "score",
    save_to: str | Path | None = None,
) -> Figure:
    """Grouped bars: one group per column (meta-task or aggregate), one bar per model, values on top.

    Columns appear in order of first appearance; a model missing a column simply has no bar there.
    ``chance`` draws a dashed line across each column's group at the chance score.
    """
    models = list(table)
    columns = list(dict.fromkeys(column for scores in table.values() for column in scores))
    x = np.arange(len(columns))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(columns) * (0.4 + 0.35 * len(models))), 4.2))
    for j, model in enumerate(models):
        present = [i for i, column in enumerate(columns) if column in table[model]]
        heights = [table[model][columns[i]] for i in present]
        bars = ax.bar(x[present] - 0.4 + width * (j + 0.5), heights, width, label=model)
        ax.bar_label(bars, fmt="{:.3g}", fontsize=7, padding=1)
    chance_label = "chance"
    for i, column in enumerate(columns):
        if chance and column in chance:
            ax.hlines(chance[column], x[i] - 0.45, x[i] + 0.45, colors="black", linestyles="--", lw=1.2,
                      label=chance_label)
            chance_label = "_nolegend_"  # one legend entry stands for all the chance lines
    ax.set_xticks(x, columns, rotation=30 if len(columns) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    _save(fig, save_to)
    return fig


# ---------------------------------------------------------------------------------- neighbour explorer


def _display_data(data: dict[str, str]) -> dict:
    """One notebook output entry, the form an ``ipywidgets.Output`` keeps in ``.outputs``."""
    return {"output_type": "display_data", "data": data, "metadata": {}}


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


def _figure_png(fig: Figure) -> dict[str, str]:
    """A figure as base64 PNG output data (closed afterwards so it is not shown a second time)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=SAVE_DPI, bbox_inches="tight")
    plt.close(fig)
    return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)}


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
            data = _figure_png(render(query_index, indices, values))
        # Setting .outputs directly (instead of `with output:`) also works without a running kernel.
        output.outputs = (_display_data(data),)

    picker.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([picker, output])
