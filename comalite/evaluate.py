"""The MMEB evaluation protocol: Precision@1 per dataset, unweighted means per meta-task, IND, OOD, overall.

Every query is scored against its own candidate list (candidate 0 is the ground truth) by cosine
similarity, i.e. the dot product of L2-normalised embeddings. Each distinct input (``EmbedInput.key()``)
is encoded once per dataset, so a label set shared by 1000 classification queries costs one pass.

Ties. MMEB puts the ground truth at index 0, so "the lowest index wins a tie" would hand a constant (or
collapsed) embedder 100%. Instead a query whose ground truth ties with ``t`` other candidates for the top
score earns ``1 / (t + 1)``: the expected Precision@1 under a uniformly random tie break, computed
exactly and deterministically. A constant embedder thus scores precisely the chance level. Scores that
differ by at most ``TIE_TOL`` count as tied, since identical embeddings can pick up rounding differences
depending on where they sit in a matrix product.

Cache layout (when ``cache_dir`` is given)::

    cache_dir/<model slug>/<dataset slug>-<fingerprint>/rows_<start>-<stop>.npy

A slug is the name made file-system safe plus a short hash of it (names may be paths).
``<fingerprint>`` hashes the ordered list of distinct input keys (texts and image paths, not image
bytes); each ``rows_*`` file holds the embeddings of distinct inputs ``start..stop-1``. Files are
written atomically (temporary file + ``os.replace``), one per encoded batch, so an interrupted run
resumes with only the missing rows, whatever the batch size of either run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from comalite.atomic import atomic_write, atomic_write_text
from comalite.records import META_TASKS, DatasetInfo, EmbedInput, EvalDataset

log = logging.getLogger(__name__)

TIE_TOL = 1e-6
"""Cosine scores closer than this count as a tie (float32 rounding, not a real preference)."""

NORM_TOL = 1e-3
"""How far from 1 an embedding's L2 norm may be before the embedder is rejected as not normalised."""

CHANCE_Z = 3.0
"""A score within this many binomial standard deviations above chance counts as 'at chance'."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that embeds ``EmbedInput``s; ``name`` identifies the model in caches and reports."""

    name: str

    def embed(self, inputs: list[EmbedInput]) -> np.ndarray:
        """Embeddings of ``inputs`` as a float32 ``(len(inputs), D)`` array with L2-normalised rows."""
        ...


# ----------------------------------------------------------------------------------------------------
# One dataset


