"""Benchmark the memory of one contrastive step on the tiny model, with GradCache and with the full batch.

    python benchmarks/bench_gradcache_memory.py                         # batch 16, 64, 256; chunk 8
    python benchmarks/bench_gradcache_memory.py --sizes 16,64 --chunk 4
    python benchmarks/bench_gradcache_memory.py --device cuda           # torch.cuda.max_memory_allocated
    python benchmarks/bench_gradcache_memory.py --checkpoint DIR --set model.quantization=none

One stage-2 optimizer step's forward and backward (no optimizer update) on a batch of B ShapesWorld
training pairs (image queries, text targets: the classification-style subsets) through the stage-2
backbone (the tiny preset's model config, a fresh trainable LoRA and compression rows), InfoNCE loss:

- ``gradcache``: ``comalite.gradcache.gradcache_step`` with chunks of ``--chunk`` sequences;
- ``full``: ``comalite.gradcache.full_batch_step`` with a single chunk, i.e. the plain full batch.

Each (mode, B) runs in a fresh process, forked from a server process that has only imported the libraries
(multiprocessing "forkserver"), so peaks never carry over from one configuration to the next. On CPU the
peak is the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read at the end), reported as is
(``peak_mb``) and minus a baseline read after the model load, the data load and one no-grad encode of a
single pair (lazy initialisations; ``delta_mb``). On CUDA it is ``torch.cuda.max_memory_allocated`` and
the baseline ``torch.cuda.memory_allocated`` after the same warm-up.

The expectation (checked and reported, not asserted): GradCache's peak stays nearly flat as B grows,
the full batch's grows with B. The numbers go to a JSON file and to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from isolated import MEMORY_UNITS, add_model_args, ensure_checkpoint, rss_mb, run_isolated  # benchmarks/ is on sys.path

from comalite.atomic import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gradcache_memory.json"
MODES = ("gradcache", "full")
def select_pairs(pairs: list, size: int) -> tuple[list, bool]:
    """``size`` pairs whose query has an image and whose target is text only, from one subset when one
    has enough (like a training sub-batch); cycled if there are too few (then ``True`` is returned too)."""
    usable = [p for p in pairs if p.query.image and not p.positive.image]
    if not usable:
        raise ValueError("no training pair with an image query and a text target")
    by_subset: dict[str, list] = {}
    for p in usable:
        by_subset.setdefault(p.subset, []).append(p)
    for group in by_subset.values():
        if len(group) >= size:
            return group[:size], False
    return [usable[i % len(usable)] for i in range(size)], len(usable) < size


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(spec: dict) -> dict:
    """One configuration, in this (fresh) process: load, warm up, baseline, one step, peak."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from comalite.backbone import load_backbone
    from comalite.config import load_config
    from comalite.data.sources import train_pairs
    from comalite.embedding import encode
    from comalite.gradcache import full_batch_step, gradcache_step
    from comalite.loss import InfoNCELoss

    backbone_set = [f"model.backbone={spec['checkpoint']}"] if spec["checkpoint"] else []
    cfg = load_config(spec["preset"], [*backbone_set, f"model.device={spec['device']}",
                                       *spec["overrides"]])
    pairs, repeated = select_pairs(train_pairs(cfg), spec["size"])
    backbone = load_backbone(cfg.model, train_adapter="stage2", seed=spec["seed"])
    backbone.train()
    cuda = backbone.device.type == "cuda"
    loss_fn = InfoNCELoss(temperature=cfg.stage2.temperature)

    def enc(chunk):
        return encode(backbone, chunk, cfg.stage2.pooling)

    torch.manual_seed(spec["seed"])
    with torch.no_grad():  # lazy initialisations (kernels, thread pools), not part of a step's cost
        enc([pairs[0].query])
        enc([pairs[0].positive])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    base_rss = rss_mb()

    queries, targets = [p.query for p in pairs], [p.positive for p in pairs]
    if spec["mode"] == "gradcache":
        step, q_chunks, t_chunks = gradcache_step, _chunks(queries, spec["chunk"]), _chunks(targets, spec["chunk"])
    elif spec["mode"] == "full":
        step, q_chunks, t_chunks = full_batch_step, [queries], [targets]
    else:
        raise ValueError(f"mode must be one of {MODES}, not {spec['mode']!r}")
    start = time.perf_counter()
    loss = step(enc, q_chunks, t_chunks, loss_fn)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_rss = rss_mb()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        base, peak = base_rss, peak_rss
    grads = [p.grad for p in backbone.trainable_parameters().values() if p.grad is not None]
    return {
        "mode": spec["mode"], "batch_size": spec["size"],
        "chunk": spec["chunk"] if spec["mode"] == "gradcache" else spec["size"],
        "device": str(backbone.device), "memory": "cuda_max_allocated" if cuda else "peak_rss",
        "baseline_mb": base, "peak_mb": peak, "delta_mb": peak - base,
        "baseline_rss_mb": base_rss, "peak_rss_mb": peak_rss,
        "step_seconds": seconds, "loss": float(loss),
        "params_with_grad": len(grads), "grad_norm": float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0,
        "pairs_repeated": repeated, "subsets": sorted({p.subset for p in pairs}),
        "quantization": cfg.model.quantization, "backbone": cfg.model.backbone,
        "torch_threads": torch.get_num_threads(),
    }


