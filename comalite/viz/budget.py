"""The experiment's budget curve: Precision@1 against stage-2 steps, one line per arm, per group of datasets."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ..experiment_design import ARMS
from .style import save


def plot_budget_curve(
    summary: Sequence[Mapping],
    *,
    groups: Sequence[str] = ("overall", "IND", "OOD"),
    floor: Mapping[str, float] | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """One panel per group: each arm's mean Precision@1 (%) against stage-2 steps (full split, no variant) with
    a +- std band, on a log axis; ``floor`` (chance per group) as a dashed line.

    ``summary`` is the experiment's summary (``experiment_stats.summarize``, or a report's ``"summary"``).
    """
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, group in zip(axes, groups):
        for arm in ARMS:
            points = sorted((e["steps"], e["mean"][group], e["std"][group]) for e in summary
                            if e["arm"] == arm and not e["variant"] and e["split"] == "all")
            if not points:
                continue
            x, m, s = map(np.array, zip(*points))
            ax.plot(x, 100 * m, marker="o", label=arm)
            ax.fill_between(x, 100 * (m - s), 100 * (m + s), alpha=0.2)
        if floor:
            ax.axhline(100 * floor[group], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(sorted({e["steps"] for e in summary if not e["variant"]}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(group)
        ax.set_xlabel("stage-2 steps")
    axes[0].set_ylabel("Precision@1 (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, save_to)
    return fig
