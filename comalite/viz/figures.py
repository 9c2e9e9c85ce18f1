"""Line, matrix and bar plots: training-loss curves (with EMA smoothing), cosine-similarity matrices and
grouped benchmark bars (with binomial error bars when the query counts are known)."""
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
    log_steps: bool = False,
    save_to: str | Path | None = None,
) -> Figure:
    """Plot one line per run against the index of each value (step, epoch or log entry).

    ``smooth`` is an EMA weight in [0, 1): above 0 each run is drawn faint as logged with its smoothed
    curve on top in the same colour, so noise and trend are both visible. ``log_steps``: the x axis on a log
    scale, counting from 1, so that a run of 60 steps stays visible beside one of 6,000.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        y = np.asarray(values, dtype=float).ravel()
        x = np.arange(1, len(y) + 1) if log_steps else np.arange(len(y))
        if smooth:
            # A label starting with "_" keeps the raw line out of the legend.
            (raw,) = ax.plot(x, y, lw=1, alpha=0.3, label=f"_{name} (raw)")
            ax.plot(x, ema_smooth(y, smooth), lw=1.8, color=raw.get_color(), label=name)
        else:
            ax.plot(x, y, lw=1.5, label=name)
    if log_steps:
        ax.set_xscale("log")
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


def binomial_interval(successes_fraction: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate measured on ``n`` trials (95 % for the default ``z``).

    Unlike the textbook ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 1] and does not shrink to nothing at
    0 or 1 correct: 0 of 10 gives (0, 0.278), not (0, 0).
    """
    p = float(successes_fraction)
    if not 0 <= p <= 1:
        raise ValueError(f"successes_fraction must be in [0, 1], got {p}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * np.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # Clipping only removes rounding error (e.g. -1e-17 at p = 0); the exact interval lies in [0, 1].
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def _scaled_interval(score: float, n: int, scale: float, where: str) -> tuple[float, float]:
    """``binomial_interval`` of a score given in units of ``scale`` (100 for percentages), in those units."""
    try:
        low, high = binomial_interval(score / scale, n)
    except ValueError as error:
        raise ValueError(f"{where}: {error} (is scale={scale} right?)") from None
    return low * scale, high * scale


def _labels_collide(fig: Figure, labels: Sequence, gap_points: float = 4.0) -> bool:
    """Whether any two of ``labels`` (text artists), as drawn now, come closer than ``gap_points``.

    Touching is not enough: "0.521" and "0.52" side by side with no gap read as "0.5210.52".
    """
    renderer = fig.canvas.get_renderer()
    pad = gap_points / 2 * fig.dpi / 72  # window extents are in pixels
    boxes = [label.get_window_extent(renderer).padded(pad) for label in labels]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def plot_results_bars(
    table: Mapping[str, Mapping[str, float]],
    *,
    chance: Mapping[str, float] | None = None,
    chance_label: str = "chance",
    counts: Mapping[str, Mapping[str, int]] | None = None,
    scale: float = 1.0,
    floors: Mapping[str, Mapping[str, float]] | None = None,
    floor_label: str = "floor",
    title: str | None = None,
    ylabel: str = "score",
    save_to: str | Path | None = None,
) -> Figure:
    """Grouped bars: one group per column (meta-task or aggregate), one bar per model, values on top.

    Columns appear in order of first appearance; a model missing a column simply has no bar there.
    ``chance`` draws a dashed line across each column's group at the chance score, labelled ``chance_label``.
    Retrieval chance is better drawn at the honest floor than at 1/candidates: pass an evaluation's
    ``floor_aggregates[model]`` (the higher of 1/candidates and that model's query-blind score, per dataset)
    with ``chance_label="floor"``, or, for several models, ``floors``: ``floors[model][column]`` draws a
    short dotted tick across that model's own bar at its floor (labelled ``floor_label``), so each bar is read
    against what that model would score ignoring the query. A floor is in the units of the scores.

    ``counts[model][column]`` is how many queries a score averages over; given, each such bar gets a 95 %
    error bar (:func:`binomial_interval`), and bars without a count get none. The scores are fractions times
    ``scale`` (1 for fractions, 100 for percentages). A score averaged over datasets is treated as one pool
    of all their queries, which is close when the datasets are of similar size. When value labels would
    overlap (many models) they are turned upright.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    models = list(table)
    columns = list(dict.fromkeys(column for scores in table.values() for column in scores))
    x = np.arange(len(columns))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(columns) * (0.4 + 0.35 * len(models))), 4.2))
    labels, tops = [], []
    for j, model in enumerate(models):
        present = [i for i, column in enumerate(columns) if column in table[model]]
        heights = [table[model][columns[i]] for i in present]
        centres = x[present] - 0.4 + width * (j + 0.5)
        ax.bar(centres, heights, width, label=model)
        bar_tops = list(heights)
        model_counts = (counts or {}).get(model, {})
        with_count = [k for k, i in enumerate(present) if columns[i] in model_counts]
        if with_count:
            intervals = [_scaled_interval(heights[k], model_counts[columns[present[k]]], scale,
                                          f"{model}, {columns[present[k]]}") for k in with_count]
            ax.errorbar(centres[with_count], [heights[k] for k in with_count], fmt="none", ecolor="black",
                        yerr=[[heights[k] - low for k, (low, _) in zip(with_count, intervals)],
                              [high - heights[k] for k, (_, high) in zip(with_count, intervals)]],
                        elinewidth=0.9, capsize=2)
            for k, (_, high) in zip(with_count, intervals):
                bar_tops[k] = high
        model_floors = (floors or {}).get(model, {})
        with_floor = [k for k, i in enumerate(present) if columns[i] in model_floors]
        if with_floor:
            levels = [model_floors[columns[present[k]]] for k in with_floor]
            ax.hlines(levels, centres[with_floor] - width / 2, centres[with_floor] + width / 2, colors="black",
                      linestyles=(0, (1, 1)), lw=2.0, label=floor_label, gid="floor")
            floor_label = "_nolegend_"  # one legend entry stands for every model's floor
            for k, level in zip(with_floor, levels):
                bar_tops[k] = max(bar_tops[k], level)
        # Each value sits just above its bar, or above its error bar or floor so neither crosses it.
        for centre, height, label_at in zip(centres, heights, bar_tops):
            labels.append(ax.annotate(f"{height:.3g}", (centre, label_at), xytext=(0, 1.5), textcoords="offset points",
                                      ha="center", va="bottom", fontsize=7))
        tops.extend(bar_tops)
    for i, column in enumerate(columns):
        if chance and column in chance:
            ax.hlines(chance[column], x[i] - 0.45, x[i] + 0.45, colors="black", linestyles="--", lw=1.2,
                      label=chance_label)
            chance_label = "_nolegend_"  # one legend entry stands for all the chance lines
            tops.append(chance[column])
    ax.set_xticks(x, columns, rotation=30 if len(columns) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    # Headroom above the highest bar or whisker for its label, set before measuring where the labels fall.
    top = max(tops, default=0.0)
    if top > 0:
        ax.set_ylim(0, top * 1.1)
    else:
        ax.set_ylim(bottom=0)
    # Whether labels side by side collide depends on their text and the bar width (with the width rule above,
    # three-decimal labels collide from about 4 models on, percentages later), so measure the drawn labels
    # rather than count the bars.
    if labels and _labels_collide(fig, labels):
        for label in labels:
            label.set_rotation(90)
        if top > 0:
            ax.set_ylim(0, top * 1.22)  # an upright label is taller
    save(fig, save_to)
    return fig
