"""MMEB's metric: Precision@1 per query with exact tie credit, and the unweighted aggregates.

Ties. MMEB puts the ground truth at index 0, so "the lowest index wins a tie" would hand a constant (or
collapsed) embedder 100%. Instead a query whose ground truth ties with ``t`` other candidates for the top
score earns ``1 / (t + 1)``: the expected Precision@1 under a uniformly random tie break, computed
exactly and deterministically. A constant embedder thus scores precisely the chance level. Scores that
differ by at most ``TIE_TOL`` count as tied, since identical embeddings can pick up rounding differences
depending on where they sit in a matrix product.

Floors. 1/n (``chance_level``) is the floor of a uniform guess, not of an embedder: when the candidates are
structured (``EvalQuery.n_hard`` near-copies of the truth after it, e.g. the same scene with one detail
changed), an embedder that ignores the query can score far from 1/n, either way. ``query_blind_scores``
measures that floor on the dataset itself: the model's own candidate embeddings against one query embedding
that does not depend on the query (the mean of the dataset's query embeddings). And with near-copies,
``near_copy_credit`` splits Precision@1 in two: 'finds the scene' (the top candidate is the truth or one of
its near-copies; a uniform guess scores (1 + n_hard) / n) and 'reads the detail' (the truth beats its
near-copies, the other candidates ignored; a model that gets the gist but not the detail scores
1 / (1 + n_hard), ``gist_only``).
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


def candidate_scores(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Each query's cosine scores against its own candidates, in candidate order (ground truth first)."""
    return list(_candidate_scores(embeddings, query_rows, candidate_rows))


def query_blind_scores(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Each query's candidates scored as a query-blind embedder would: against one query embedding shared
    by all, the L2-normalised mean of the queries' embeddings (one per query, repeats included). A mean
    that vanishes scores every candidate 0, i.e. a uniform guess."""
    mean = embeddings[query_rows].astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    blind = (mean / norm if norm > 1e-12 else np.zeros_like(mean)).astype(embeddings.dtype)
    every = embeddings @ blind  # one score per distinct input, gathered per query
    return [every[rows] for rows in candidate_rows]


def top_credit(scores: np.ndarray, k: int = 1) -> float:
    """How much of the top spot the first ``k`` candidates hold: the probability that the best-scored
    candidate is one of them under a uniformly random tie break (scores within ``TIE_TOL`` of the first
    ``k``'s best tie). ``k=1`` is a query's Precision@1 credit (``score_queries``)."""
    scores = np.asarray(scores, dtype=float)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k must be from 1 to {len(scores)} (the candidates), got {k}")
    best = scores[:k].max()
    rest = scores[k:]
    if np.any(rest > best + TIE_TOL):
        return 0.0
    inside = int(np.sum(scores[:k] >= best - TIE_TOL))
    return inside / (inside + int(np.sum(np.abs(rest - best) <= TIE_TOL)))


def near_copy_credit(scores: np.ndarray, n_hard: int) -> tuple[float, float]:
    """(finds the scene, reads the detail) of one query whose candidates are the truth, then ``n_hard``
    near-copies of it, then the others: the credit that the top candidate is the truth or one of its
    near-copies (which of them does not matter), and the truth's Precision@1 credit among itself and its
    near-copies only (the other candidates left out). Both tie-credited like Precision@1 (``top_credit``)."""
    if not 1 <= n_hard < len(scores):
        raise ValueError(f"n_hard must be from 1 to {len(scores) - 1} (the candidates after the truth), got {n_hard}")
    return top_credit(scores, 1 + n_hard), top_credit(scores[: 1 + n_hard], 1)


def structure_summary(scores: Sequence[np.ndarray], n_hard: Sequence[int]) -> dict[str, float | int | None]:
    """Over the queries with near-copies (``n_hard > 0``): their number (``n_structured``), the mean number of
    near-copies (``near_copies``, over those queries), ``finds_scene`` and ``reads_detail`` (the means of
    ``near_copy_credit``), and what a uniform guess scores on them: ``finds_scene_chance`` (mean
    (1 + n_hard) / n) and ``gist_only`` (mean 1 / (1 + n_hard): the reads-the-detail score of a uniform guess,
    and the Precision@1 of an embedder that finds the scene but not the detail). Means are None when no
    query has near-copies."""
    hard = [(s, int(k)) for s, k in zip(scores, n_hard) if k > 0]
    if not hard:
        return {"n_structured": 0, "near_copies": None, "finds_scene": None, "reads_detail": None,
                "finds_scene_chance": None, "gist_only": None}
    credit = np.array([near_copy_credit(s, k) for s, k in hard])
    return {"n_structured": len(hard), "near_copies": float(np.mean([k for _, k in hard])),
            "finds_scene": float(credit[:, 0].mean()), "reads_detail": float(credit[:, 1].mean()),
            "finds_scene_chance": float(np.mean([(1 + k) / len(s) for s, k in hard])),
            "gist_only": float(np.mean([1 / (1 + k) for _, k in hard]))}


def floor_level(chance: float, chance_std: float, query_blind: float, n_queries: int) -> tuple[float, float]:
    """(floor, its standard deviation): the higher of a uniform guess (``chance``, ``chance_std``) and the
    measured query-blind score, the latter with the binomial noise of ``n_queries`` queries."""
    if query_blind <= chance:
        return chance, chance_std
    return query_blind, float(np.sqrt(query_blind * (1.0 - query_blind) / n_queries))


def score_queries(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Precision@1 credit and ground-truth rank (``credit_and_ranks`` of ``candidate_scores``)."""
    return credit_and_ranks(candidate_scores(embeddings, query_rows, candidate_rows))


def credit_and_ranks(scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Precision@1 credit and ground-truth rank from each query's candidate scores (truth first).

    ``credit`` is 0 when some candidate beats the ground truth, else ``1 / (1 + ties)`` (see the module
    docstring); ``rank`` is 1-based and places the ground truth after all candidates it ties with.
    """
    credit = np.empty(len(scores))
    ranks = np.empty(len(scores), dtype=np.int64)
    for i, row in enumerate(scores):
        others = row[1:]
        better = int(np.sum(others > row[0] + TIE_TOL))
        ties = int(np.sum(np.abs(others - row[0]) <= TIE_TOL))
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
    """Whether one ``evaluate_dataset`` result is no better than its floor (the higher of a uniform guess
    and the query-blind score, ``floor_level``), up to ``CHANCE_Z`` times that floor's standard deviation
    (binomial noise, wide on small samples). A result saved before floors existed uses the uniform guess."""
    floor = result.get("floor", result["chance"])
    std = result.get("floor_std", result["chance_std"])
    return result["precision_at_1"] <= floor + CHANCE_Z * std