def _growth(rows: list[dict], mode: str) -> dict | None:
    ok = sorted((r for r in rows if r["mode"] == mode and "error" not in r), key=lambda r: r["batch_size"])
    if len(ok) < 2:
        return None
    first, last = ok[0], ok[-1]
    return {"from_batch": first["batch_size"], "to_batch": last["batch_size"],
            "delta_mb_from": first["delta_mb"], "delta_mb_to": last["delta_mb"],
            "delta_growth_mb": last["delta_mb"] - first["delta_mb"],
            "peak_ratio": last["peak_mb"] / first["peak_mb"] if first["peak_mb"] else None}


def run_benchmark(sizes: list[int], chunk: int, out_file: str | Path, *, modes=MODES, device: str = "auto",
                  checkpoint: str | None = None, preset: str = "tiny", overrides: list[str] = (),
                  seed: int = 0, timeout: float | None = None,
                  threads: int | None = None) -> dict:
    rows = []
    ensure_checkpoint(preset, overrides, checkpoint)
    load_before = os.getloadavg()[0]
    for size in sizes:
        for mode in modes:
            spec = {"mode": mode, "size": size, "chunk": chunk, "device": device, "checkpoint": checkpoint,
                    "preset": preset, "overrides": list(overrides), "seed": seed,
                    "threads": threads}
            row = run_isolated(measure, spec, {"mode": spec["mode"], "batch_size": spec["size"]}, timeout)
            rows.append(row)
            if "error" in row:
                print(f"{mode:10s} B={size:4d}  FAILED: {row['error']}", file=sys.stderr)
    growth = {mode: _growth(rows, mode) for mode in modes}
    flat = None
    if growth.get("gradcache") and growth.get("full"):
        flat = growth["gradcache"]["delta_growth_mb"] < growth["full"]["delta_growth_mb"]
    ok = [r for r in rows if "error" not in r]
    report = {
        "device": ok[0]["device"] if ok else device, "memory": ok[0]["memory"] if ok else None,
        "chunk": chunk, "sizes": sizes, "modes": list(modes), "checkpoint": checkpoint, "preset": preset,
        "overrides": list(overrides), "cpu_count": os.cpu_count(),
        "torch_threads": ok[0]["torch_threads"] if ok else threads,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]], "rows": rows, "growth": growth,
        "gradcache_flatter_than_full": flat,
    }
    atomic_write_json(report, out_file)

    unit = MEMORY_UNITS.get(report["memory"], report["memory"])
    print(f"{unit} (MB) of one contrastive step, device {report['device']}, GradCache chunk {chunk}; "
          f"delta = peak - baseline after load")
    print(f"{'batch':>6s} {'mode':>10s} {'peak MB':>9s} {'delta MB':>9s} {'baseline':>9s} {'step s':>7s} {'loss':>7s}")
    for r in ok:
        print(f"{r['batch_size']:6d} {r['mode']:>10s} {r['peak_mb']:9.1f} {r['delta_mb']:9.1f} "
              f"{r['baseline_mb']:9.1f} {r['step_seconds']:7.2f} {r['loss']:7.3f}")
    for mode, g in growth.items():
        if g:
            print(f"{mode}: delta {g['delta_mb_from']:.0f} MB at B={g['from_batch']} -> {g['delta_mb_to']:.0f} MB "
                  f"at B={g['to_batch']} (+{g['delta_growth_mb']:.0f} MB)")
    if flat is not None:
        print("expectation (GradCache grows less than the full batch):", "holds" if flat else "DOES NOT HOLD")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256", help="contrastive batch sizes, comma-separated")
    parser.add_argument("--chunk", type=int, default=8, help="GradCache chunk size (sequences encoded at once)")
    parser.add_argument("--modes", default=",".join(MODES), help="gradcache, full or both")
    add_model_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the numbers")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = tuple(m for m in args.modes.split(",") if m)
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    return run_benchmark(sizes, args.chunk, args.out, modes=modes, device=args.device, checkpoint=args.checkpoint,
                         preset=args.preset, overrides=args.overrides, seed=args.seed,
                         timeout=args.timeout, threads=args.threads)


if __name__ == "__main__":
    report = main()
    sys.exit(1 if any("error" in r for r in report["rows"]) else 0)
