"""The experiment's curves: Precision@1 against stage-2 steps (the budget curve) or against the distinct training
pairs stage 2 saw (the data-scarcity curve), one line per arm, per group of datasets."""
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
    floor_label: str = "chance",
    against: str = "steps",
    save_to: str | Path | None = None,
) -> Figure:
    """One panel per group: each arm's mean Precision@1 (%) with a +- std band, on a log axis, against
    ``against``: ``"steps"`` (stage-2 steps, runs on all pairs) or ``"train_pairs"`` (distinct training pairs,
    runs at the full budget ``max(steps)``); ``floor`` (per group) as a dashed line called ``floor_label``.

    ``summary`` is the experiment's summary (``experiment_stats.summarize``, or a report's ``"summary"``).
    """
    if against not in ("steps", "train_pairs"):
        raise ValueError(f"against={against!r}: 'steps' or 'train_pairs'")
    plain = [e for e in summary if not e["variant"] and e["split"] == "all"]
    if against == "steps":
        plain = [e for e in plain if not e.get("pairs", 0)]
    else:
        full = max((e["steps"] for e in plain), default=0)
        plain = [e for e in plain if e["steps"] == full]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, group in zip(axes, groups):
        for arm in ARMS:
            points = sorted((e[against], e["mean"][group], e["std"][group]) for e in plain if e["arm"] == arm)
            if not points:
                continue
            x, m, s = map(np.array, zip(*points))
            ax.plot(x, 100 * m, marker="o", label=arm)
            ax.fill_between(x, 100 * (m - s), 100 * (m + s), alpha=0.2)
        if floor:
            ax.axhline(100 * floor[group], color="grey", linestyle="--", linewidth=1, label=floor_label)
        ax.set_xscale("log")
        ax.set_xticks(sorted({round(e[against]) for e in plain}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(group)
        ax.set_xlabel("stage-2 steps" if against == "steps" else "distinct training pairs")
    axes[0].set_ylabel("Precision@1 (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, save_to)
    return fig
