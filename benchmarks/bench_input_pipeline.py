"""Benchmark the input pipeline at the real image path: images/s against ``data.workers``, and the data wait.

    python benchmarks/bench_input_pipeline.py                          # 96 images, workers 0,1,2, 5 ms a step image
    python benchmarks/bench_input_pipeline.py --images 512 --workers 0,1,2,4,8,15 --compute-ms 10   # a GPU machine

Real-size images (``--size``, default 640x480 JPEGs of noise, quality 90, written to a temporary folder) go
through what training and evaluation run: ``comalite.prefetch.ImagePrefetcher`` (``load_image`` + the Qwen2-VL
image processor at the ``qwen2-vl-2b`` preset's pixel budget, built offline; the tokenizer is the shipped tiny
VLM's, which only the prefetcher's type needs) with 0 (serial, in the main thread), 1, 2, ... worker threads.

- **images/s**: every image taken in order, as fast as the workers prepare them.
- **data wait**: a simulated training step that takes a chunk's images (``--chunk``, 8 as in stage 2), then
  computes for ``--compute-ms`` per image with the GIL released (``time.sleep``, as a process waiting on its GPU
  does); the fraction of the wall time spent waiting in ``take`` is the step's data wait.

The arithmetic for stage 2 at the 2B preset (batch 1,024 pairs, chunks of 8, no vision cache): GradCache
encodes every image twice (its two passes), so a step with image queries prepares at least 2,048 images. At the
~25 ms an image measured here in one thread (391 LLM tokens; ``benchmarks/README.md``) that is ~51 s a step of
preparation in turn. 8 workers on a 16-core GPU machine, if threads scale as this 2-core machine measured them
(41.9 -> 19.5 ms an image from 1 to 2 threads, when it had its cores to itself: decoding and resizing release the
GIL), prepare ~8 / 25 ms = ~320 images/s, ~6.4 s a step. The step's GPU work is larger: 1,024 queries of
~1,050 tokens (up to 1,024 image tokens at the preset's budget) through the 1.5B-parameter LLM are
2 x 1.5e9 x 1.1e6 = ~3.3 PFLOP a forward; GradCache's no-grad pass, the forward with grad, its checkpointing
recompute and the backward (~2 forwards) make ~5 forwards, ~17 PFLOP: ~40 s at 40 % of an H100's 989 TFLOP/s.
So 8 workers keep up with room to spare (6.4 s < 40 s: the data wait goes to ~0 once preparation overlaps the
step); at 256 image tokens (``model.max_pixels=200704``) the GPU work is ~4x smaller, ~10 s, and still above
6.4 s. ``--compute-ms 20`` simulates the first case (40 s / 2,048 images), ``--compute-ms 5`` the second.
``benchmarks/gpu_check.sh`` runs this on a GPU machine's 16 cores, which measures whether threads scale to 8.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from comalite.atomic import atomic_write_json
from comalite.config import load_config
from comalite.data.images import load_image
from comalite.prefetch import ImagePrefetcher, available_cores

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "input_pipeline.json"
TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tiny-vlm"


def real_processor(tokenizer: Path):
    """A ``VLProcessor`` with the 2B preset's image processor (its pixel budget) and the tiny VLM's tokenizer."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.processor import VLProcessor

    model = load_config("qwen2-vl-2b").model
    images = Qwen2VLImageProcessorPil(min_pixels=model.min_pixels, max_pixels=model.max_pixels)
    return VLProcessor(AutoTokenizer.from_pretrained(str(tokenizer)), images)


def write_images(folder: str, n: int, width: int, height: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(os.path.join(folder, f"{i}.jpg"))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


def measure(processor, paths: list[str], workers: int, chunk: int, compute_s: float) -> dict:
    """Images/s taking every image in turn, and the data wait of a simulated step, with ``workers`` threads."""
    images = ImagePrefetcher(processor, workers)
    plan = [(p, "") for p in paths]
    images.follow(plan)
    start = time.perf_counter()
    for path in paths:
        images.take(path) or processor.encode_image(load_image(path))
    throughput = len(paths) / (time.perf_counter() - start)
    images.follow(plan)
    waited, start = 0.0, time.perf_counter()
    for i in range(0, len(paths), chunk):
        t = time.perf_counter()
        for path in paths[i:i + chunk]:
            images.take(path) or processor.encode_image(load_image(path))
        waited += time.perf_counter() - t
        time.sleep(compute_s * len(paths[i:i + chunk]))
    wall = time.perf_counter() - start
    return {"workers": workers, "images_per_s": throughput, "ms_per_image": 1000 / throughput,
            "wait_fraction": waited / wall, "step_wall_s": wall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images per measurement")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (0 = serial)")
    parser.add_argument("--size", default="640x480", help="image width x height")
    parser.add_argument("--chunk", type=int, default=8, help="images per simulated chunk (stage 2's chunk_size)")
    parser.add_argument("--compute-ms", type=float, default=5.0, help="simulated compute per image, GIL released")
    parser.add_argument("--tokenizer", default=str(TOKENIZER), help="a folder with a Qwen2-VL tokenizer")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the numbers")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    processor = real_processor(Path(args.tokenizer))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(folder, args.images, width, height)
        tokens = processor.n_image_tokens(processor.encode_image(load_image(paths[0]))[1])
        measure(processor, paths[:min(8, len(paths))], 0, args.chunk, 0.0)  # warm-up: imports, first allocations
        rows = [measure(processor, paths, w, args.chunk, args.compute_ms / 1000) for w in workers]
    serial = next((r["images_per_s"] for r in rows if r["workers"] == 0), rows[0]["images_per_s"])
    for row in rows:
        row["speedup"] = row["images_per_s"] / serial
    report = {"images": args.images, "size": args.size, "llm_tokens_per_image": tokens,
              "max_pixels": load_config("qwen2-vl-2b").model.max_pixels, "chunk": args.chunk,
              "compute_ms_per_image": args.compute_ms, "cores": available_cores(),
              "loadavg_1min_before_after": [load_before, os.getloadavg()[0]], "rows": rows}
    atomic_write_json(report, args.out)
    print(f"{args.images} {args.size} JPEGs -> {tokens} LLM tokens each (2B preset's image processor), "
          f"{report['cores']} cores; simulated step: chunks of {args.chunk}, {args.compute_ms:g} ms an image")
    print(f"{'workers':>7s} {'images/s':>9s} {'ms/image':>9s} {'speedup':>8s} {'data wait':>10s}")
    for r in rows:
        print(f"{r['workers']:7d} {r['images_per_s']:9.1f} {r['ms_per_image']:9.1f} {r['speedup']:7.2f}x "
              f"{r['wait_fraction']:9.0%}")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
