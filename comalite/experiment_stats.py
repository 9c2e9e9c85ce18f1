"""The experiment's statistics: mean and spread over seeds, the paired difference against contrastive-only with
its 95 % t-interval, and that difference as a table cell or a sentence."""
from __future__ import annotations

import numpy as np
from scipy import stats

from .eval.registry import get_dataset_info
from .experiment_design import ABLATIONS, TRANSFER_SUBSETS


def transfer_groups(scores: dict[str, float]) -> dict[str, float]:
    """Means over the datasets of the task families stage 2 saw in the transfer split, and of the others."""
    seen = {get_dataset_info(s).meta_task for s in TRANSFER_SUBSETS}
    groups = {"seen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task in seen],
              "unseen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task not in seen]}
    return {k: float(np.mean(v)) for k, v in groups.items() if v}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` over paired seeds, its standard deviation and 95 % t-interval."""
    diff = np.asarray(a) - np.asarray(b)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"),
            "ci95": [float(diff.mean() - half), float(diff.mean() + half)], "seeds": len(diff)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (arm, variant, split, steps), with CoMa-style arms paired against
    contrastive-only of the same split, steps and seed (and of the same variant when the ablation changes the
    baseline too)."""
    def key(r):
        return r["arm"], r["variant"], r["split"], r["steps"]

    def metrics(r):
        values = dict(r["aggregates"])
        if r["split"] == "transfer":
            values.update(transfer_groups(r["scores"]))
        return values

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for (arm, variant, split, steps), members in sorted(groups.items()):
        by_seed = {r["seed"]: metrics(r) for r in members}
        names = sorted(set.intersection(*(set(m) for m in by_seed.values())))
        entry = {"arm": arm, "variant": variant, "split": split, "steps": steps, "seeds": sorted(by_seed),
                 "train_seconds": float(np.mean([r["train_seconds"] for r in members])),
                 "mean": {n: float(np.mean([m[n] for m in by_seed.values()])) for n in names},
                 "std": {n: float(np.std([m[n] for m in by_seed.values()], ddof=1)) if len(by_seed) > 1 else 0.0
                         for n in names}}
        ablation = ABLATIONS.get(variant)
        baseline_variant = variant if ablation and ablation.changes_baseline else ""
        baseline = [r for r in rows if key(r) == ("contrastive_only", baseline_variant, split, steps)]
        paired = {r["seed"]: metrics(r) for r in baseline}
        common = sorted(set(by_seed) & set(paired))
        if arm != "contrastive_only" and common:
            entry["minus_contrastive_only"] = {n: paired_difference([by_seed[s][n] for s in common],
                                                                    [paired[s][n] for s in common]) for n in names}
        out.append(entry)
    return out


def difference_cell(diff: dict) -> str:
    """A paired difference (``paired_difference``) as a table cell, in points: ``+1.5 [-2.3, +5.3]``."""
    return f"{100 * diff['mean']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]"


def difference_in_words(diff: dict, what: str = "CoMa", than: str = "contrastive-only") -> str:
    """A paired difference as a plain sentence: its size in points, its interval, and whether the interval
    leaves zero out (then the seeds agree on the sign)."""
    mean, (low, high) = 100 * diff["mean"], (100 * diff["ci95"][0], 100 * diff["ci95"][1])
    if diff["seeds"] < 2:
        verdict = "one seed: no interval, so no verdict"
    elif low > 0 or high < 0:
        verdict = f"{what} is {'better' if mean > 0 else 'worse'}: the interval leaves zero out"
    else:
        verdict = "the interval holds zero: no difference the seeds can tell apart"
    return (f"{what} minus {than}: {mean:+.1f} points (95 % interval {low:+.1f} to {high:+.1f}, "
            f"{diff['seeds']} seeds); {verdict}")
