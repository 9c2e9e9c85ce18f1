"""The MMEB evaluation protocol: every model on every dataset, Precision@1, aggregates, reports.

Every query is scored against its own candidate list (candidate 0 is the ground truth) by cosine
similarity, i.e. the dot product of L2-normalised embeddings (``comalite.eval.metric``). Each distinct
input (``EmbedInput.key()``) is encoded once per dataset, so a label set shared by 1000 classification
queries costs one pass, and embeddings are cached by model fingerprint and inputs
(``comalite.eval.cache``), so an unchanged model is never encoded twice and a changed one always is.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from comalite.distributed import is_writer
from comalite.eval.cache import cache_folder, cached_embeddings, inputs_fingerprint
from comalite.eval.metric import (aggregate, at_chance, candidate_scores, chance_level, credit_and_ranks, floor_level,
                                  query_blind_scores, structure_summary, top_credit)
from comalite.eval.report import save_results
from comalite.records import META_TASKS, DatasetInfo, EmbedInput, EvalDataset

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Anything that embeds ``EmbedInput``s.

    ``name`` labels the model in tables; ``fingerprint`` must change whenever its embeddings could (other
    weights, pooling, image size...): the evaluation cache is keyed by it, never by the name. An embedder
    may also have ``prepare(inputs)``: the evaluation calls it with a dataset's inputs still to encode, in
    the order ``embed`` will get them, so it can read ahead (``EmbeddingModel``).
    """

    name: str
    fingerprint: str

    def embed(self, inputs: list[EmbedInput]) -> np.ndarray:
        """Embeddings of ``inputs`` as a float32 ``(len(inputs), D)`` array with L2-normalised rows."""
        ...


def evaluate_dataset(
    embedder: Embedder,
    dataset: EvalDataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    inputs_key: str | None = None,
) -> dict:
    """Precision@1 of ``embedder`` on ``dataset``; scores are fractions in [0, 1]. ``inputs_key``: the
    dataset's ``inputs_fingerprint`` when the caller has it already (``evaluate`` reads each image once for
    all its models).

    Returns a dict with ``dataset``, ``model``, ``precision_at_1``, ``chance`` (mean over queries of
    1 / number of candidates), ``chance_std`` (the standard deviation of a uniform guesser's score),
    ``query_blind`` (the Precision@1 of this model's candidate embeddings against one query embedding shared
    by every query, ``metric.query_blind_scores``), ``floor`` and ``floor_std`` (the higher of chance and
    query_blind, ``metric.floor_level``: what ``at_chance`` compares with), the near-copy split of
    ``metric.structure_summary`` (``n_structured``, ``near_copies``, ``finds_scene``, ``reads_detail``,
    ``finds_scene_chance``, ``gist_only``: None without near-copies) with the query-blind embedder's
    ``finds_scene_blind`` and ``reads_detail_blind``, ``n_queries``, ``candidates`` (min/mean/max per query), ``n_distinct_queries``,
    ``n_distinct_candidates``, ``n_encoded`` (distinct inputs encoded by this call; the rest came from
    the cache), ``seconds`` and ``ranks``: the ground truth's 1-based rank per query, placed after every
    candidate it ties with (so rank 1 means a strict win).
    """
    if not dataset.queries:
        raise ValueError(f"dataset {dataset.name!r} has no queries")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    inputs, query_rows, candidate_rows = _distinct_inputs(dataset)
    cache = cache_folder(cache_dir, embedder.fingerprint, dataset.name, inputs, inputs_key)
    embeddings, n_encoded = cached_embeddings(embedder, inputs, cache, batch_size, progress, desc=dataset.name)
    scores = candidate_scores(embeddings, query_rows, candidate_rows)  # one pass serves P@1 and the split
    credit, ranks = credit_and_ranks(scores)
    counts = np.array([len(rows) for rows in candidate_rows])
    chance, chance_std = chance_level(counts)
    n_hard = [q.n_hard for q in dataset.queries]
    blind = query_blind_scores(embeddings, query_rows, candidate_rows)
    query_blind = float(np.mean([top_credit(s) for s in blind]))
    floor, floor_std = floor_level(chance, chance_std, query_blind, len(query_rows))
    structure = structure_summary(scores, n_hard)
    blind_structure = structure_summary(blind, n_hard)
    return {
        "dataset": dataset.name,
        "model": embedder.name,
        "precision_at_1": float(credit.mean()),
        "chance": chance,
        "chance_std": chance_std,
        "query_blind": query_blind,
        "floor": floor,
        "floor_std": floor_std,
        **structure,
        "finds_scene_blind": blind_structure["finds_scene"],
        "reads_detail_blind": blind_structure["reads_detail"],
        "n_queries": len(query_rows),
        "candidates": {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())},
        "n_distinct_queries": len(set(query_rows.tolist())),
        "n_distinct_candidates": len(set(np.concatenate(candidate_rows).tolist())),
        "n_encoded": n_encoded,
        "seconds": time.perf_counter() - start,
        "ranks": ranks.tolist(),
    }


