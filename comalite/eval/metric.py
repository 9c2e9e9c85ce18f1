"""MMEB's metric: Precision@1 per query with exact tie credit, and the unweighted aggregates.

Ties. MMEB puts the ground truth at index 0, so "the lowest index wins a tie" would hand a constant (or
collapsed) embedder 100%. Instead a query whose ground truth ties with ``t`` other candidates for the top
score earns ``1 / (t + 1)``: the expected Precision@1 under a uniformly random tie break, computed
exactly and deterministically. A constant embedder thus scores precisely the chance level. Scores that
differ by at most ``TIE_TOL`` count as tied, since identical embeddings can pick up rounding differences
depending on where they sit in a matrix product.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from comalite.records import META_TASKS, DatasetInfo

TIE_TOL = 1e-6
"""Cosine scores closer than this count as a tie (float32 rounding, not a real preference)."""

CHANCE_Z = 3.0
"""A score within this many binomial standard deviations above chance counts as 'at chance'."""


def _candidate_scores(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray], block: int = 256
) -> Iterator[np.ndarray]:
    """Each query's cosine scores against its own candidates, in candidate order.

    One matrix product per block of queries against the distinct candidates of that block, then a
    gather: a gather plus a matrix-vector product per query is memory-bound and much slower on an
    MMEB-sized dataset (1000 queries x 1000 candidates).
    """
    for start in range(0, len(query_rows), block):
        lists = candidate_rows[start : start + block]
        columns, where = np.unique(np.concatenate(lists), return_inverse=True)
        sims = embeddings[query_rows[start : start + block]] @ embeddings[columns].T
        offset = 0
        for b, cands in enumerate(lists):
            yield sims[b, where[offset : offset + len(cands)]]
            offset += len(cands)


def score_queries(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Precision@1 credit and ground-truth rank, ground truth = each candidate list's first entry.

    ``credit`` is 0 when some candidate beats the ground truth, else ``1 / (1 + ties)`` (see the module
    docstring); ``rank`` is 1-based and places the ground truth after all candidates it ties with.
    """
    credit = np.empty(len(query_rows))
    ranks = np.empty(len(query_rows), dtype=np.int64)
    for i, scores in enumerate(_candidate_scores(embeddings, query_rows, candidate_rows)):
        others = scores[1:]
        better = int(np.sum(others > scores[0] + TIE_TOL))
        ties = int(np.sum(np.abs(others - scores[0]) <= TIE_TOL))
        credit[i] = 0.0 if better else 1.0 / (1 + ties)
        ranks[i] = 1 + better + ties
    return credit, ranks


def chance_level(candidate_counts: np.ndarray) -> tuple[float, float]:
    """(mean score, standard deviation of the mean) of a uniform guesser over queries with these many
    candidates each."""
    p = 1.0 / np.asarray(candidate_counts, dtype=float)
    return float(p.mean()), float(np.sqrt(np.sum(p * (1.0 - p))) / len(p))


def aggregate(scores: dict[str, float], infos: Iterable[DatasetInfo]) -> dict[str, float]:
    """Unweighted means of ``scores`` (by dataset name) per meta-task, per IND/OOD and overall.

    Groups with no dataset are left out rather than reported as 0.
    """
    groups: dict[str, list[float]] = {}
    for info in infos:
        for group in (info.meta_task, info.split, "overall"):
            groups.setdefault(group, []).append(scores[info.name])
    order = [*META_TASKS, "IND", "OOD", "overall"]
    return {g: float(np.mean(groups[g])) for g in order if g in groups}


def at_chance(result: dict) -> bool:
    """Whether one ``evaluate_dataset`` result is no better than chance, up to ``CHANCE_Z`` times the
    standard deviation of a uniform guesser's score (binomial noise, wide on small samples)."""
    return result["precision_at_1"] <= result["chance"] + CHANCE_Z * result["chance_std"]
