"""Line, matrix and bar plots: training-loss curves (with EMA smoothing), cosine-similarity matrices and
grouped benchmark bars."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .style import DIAGONAL_COLOUR, save


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
    save(fig, save_to)
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
    save(fig, save_to)
    return fig


# ---------------------------------------------------------------------------------------- results bars


def plot_results_bars(
    table: Mapping[str, Mapping[str, float]],
    *,
    chance: Mapping[str, float] | None = None,
    chance_label: str = "chance",
    title: str | None = None,
    ylabel: str = "score",
    save_to: str | Path | None = None,
) -> Figure:
    """Grouped bars: one group per column (meta-task or aggregate), one bar per model, values on top.

    Columns appear in order of first appearance; a model missing a column simply has no bar there.
    ``chance`` draws a dashed line across each column's group at the chance score, labelled ``chance_label``.
    Retrieval chance is better drawn at the honest floor than at 1/candidates: pass an evaluation's
    ``floor_aggregates[model]`` (the higher of 1/candidates and that model's query-blind score, per dataset)
    with ``chance_label="floor"``.
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
    save(fig, save_to)
    return fig
