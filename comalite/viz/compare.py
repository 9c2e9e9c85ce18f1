"""Plots that compare two things honestly: paired differences over seeds as a forest plot, and each query's
cosine with its own target against its cosine with the other candidates as two histograms.

Both ask the same question of a result, "is the gap bigger than the noise?", once across training seeds and
once across queries.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .style import save

# ------------------------------------------------------------------------------------------ forest plot


def plot_paired_differences(
    differences: Mapping[str, Sequence[float]],
    *,
    reference: str = "",
    xlabel: str = "paired difference (one dot per seed)",
    title: str | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """A forest plot: one row per comparison, every seed's paired difference as a dot, their mean with its
    95 % t-interval, and a vertical line at zero.

    ``differences`` maps a row label (e.g. ``"CoMa - contrastive-only, overall"``) to the per-seed
    differences, each taken between two runs of the same seed. The interval is the one the experiment's
    tables print (:func:`comalite.experiment_stats.paired_difference`): mean ± t(0.975, n-1)·sd/sqrt(n). A row
    whose interval leaves zero out is one where the seeds agree on the sign; one seed gives no interval.
    ``reference`` names what the rows are measured against; it labels the zero line in the legend.
    The rows run top to bottom in the order given, each with its numbers written at the right.
    """
    # Imported here: the experiment's statistics pull in the dataset registry (and torch), which the other
    # plots do not need.
    from ..experiment_stats import paired_difference

    rows = {name: np.asarray(values, dtype=float).ravel() for name, values in differences.items()}
    for name, values in rows.items():
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"{name!r}: needs at least one finite difference, got {values.tolist()}")
    # A constrained layout makes room for the numbers right of the plot and the legend below it.
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.5 * max(len(rows), 1)), layout="constrained")
    ax.axvline(0, color="black", lw=1, ls="--", label=f"no difference from {reference}" if reference else
               "no difference")
    for row, (name, values) in enumerate(rows.items()):
        # A fixed vertical spread keeps equal differences from hiding each other (no random jitter, so the
        # picture is the same every time).
        spread = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(values, row + spread, s=18, color="tab:blue", alpha=0.6, zorder=2,
                   label="one seed" if row == 0 else "_nolegend_")
        stats = paired_difference(values.tolist(), [0.0] * values.size)
        mean, (low, high) = stats["mean"], stats["ci95"]
        if values.size > 1:
            ax.errorbar(mean, row, xerr=[[mean - low], [high - mean]], fmt="D", color="black", markersize=6,
                        capsize=4, lw=1.5, zorder=3, label="mean, 95 % t-interval" if row == 0 else "_nolegend_")
            numbers = f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]"
        else:
            ax.plot(mean, row, "D", color="black", markersize=6, zorder=3)
            numbers = f"{mean:+.3g} (one seed: no interval)"
        # x in axes coordinates, y in data: the numbers line up in a column right of the plot.
        ax.text(1.02, row, numbers, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if rows:
        fig.legend(loc="outside lower center", ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    save(fig, save_to)
    return fig


# ------------------------------------------------------------------------------------ cosine histograms


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"{what} must be a non-empty list of finite cosines")
    return array


def plot_cosine_histogram(
    own: Sequence[float],
    other: Sequence[float],
    *,
    bins: int = 30,
    title: str | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """Overlaid density histograms of each query's cosine with its own target and with the other candidates.

    Both share one set of bins, so their heights compare bar by bar; a dashed line marks each median. The
    legend's title states the overlap: the area the two densities share (the sum over bins of the lower
    density times the bin width), 0 % when every own-target cosine sits apart from every other one, 100 %
    when the model cannot tell them apart at all. ``other`` may be longer than ``own`` (several candidates
    per query); densities make the two comparable.
    """
    own_values, other_values = _finite(own, "own"), _finite(other, "other")
    edges = np.histogram_bin_edges(np.concatenate([own_values, other_values]), bins=bins)
    own_density, _ = np.histogram(own_values, bins=edges, density=True)
    other_density, _ = np.histogram(other_values, bins=edges, density=True)
    overlap = float(np.sum(np.minimum(own_density, other_density) * np.diff(edges)))

    fig, ax = plt.subplots(figsize=(7, 4))
    for values, name, colour in ((other_values, "other candidates", "tab:grey"),
                                 (own_values, "own target", "tab:green")):
        median = float(np.median(values))
        ax.hist(values, bins=edges, density=True, alpha=0.55, color=colour, label=f"{name} (median {median:.2f})")
        ax.axvline(median, color=colour, ls="--", lw=1.5)
    ax.set_xlabel("cosine similarity with the query")
    ax.set_ylabel("density")
    ax.legend(title=f"overlap {overlap:.0%}", frameon=False)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    save(fig, save_to)
    return fig
