"""Time ``ImageIndex`` searches where the backend matters: exact (one matrix product) vs faiss HNSW.

    python benchmarks/bench_search.py --threads 1                     # 100,000 x 128 (both) and x 1536 (exact)
    python benchmarks/bench_search.py --n 2000 --dims 16 --faiss-dims 16 --queries 20   # a toy run

The vectors are synthetic, clustered like embeddings: unit vectors around ``--clusters`` random centres with
noise ``--spread`` (a hard case for a graph search: many near ties inside a cluster); the queries are drawn
the same way. Per (n, dim): exact search ms per query (median over ``--queries``) and, for ``--faiss-dims``,
the HNSW graph's build seconds, ms per query and recall of the exact top ``--k``. Writes JSON (default
``benchmarks/results/search.json``) and prints one line per size: the numbers behind
``comalite.search.FAISS_MIN_IMAGES``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from comalite.atomic import atomic_write_json
from comalite.search import ImageIndex


def clustered(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random unit centres, Gaussian noise of scale ``spread``."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / dim ** .5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_queries(index: ImageIndex, queries: np.ndarray, k: int) -> tuple[float, list[set[str]]]:
    """Median ms per query and each query's top-``k`` paths."""
    seconds, hits = [], []
    for q in queries:
        start = time.perf_counter()
        found = index.search(q, k=k)
        seconds.append(time.perf_counter() - start)
        hits.append({path for path, _ in found})
    return 1000 * float(np.median(seconds)), hits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="images in the index")
    parser.add_argument("--dims", default="128,1536", help="embedding sizes (tiny VLM 128, Qwen2-VL-2B 1536)")
    parser.add_argument("--faiss-dims", default="128", help="sizes also searched with faiss HNSW")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=1, help="faiss threads (numpy's follow OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "search.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    faiss_dims = {int(d) for d in args.faiss_dims.split(",") if d}
    rows = []
    for dim in (int(d) for d in args.dims.split(",") if d):
        vectors = clustered(args.n + args.queries, dim, args.clusters, args.spread, rng)
        rows_, queries = vectors[:args.n], vectors[args.n:]
        paths = [f"{i:07d}.png" for i in range(args.n)]
        exact = ImageIndex(paths, rows_, "bench", backend="exact")
        exact_ms, truth = time_queries(exact, queries, args.k)
        row = {"n": args.n, "dim": dim, "exact_ms_per_query": exact_ms}
        if dim in faiss_dims:
            import faiss  # the optional extra: pip install 'comalite[search]'

            faiss.omp_set_num_threads(args.threads)
            graph = ImageIndex(paths, rows_, "bench", backend="faiss")
            start = time.perf_counter()
            graph.search(queries[0], k=args.k)  # the first search builds the graph
            row["hnsw_build_seconds"] = time.perf_counter() - start
            row["hnsw_ms_per_query"], found = time_queries(graph, queries, args.k)
            row["hnsw_recall_at_k"] = float(np.mean([len(f & t) / args.k for f, t in zip(found, truth)]))
        rows.append(row)
        print(" ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in row.items()), flush=True)
    result = {"args": vars(args), "rows": rows}
    atomic_write_json(result, Path(args.out))
    return result


if __name__ == "__main__":
    main()