def _distinct_inputs(dataset: EvalDataset) -> tuple[list[EmbedInput], np.ndarray, list[np.ndarray]]:
    """Distinct inputs, each query's row in them and each query's candidate rows.

    Queries and candidates share one pool: the embedder sees no role, so an input equal to another
    yields the same embedding whichever side it is on. The distinct queries come first, then the candidates
    that are not queries too (query rows stay contiguous in the cache), each part shortest first
    (``_size``): consecutive rows are batched together, and inputs of similar length waste less padding.
    """
    for i, q in enumerate(dataset.queries):
        if not q.candidates:
            raise ValueError(f"{dataset.name}: query {i} has no candidates")
    queries: dict[tuple[str, str], EmbedInput] = {}
    for q in dataset.queries:
        queries.setdefault(q.query.key(), q.query)
    candidates: dict[tuple[str, str], EmbedInput] = {}
    for c in (c for q in dataset.queries for c in q.candidates if c.key() not in queries):
        candidates.setdefault(c.key(), c)
    inputs = sorted(queries.values(), key=_size) + sorted(candidates.values(), key=_size)
    rows = {item.key(): i for i, item in enumerate(inputs)}
    query_rows = np.array([rows[q.query.key()] for q in dataset.queries], dtype=np.int64)
    candidate_rows = [np.array([rows[c.key()] for c in q.candidates], dtype=np.int64) for q in dataset.queries]
    return inputs, query_rows, candidate_rows


def _size(item: EmbedInput) -> tuple[int, int]:
    """How long an input's sequence will be, roughly: its image's pixels (read from the file's header), then its
    text's characters. An image that cannot be read sorts first; encoding it reports the error."""
    pixels = 0
    if isinstance(item.image, Image.Image):
        pixels = item.image.width * item.image.height
    elif item.image:
        try:
            with Image.open(item.image) as image:
                pixels = image.width * image.height
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
    return pixels, len(item.text)


