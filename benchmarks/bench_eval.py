"""Benchmark the evaluator on an embedder: queries per second and inputs encoded per query.

    python benchmarks/bench_eval.py                          # hash embedder, synthetic MMEB-sized data
    python benchmarks/bench_eval.py --synthetic tiny         # the same, small (a smoke run)
    python benchmarks/bench_eval.py --model RESULT_DIR --preset tiny         # ShapesWorld eval sets
    python benchmarks/bench_eval.py --model RESULT_DIR --preset qwen2-vl-2b --set eval.max_queries=100

Without ``--model`` the embedder is a hash of each input (no model cost), so the numbers measure the
harness itself: deduplication, scoring, bookkeeping. With ``--preset`` the datasets are the preset's
eval datasets (``comalite.datasets.eval_datasets``: ShapesWorld, built if missing, or a local MMEB
folder); without, they are synthetic, shaped like MMEB's (1000 queries; a shared label set, or 1000
candidates drawn from a pool five times larger).
Encoding runs uncached, so each number is a cold run. The numbers go to a JSON file and to stdout.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from comalite.atomic import atomic_write_json
from comalite.eval import Embedder, evaluate_dataset
from comalite.records import EmbedInput, EvalDataset, EvalQuery

SYNTHETIC = {"tiny": (50, 40), "mmeb": (1000, 1000)}
"""Synthetic workload sizes: (queries per dataset, candidates per query)."""


class HashEmbedder:
    """A model-free embedder: each input's vector is drawn from a generator seeded by a hash of its key."""

    def __init__(self, dim: int = 1536):  # 1536: Qwen2-VL-2B's hidden size
        self.dim = dim
        self.name = self.fingerprint = f"hash-d{dim}"  # its embeddings depend on nothing else

    def embed(self, inputs: list[EmbedInput]) -> np.ndarray:
        rows = []
        for item in inputs:
            seed = int.from_bytes(hashlib.sha256(repr(item.key()).encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32))
        out = np.stack(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def synthetic_datasets(n_queries: int, n_candidates: int, seed: int = 0) -> list[EvalDataset]:
    """Two MMEB-shaped workloads: classification (one label set shared by every query) and retrieval
    (each query draws its own candidates from a pool five times larger, so many are shared)."""
    rng = np.random.default_rng(seed)
    labels = tuple(EmbedInput(f"label {j}") for j in range(n_candidates))
    classification = [
        EvalQuery(EmbedInput("<|image_1|>\nRepresent the given image for classification", f"img{i}.jpg"),
                  labels[i % n_candidates:] + labels[: i % n_candidates])  # ground truth first
        for i in range(n_queries)
    ]
    pool = [EmbedInput("<|image_1|>\nRepresent the given image.", f"pool{j}.jpg") for j in range(5 * n_candidates)]
    retrieval = [
        EvalQuery(EmbedInput(f"Find me an everyday image that matches the given caption: caption {i}"),
                  tuple(pool[j] for j in rng.choice(len(pool), size=n_candidates, replace=False)))
        for i in range(n_queries)
    ]
    return [EvalDataset("synthetic-classification", classification), EvalDataset("synthetic-retrieval", retrieval)]


def run_benchmark(
    embedder: Embedder, datasets: list[EvalDataset], out_file: str | Path, *, batch_size: int = 32
) -> dict:
    """Evaluate ``embedder`` on each dataset without a cache; write and return the timings.

    Per dataset: ``queries_per_s``; ``candidates_per_query`` (as listed) against
    ``candidates_encoded_per_query`` (distinct candidates actually encoded, the saving of deduplication);
    ``inputs_per_s`` (distinct inputs encoded per second); ``precision_at_1`` as a sanity check.
    """
    rows = []
    for data in datasets:
        r = evaluate_dataset(embedder, data, batch_size=batch_size, progress=False)
        rows.append({
            "dataset": data.name,
            "n_queries": r["n_queries"],
            "seconds": r["seconds"],
            "queries_per_s": r["n_queries"] / r["seconds"],
            "candidates_per_query": r["candidates"]["mean"],
            "candidates_encoded_per_query": r["n_distinct_candidates"] / r["n_queries"],
            "inputs_per_s": r["n_encoded"] / r["seconds"],
            "precision_at_1": r["precision_at_1"],
        })
    seconds = sum(row["seconds"] for row in rows)
    queries = sum(row["n_queries"] for row in rows)
    report = {
        "model": embedder.name,
        "batch_size": batch_size,
        "datasets": rows,
        "total": {"n_queries": queries, "seconds": seconds, "queries_per_s": queries / seconds},
    }
    atomic_write_json(report, out_file)
    for row in rows:
        print(f"{row['dataset']:28s} {row['queries_per_s']:10.1f} queries/s  "
              f"{row['candidates_encoded_per_query']:8.2f} of {row['candidates_per_query']:.0f} candidates "
              f"encoded per query  P@1 {100 * row['precision_at_1']:.1f}")
    print(f"{'total':28s} {report['total']['queries_per_s']:10.1f} queries/s  ({queries} queries, {seconds:.2f} s)")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved EmbeddingModel result folder (default: the model-free hash embedder)")
    parser.add_argument("--preset", help="a config preset (e.g. tiny) whose eval datasets to read "
                                         "(default: synthetic MMEB-shaped data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one preset setting, e.g. eval.max_queries=100 (repeatable)")
    parser.add_argument("--synthetic", choices=sorted(SYNTHETIC), default="mmeb", help="synthetic data size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="runs/bench_eval.json", help="where to write the numbers")
    args = parser.parse_args(argv)

    if args.model:
        from comalite.embedding import EmbeddingModel  # deferred: torch and transformers load only when needed

        embedder = EmbeddingModel.load(args.model)
    else:
        embedder = HashEmbedder()
    if args.preset:
        from comalite.config import load_config
        from comalite.data.sources import eval_datasets

        datasets = eval_datasets(load_config(args.preset, args.overrides))
    else:
        datasets = synthetic_datasets(*SYNTHETIC[args.synthetic])
    return run_benchmark(embedder, datasets, args.out, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
