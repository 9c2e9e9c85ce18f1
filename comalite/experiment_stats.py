"""The experiment's statistics: mean and spread over seeds, the paired difference against contrastive-only with
its 95 % t-interval, and that difference as a table cell or a sentence."""
from __future__ import annotations

import numpy as np
from scipy import stats

from .eval.registry import get_dataset_info
from .experiment_design import ABLATIONS, PAIR_CAPS, PRIMARY_GROUP, TRANSFER_SUBSETS


def transfer_groups(scores: dict[str, float]) -> dict[str, float]:
    """Means over the datasets of the task families stage 2 saw in the transfer split, and of the others."""
    seen = {get_dataset_info(s).meta_task for s in TRANSFER_SUBSETS}
    groups = {"seen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task in seen],
              "unseen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task not in seen]}
    return {k: float(np.mean(v)) for k, v in groups.items() if v}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` over paired seeds, its standard deviation, 95 % t-interval, the two-sided p-value of
    the paired t-test, and the per-seed differences themselves (for a forest plot)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif sd == 0:  # every seed agrees exactly: no spread to test against
        p = 1.0 if diff.mean() == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(diff.mean()) / (sd / np.sqrt(n)), n - 1))
    return {"mean": float(diff.mean()), "std": sd, "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "seeds": n, "p": p, "differences": diff.tolist()}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` for testing them together (family-wise error at any level):
    the i-th smallest is multiplied by (m - i), kept monotone, capped at 1. NaN stays NaN (and is not counted)."""
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (arm, variant, split, steps, pairs), with CoMa-style arms paired against
    contrastive-only of the same split, steps, pairs and seed (and of the same variant when the ablation changes
    the baseline too)."""
    def key(r):
        return r["arm"], r["variant"], r["split"], r["steps"], r.get("pairs", 0)

    def metrics(r):
        values = dict(r["aggregates"])
        if r["split"] == "transfer":
            values.update(transfer_groups(r["scores"]))
        return values

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for (arm, variant, split, steps, pairs), members in sorted(groups.items()):
        by_seed = {r["seed"]: metrics(r) for r in members}
        names = sorted(set.intersection(*(set(m) for m in by_seed.values())))
        entry = {"arm": arm, "variant": variant, "split": split, "steps": steps, "pairs": pairs,
                 "seeds": sorted(by_seed), "train_seconds": float(np.mean([r["train_seconds"] for r in members])),
                 "train_pairs": float(np.mean([r.get("train_pairs", np.nan) for r in members])),
                 "mean": {n: float(np.mean([m[n] for m in by_seed.values()])) for n in names},
                 "std": {n: float(np.std([m[n] for m in by_seed.values()], ddof=1)) if len(by_seed) > 1 else 0.0
                         for n in names}}
        ablation = ABLATIONS.get(variant)
        baseline_variant = variant if ablation and ablation.changes_baseline else ""
        baseline = [r for r in rows if key(r) == ("contrastive_only", baseline_variant, split, steps, pairs)]
        paired = {r["seed"]: metrics(r) for r in baseline}
        common = sorted(set(by_seed) & set(paired))
        if arm != "contrastive_only" and common:
            entry["minus_contrastive_only"] = {n: paired_difference([by_seed[s][n] for s in common],
                                                                    [paired[s][n] for s in common]) for n in names}
        out.append(entry)
    return out


def primary_comparisons(summary: list[dict], full_steps: int) -> list[dict]:
    """The pre-registered comparisons (``experiment_design.PRIMARY_GROUP``): CoMa minus contrastive-only at each
    pair count of ``PAIR_CAPS`` at ``full_steps``, scarcest first, each with its Holm-adjusted p-value
    (``p_holm``) over those found. Empty when the pairs part did not run."""
    order = {cap: i for i, cap in enumerate(PAIR_CAPS)}
    found = sorted((e for e in summary if e["arm"] == "coma" and not e["variant"] and e["split"] == "all"
                    and e["steps"] == full_steps and e.get("pairs", 0) in order and "minus_contrastive_only" in e),
                   key=lambda e: order[e.get("pairs", 0)])
    if len({e.get("pairs", 0) for e in found}) < 2:  # the full-data cell alone is the budget part's, not a curve
        return []
    diffs = [e["minus_contrastive_only"][PRIMARY_GROUP] for e in found]
    return [{"pairs": e.get("pairs", 0), "train_pairs": e.get("train_pairs"), "group": PRIMARY_GROUP, **d,
             "p_holm": adjusted} for e, d, adjusted in zip(found, diffs, holm([d["p"] for d in diffs]))]


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