def evaluate_dataset(
    embedder: Embedder,
    dataset: EvalDataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Precision@1 of ``embedder`` on ``dataset``; scores are fractions in [0, 1].

    Returns a dict with ``dataset``, ``model``, ``precision_at_1``, ``chance`` (mean over queries of
    1 / number of candidates), ``chance_std`` (the standard deviation of a uniform guesser's score),
    ``n_queries``, ``candidates`` (min/mean/max per query), ``n_distinct_queries``,
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
    cache = _cache_folder(cache_dir, embedder.name, dataset.name, inputs)
    embeddings, n_encoded = _encode(embedder, inputs, cache, batch_size, progress, desc=dataset.name)
    credit, ranks = score_queries(embeddings, query_rows, candidate_rows)
    counts = np.array([len(rows) for rows in candidate_rows])
    return {
        "dataset": dataset.name,
        "model": embedder.name,
        "precision_at_1": float(credit.mean()),
        "chance": float(np.mean(1.0 / counts)),
        "chance_std": float(np.sqrt(np.sum((1.0 / counts) * (1.0 - 1.0 / counts))) / len(counts)),
        "n_queries": len(query_rows),
        "candidates": {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())},
        "n_distinct_queries": len(set(query_rows.tolist())),
        "n_distinct_candidates": len(set(np.concatenate(candidate_rows).tolist())),
        "n_encoded": n_encoded,
        "seconds": time.perf_counter() - start,
        "ranks": ranks.tolist(),
    }


def _distinct_inputs(dataset: EvalDataset) -> tuple[list[EmbedInput], np.ndarray, list[np.ndarray]]:
    """Distinct inputs (first-seen order), each query's row in them and each query's candidate rows.

    Queries and candidates share one pool: the embedder sees no role, so an input equal to another
    yields the same embedding whichever side it is on.
    """
    rows: dict[tuple[str, str], int] = {}
    inputs: list[EmbedInput] = []

    def row(item: EmbedInput) -> int:
        key = item.key()
        if key not in rows:
            rows[key] = len(inputs)
            inputs.append(item)
        return rows[key]

    query_rows = []
    candidate_rows = []
    for i, q in enumerate(dataset.queries):
        if not q.candidates:
            raise ValueError(f"{dataset.name}: query {i} has no candidates")
        query_rows.append(row(q.query))
    for q in dataset.queries:  # candidates after all queries: keeps query rows contiguous in the cache
        candidate_rows.append(np.array([row(c) for c in q.candidates], dtype=np.int64))
    return inputs, np.array(query_rows, dtype=np.int64), candidate_rows


def _candidate_scores(
    embeddings: np.ndarray, query_rows: np.ndarray, candidate_rows: Sequence[np.ndarray], block: int = 256
) -> Iterator[np.ndarray]:
    """Each query's cosine scores against its own candidates, in candidate order.

    One matrix product per block of queries against the distinct candidates of that block, then a
    gather: a gather plus a matrix-vector product per query is memory-bound and about 10x slower on an
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


# ----------------------------------------------------------------------------------------------------
# Encoding with a resumable on-disk cache


def _slug(text: str) -> str:
    """A short file-system-safe name that stays unique: readable tail + hash of the full text."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-48:]
    return f"{readable}-{digest}" if readable else digest


def _cache_folder(cache_dir: str | Path | None, model: str, dataset: str, inputs: list[EmbedInput]) -> Path | None:
    """``cache_dir/<model>/<dataset>-<fingerprint of the inputs>``, or None when caching is off."""
    if cache_dir is None:
        return None
    keys = json.dumps([item.key() for item in inputs], ensure_ascii=False)
    fingerprint = hashlib.sha256(keys.encode()).hexdigest()[:16]
    return Path(cache_dir) / _slug(model) / f"{_slug(dataset)}-{fingerprint}"


_CHUNK = re.compile(r"rows_(\d+)-(\d+)\.npy")


def _load_chunks(folder: Path, n: int) -> dict[int, np.ndarray]:
    """The cached chunks in ``folder`` by start row; unreadable or inconsistent files are ignored."""
    chunks = {}
    for path in sorted(folder.glob("rows_*.npy")):
        match = _CHUNK.fullmatch(path.name)
        if not match:
            continue
        lo, hi = int(match[1]), int(match[2])
        try:
            array = np.load(path)
        except (OSError, ValueError) as err:  # atomic writes make this rare; re-encode rather than fail
            log.warning("ignoring unreadable cache file %s: %s", path, err)
            continue
        if 0 <= lo < hi <= n and array.shape[0] == hi - lo:
            chunks[lo] = array
    return chunks


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save on a path would append ".npy" to the temp name
        np.save(fh, array)


def _missing_batches(done: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``batch_size`` rows covering every row not yet ``done``."""
    batches = []
    i, n = 0, len(done)
    while i < n:
        if done[i]:
            i += 1
            continue
        j = i
        while j < n and not done[j] and j - i < batch_size:
            j += 1
        batches.append((i, j))
        i = j
    return batches


def _checked(embedder: Embedder, batch: list[EmbedInput]) -> np.ndarray:
    """``embedder.embed(batch)`` as float32, after checking its shape and that rows are unit vectors."""
    out = np.asarray(embedder.embed(batch), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise ValueError(f"{embedder.name}: embed() returned shape {out.shape} for {len(batch)} inputs")
    norms = np.linalg.norm(out, axis=1)
    if not np.all(np.abs(norms - 1.0) <= NORM_TOL):
        raise ValueError(
            f"{embedder.name}: embed() must return L2-normalised rows (cosine = dot product); "
            f"got norms from {norms.min():.4g} to {norms.max():.4g}"
        )
    return out


def _encode(
    embedder: Embedder, inputs: list[EmbedInput], cache: Path | None, batch_size: int, progress: bool, desc: str
) -> tuple[np.ndarray, int]:
    """Embeddings of all ``inputs`` (cached rows loaded, the rest encoded and cached) and how many were encoded."""
    chunks = _load_chunks(cache, len(inputs)) if cache is not None and cache.is_dir() else {}
    done = np.zeros(len(inputs), dtype=bool)
    for lo, array in chunks.items():
        done[lo : lo + len(array)] = True
    todo = _missing_batches(done, batch_size)
    if progress and todo:
        from tqdm.auto import tqdm  # deferred: only needed when a bar is shown

        todo = tqdm(todo, desc=f"{embedder.name} / {desc}", unit="batch")
    n_encoded = 0
    for lo, hi in todo:
        array = _checked(embedder, inputs[lo:hi])
        if cache is not None:
            atomic_write(cache / f"rows_{lo:07d}-{hi:07d}.npy", lambda tmp: _save_npy(tmp, array))
        chunks[lo] = array
        done[lo:hi] = True
        n_encoded += hi - lo
    # Overlapping cached chunks (from runs with other batch sizes) hold the same rows: any copy will do.
    dims = {array.shape[1] for array in chunks.values()}
    if len(dims) != 1:
        raise ValueError(f"{embedder.name}: inconsistent embedding sizes {sorted(dims)} (stale cache at {cache}?)")
    embeddings = np.empty((len(inputs), dims.pop()), dtype=np.float32)
    for lo, array in sorted(chunks.items()):
        embeddings[lo : lo + len(array)] = array
    return embeddings, n_encoded


# ----------------------------------------------------------------------------------------------------
# Several models, several datasets


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
    ``mmeb_data.read_eval_dataset(..., limit=, seed=)``), so that the report says so.

    Returns ``{"models", "datasets", "sampling", "scores", "aggregates", "chance_aggregates", "details"}``:
    ``datasets`` lists per dataset its info and sizes, ``scores[model][dataset]`` is Precision@1,
    ``aggregates[model]`` has one entry per meta-task present plus ``IND``/``OOD`` (when present) and
    ``overall``, all unweighted means over datasets; ``details[model][dataset]`` is
    ``evaluate_dataset``'s dict.
    """
    models = [embedders] if isinstance(embedders, Embedder) else list(embedders)
    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"need one or more embedders with distinct names, got {names}")
    _check_pairs(datasets)
    details: dict[str, dict[str, dict]] = {}
    for model in models:
        details[model.name] = {
            info.name: evaluate_dataset(model, data, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
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
        }
        for info, _ in datasets
    ]
    scores = {m: {d: r["precision_at_1"] for d, r in per.items()} for m, per in details.items()}
    chance = {row["name"]: row["chance"] for row in table}
    results = {
        "models": names,
        "datasets": table,
        "sampling": {"limit": limit, "seed": seed},
        "scores": scores,
        "aggregates": {m: aggregate(scores[m], [info for info, _ in datasets]) for m in names},
        "chance_aggregates": aggregate(chance, [info for info, _ in datasets]),
        "details": details,
    }
    if out_dir is not None:
        save_results(results, out_dir)
    return results


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


def _warn_if_at_chance(model: str, results: Sequence[dict]) -> None:
    """Warn (and log) when a model is at chance on every dataset: almost always an input-format bug."""
    if all(at_chance(r) for r in results):
        n = sum(r["n_queries"] for r in results)
        message = (
            f"{model} scores within noise of chance on every dataset ({len(results)} datasets, {n} queries). "
            "That usually means an input-format problem (the <|image_1|> placeholder not becoming the image, "
            "an instruction or whitespace mismatch, collapsed embeddings), not a bad model; on very few "
            "queries it can also mean the sample is too small to tell."
        )
        log.warning(message)
        warnings.warn(message, stacklevel=3)


# ----------------------------------------------------------------------------------------------------
# Reports


def save_results(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (``format_table``) into ``out_dir``, each atomically."""
    out = Path(out_dir)
    json_path, md_path = out / "results.json", out / "results.md"
    text = json.dumps(results, indent=1)
    atomic_write_text(json_path, text)
    table = format_table(results)
    atomic_write_text(md_path, table)
    return json_path, md_path


def _describe_datasets(rows: list[dict]) -> str:
    """One sentence saying which datasets the table covers (of MMEB's 36, ShapesWorld, others)."""
    from comalite.mmeb import MMEB_V1_NAMES  # deferred: the registry is only needed for reports

    parts = []
    mmeb = [r["name"] for r in rows if r["source"] == "mmeb"]
    if mmeb:
        missing = [n for n in MMEB_V1_NAMES if n not in mmeb]
        text = f"{len(mmeb)} of the 36 MMEB-V1 datasets"
        if missing:
            text += f" (missing: {', '.join(missing)}; aggregates are not comparable to published ones)"
        parts.append(text)
    for source in sorted({r["source"] for r in rows} - {"mmeb"}):
        label = "ShapesWorld" if source == "shapesworld" else source
        parts.append(f"{sum(r['source'] == source for r in rows)} {label} datasets")
    return "Datasets: " + "; ".join(parts) + "."


def format_table(results: dict) -> str:
    """``results`` (from ``evaluate``) as a markdown report: one row per dataset, grouped by meta-task,
    then the aggregate rows; columns: meta-task, split, queries, candidates, chance, then one per model."""
    models = results["models"]
    rows = results["datasets"]
    sampling = results["sampling"]
    if sampling.get("limit") is not None:  # a seed alone samples nothing: the reader keeps every row
        sampled = f"Queries sampled per dataset: up to {sampling['limit']}, seed {sampling['seed']}."
    else:
        sampled = "All queries of each dataset (no sampling)."
    lines = [
        "# Evaluation results: Precision@1 (%)",
        "",
        _describe_datasets(rows) + " " + sampled,
        "Aggregates are unweighted means over datasets. A tie for the top score earns 1/(tied candidates).",
        "",
        "| dataset | meta-task | split | queries | candidates (min/mean/max) | chance | " + " | ".join(models) + " |",
        "|---|---|---|---:|---|---:|" + "---:|" * len(models),
    ]
    labels = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval",
              "grounding": "Grounding", "overall": "Overall"}

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    for task in META_TASKS:
        for row in (r for r in rows if r["meta_task"] == task):
            c = row["candidates"]
            cells = [pct(results["scores"][m][row["name"]]) for m in models]
            lines.append(
                f"| {row['name']} | {labels[task]} | {row['split']} | {row['n_queries']} | "
                f"{c['min']}/{c['mean']:.0f}/{c['max']} | {pct(row['chance'])} | " + " | ".join(cells) + " |"
            )
    counts = {g: 0 for g in results["chance_aggregates"]}
    for row in rows:
        for group in (row["meta_task"], row["split"], "overall"):
            counts[group] += 1
    for group, chance in results["chance_aggregates"].items():
        cells = [pct(results["aggregates"][m][group]) for m in models]
        lines.append(
            f"| **{labels.get(group, group)}** (mean of {counts[group]}) | | | | | {pct(chance)} | "
            + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