def evaluate(
    embedders: Embedder | Sequence[Embedder],
    datasets: Sequence[tuple[DatasetInfo, EvalDataset]],
    *,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    limit: int | None = None,
    seed: int | None = None,
) -> dict:
    """Evaluate every model on every dataset; aggregate; optionally save ``results.json`` and ``results.md``.

    ``limit`` and ``seed`` only record how the datasets were subsampled when they were read (e.g.
    ``comalite.data.io.read_eval_dataset(..., limit=, seed=)``), so that the report says so.

    Returns ``{"models", "fingerprints", "datasets", "sampling", "scores", "aggregates",
    "chance_aggregates", "floors", "floor_aggregates", "details"}``: ``datasets`` lists per dataset its info,
    sizes, chance and ``near_copies`` (None, or for datasets whose candidates hold near-copies of the truth:
    ``queries`` with them, ``mean`` near-copies per such query, ``finds_scene_chance`` and ``gist_only``),
    ``scores[model][dataset]`` is Precision@1, ``aggregates[model]`` has one entry per meta-task present plus
    ``IND``/``OOD`` (when present) and ``overall``, all unweighted means over datasets; ``floors[model][dataset]``
    is the dataset's honest floor for that model (the higher of chance and its query-blind score) and
    ``floor_aggregates[model]`` their means like ``aggregates``; ``details[model][dataset]`` is
    ``evaluate_dataset``'s dict.
    """
    models = [embedders] if isinstance(embedders, Embedder) else list(embedders)
    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"need one or more embedders with distinct names, got {names}")
    _check_pairs(datasets)
    details: dict[str, dict[str, dict]] = {}
    # The cache key reads every image's content: once per dataset for all the models, not once per model.
    keys = {info.name: inputs_fingerprint(_distinct_inputs(data)[0]) for info, data in datasets} if cache_dir else {}
    for model in models:
        details[model.name] = {
            info.name: evaluate_dataset(model, data, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                                        inputs_key=keys.get(info.name))
            for info, data in datasets
        }
        _warn_if_at_chance(model.name, list(details[model.name].values()))

    first = details[names[0]]  # sizes and chance do not depend on the model
    table = [
        {
            "name": info.name,
            "meta_task": info.meta_task,
            "split": info.split,
            "source": info.source,
            "n_queries": first[info.name]["n_queries"],
            "candidates": first[info.name]["candidates"],
            "chance": first[info.name]["chance"],
            "near_copies": _near_copies(first[info.name]),
        }
        for info, _ in datasets
    ]
    scores = {m: {d: r["precision_at_1"] for d, r in per.items()} for m, per in details.items()}
    floors = {m: {d: r["floor"] for d, r in per.items()} for m, per in details.items()}
    chance = {row["name"]: row["chance"] for row in table}
    results = {
        "models": names,
        "fingerprints": {m.name: m.fingerprint for m in models},
        "datasets": table,
        "sampling": {"limit": limit, "seed": seed},
        "scores": scores,
        "aggregates": {m: aggregate(scores[m], [info for info, _ in datasets]) for m in names},
        "chance_aggregates": aggregate(chance, [info for info, _ in datasets]),
        "floors": floors,
        "floor_aggregates": {m: aggregate(floors[m], [info for info, _ in datasets]) for m in names},
        "details": details,
    }
    if out_dir is not None and is_writer():
        save_results(results, out_dir)
    return results


def _near_copies(result: dict) -> dict | None:
    """The model-free part of a dataset's near-copy structure (for its table row), None without near-copies."""
    if not result["n_structured"]:
        return None
    return {"queries": result["n_structured"], "mean": result["near_copies"],
            "finds_scene_chance": result["finds_scene_chance"], "gist_only": result["gist_only"]}


def _check_pairs(datasets: Sequence[tuple[DatasetInfo, EvalDataset]]) -> None:
    """Each pair must agree on its name, names must be distinct and meta-tasks known."""
    if not datasets:
        raise ValueError("no datasets to evaluate")
    seen = set()
    for info, data in datasets:
        if info.name != data.name:
            raise ValueError(f"DatasetInfo {info.name!r} is paired with EvalDataset {data.name!r}")
        if info.meta_task not in META_TASKS:
            raise ValueError(f"{info.name}: meta_task {info.meta_task!r} is not one of {META_TASKS}")
        if info.name in seen:
            raise ValueError(f"dataset {info.name!r} appears twice")
        seen.add(info.name)


def _warn_if_at_chance(model: str, results: Sequence[dict]) -> None:
    """Warn (and log) when a model is at its floor on every dataset (``at_chance``: the higher of chance and
    what its candidate embeddings score against a query-blind query): almost always an input-format bug."""
    if all(at_chance(r) for r in results):
        n = sum(r["n_queries"] for r in results)
        message = (
            f"{model} scores within noise of chance (or of its query-blind floor, where higher: what its "
            f"candidate embeddings score against one query embedding shared by all queries) on every dataset ({len(results)} "
            f"datasets, {n} queries). "
            "That usually means an input-format problem (the <|image_1|> placeholder not becoming the image, "
            "an instruction or whitespace mismatch, collapsed embeddings), not a bad model; on very few "
            "queries it can also mean the sample is too small to tell."
        )
        log.warning(message)
        warnings.warn(message, stacklevel=3)
