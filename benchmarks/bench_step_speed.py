"""Benchmark where a training step's time goes: seconds per stage-1 and stage-2 step, and the image path.

    python benchmarks/bench_step_speed.py                          # the tiny preset's speed-ups, one at a time
    python benchmarks/bench_step_speed.py --configs stage2,stage2-2threads --steps 5
    python benchmarks/bench_step_speed.py --images 64              # + real-size (640x480) images, 2B processor

Each configuration runs in a fresh process (``isolated.py``) and times ``--warmup`` + ``--steps`` optimizer
steps of the stage's own step function (``comalite.objective.lm_step``, ``comalite.stage2.contrastive_step``:
the code ``run_stage1`` / ``run_stage2`` run) followed by clipping and an AdamW update, as ``Trainer`` does.
The configurations switch the speed-ups off and on one at a time, from the settings the tiny preset had
before this benchmark was written (one thread, GradCache chunks of 16, no vision cache) to today's:

- ``vision_cache``: the frozen ViT's tokens kept per image (``model.vision_cache_mb``), so an image is
  decoded, processed and encoded once per run instead of in both GradCache passes of every epoch;
- ``chunk=batch``: one GradCache chunk holds the whole batch, so the step is the plain full-batch step;
- threads: one, or every core (when the run has the machine to itself).

Stage-1 and stage-2 steps visit fresh batches, so the vision cache only pays from the second epoch on: the
warm-up visits ``--warm-epochs`` epochs' worth of images first (0 = a cold cache, as in a first epoch).

``--images N`` also times the real-size image path: N 640x480 JPEGs decoded and turned into patches by the
Qwen2-VL image processor at the ``qwen2-vl-2b`` preset's pixel budget (256-1024 tokens now; the committed
``step_speed.json`` was measured under its earlier 448x448 -> 256-token cap), in the main
process and with a pool of worker threads. The numbers go to a JSON file (default
``benchmarks/results/step_speed.json``) and to stdout.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from isolated import add_model_args, ensure_checkpoint, run_isolated  # benchmarks/ is on sys.path

from comalite.atomic import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "step_speed.json"
STAGE1 = ()
STAGE2_BEFORE = ("stage2.chunk_size=16", "model.vision_cache_mb=0")
CONFIGS = {  # name -> (stage, threads (0 = every core), overrides)
    "stage1-before": ("stage1", 1, ("model.vision_cache_mb=0",)),
    "stage1": ("stage1", 1, STAGE1),
    "stage1-2threads": ("stage1", 0, STAGE1),
    "stage1-none": ("stage1", 1, ("model.quantization=none",)),
    "stage2-before": ("stage2", 1, STAGE2_BEFORE),
    "stage2-vision_cache": ("stage2", 1, ("stage2.chunk_size=16",)),
    "stage2": ("stage2", 1, ()),
    "stage2-2threads": ("stage2", 0, ()),
    "stage2-none": ("stage2", 1, ("model.quantization=none",)),
}


def measure(spec: dict) -> dict:
    """One configuration in this (fresh) process: load as the stage does, then time its steps."""
    import torch

    from comalite.config import load_config
    from comalite.data.sources import stage1_dialogues, train_pairs
    from comalite.objective import LMObjective, lm_step
    from comalite.stage1 import load_stage1_backbone
    from comalite.stage2 import contrastive_step, load_stage2_backbone, split_heldout

    cfg = load_config(spec["preset"], [*spec["overrides"], f"model.cpu_threads={spec['threads']}",
                                       "stage2.init=backbone", *spec["extra"]])
    if spec["stage"] == "stage1":
        s1 = cfg.stage1
        backbone = load_stage1_backbone(cfg)
        items = stage1_dialogues(cfg)[:-s1.heldout]
        train_cfg = s1.train
        step_fn = lm_step(backbone, items, train_cfg, LMObjective.for_stage1(s1))
    else:
        backbone = load_stage2_backbone(cfg)
        items = split_heldout(train_pairs(cfg))[0]
        train_cfg = cfg.stage2.train
        step_fn = contrastive_step(backbone, items, cfg)
    params = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=train_cfg.lr)
    per_epoch = max(1, len(items) // train_cfg.batch_size)
    warm = [*range(per_epoch * spec["warm_epochs"]), *range(spec["warmup"])]
    first = per_epoch * spec["warm_epochs"] + spec["warmup"]  # measured steps come after the warm-up ones
    seconds = []
    for k, step in enumerate([*warm, *range(first, first + spec["steps"])]):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_fn(step)
        torch.nn.utils.clip_grad_norm_(list(params.values()), train_cfg.max_grad_norm)
        optimizer.step()
        if k >= len(warm):
            seconds.append(time.perf_counter() - start)
    return {"config": spec["name"], "stage": spec["stage"], "overrides": list(spec["overrides"]),
            "batch_size": train_cfg.batch_size, "chunk_size": cfg.stage2.chunk_size,
            "vision_cache_mb": cfg.model.vision_cache_mb, "quantization": cfg.model.quantization,
            "torch_threads": torch.get_num_threads(), "warm_epochs": spec["warm_epochs"],
            "median_s_per_step": statistics.median(seconds), "min_s_per_step": min(seconds),
            "max_s_per_step": max(seconds), "measured_steps": len(seconds)}


def image_path(n: int, workers: int) -> dict:
    """Seconds per 640x480 JPEG through ``load_image`` and the Qwen2-VL image processor at the 2B preset's
    pixel budget, in this process and with ``workers`` threads."""
    import numpy as np
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.config import load_config
    from comalite.data.images import load_image

    model = load_config("qwen2-vl-2b").model
    processor = Qwen2VLImageProcessorPil(min_pixels=model.min_pixels, max_pixels=model.max_pixels)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(n):
            paths.append(os.path.join(folder, f"{i}.jpg"))
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(paths[-1], quality=90)

        def one(path):
            out = processor(images=[load_image(path)], return_tensors="pt")
            return int(out["image_grid_thw"][0].prod()) // processor.merge_size ** 2

        start = time.perf_counter()
        tokens = [one(p) for p in paths]
        serial = (time.perf_counter() - start) / n
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, paths))
        pooled = (time.perf_counter() - start) / n
    return {"images": n, "size": "640x480", "llm_tokens_per_image": tokens[0], "max_pixels": model.max_pixels,
            "s_per_image": serial, "s_per_image_threads": pooled, "threads": workers}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    parser.add_argument("--warm-epochs", type=int, default=1,
                        help="epochs of steps run first to fill the vision cache (0: a first epoch's cold cache)")
    parser.add_argument("--images", type=int, default=0, help="also time N real-size images (0: skip)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the numbers")
    add_model_args(parser)
    args = parser.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    if unknown := set(names) - set(CONFIGS):
        parser.error(f"unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    extra = [*([f"model.backbone={args.checkpoint}"] if args.checkpoint else []), f"model.device={args.device}"]
    ensure_checkpoint(args.preset, args.overrides, args.checkpoint)
    load_before = os.getloadavg()[0]
    rows = []
    for name in names:
        stage, threads, overrides = CONFIGS[name]
        spec = {"name": name, "stage": stage, "threads": args.threads or threads, "preset": args.preset,
                "overrides": [*overrides, *args.overrides], "extra": extra, "steps": args.steps,
                "warmup": args.warmup, "warm_epochs": args.warm_epochs}
        rows.append(run_isolated(measure, spec, {"config": name}, args.timeout))
        if "error" in rows[-1]:
            print(f"{name} FAILED: {rows[-1]['error']}", file=sys.stderr)
    report = {"preset": args.preset, "steps": args.steps, "warmup": args.warmup, "warm_epochs": args.warm_epochs,
              "cpu_count": os.cpu_count(), "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
              "rows": rows, "image_path": image_path(args.images, os.cpu_count() or 1) if args.images else None}
    atomic_write_json(report, args.out)
    print(f"preset {args.preset}: median s per optimizer step of {args.steps} after warm-up "
          f"({args.warm_epochs} epoch(s) + {args.warmup} steps)")
    print(f"{'config':22s} {'s/step':>7s} {'min':>6s} {'max':>6s} {'batch':>5s} {'chunk':>5s} {'cache':>5s} "
          f"{'quant':>5s} {'threads':>7s}")
    for r in rows:
        if "error" not in r:
            print(f"{r['config']:22s} {r['median_s_per_step']:7.3f} {r['min_s_per_step']:6.3f} {r['max_s_per_step']:6.3f} "
                  f"{r['batch_size']:5d} {r['chunk_size']:5d} {r['vision_cache_mb']:5d} {r['quantization']:>5s} "
                  f"{r['torch_threads']:7d}")
    if report["image_path"]:
        p = report["image_path"]
        print(f"{p['images']} x {p['size']} images -> {p['llm_tokens_per_image']} LLM tokens each: "
              f"{1000 * p['s_per_image']:.1f} ms per image in one thread, {1000 * p['s_per_image_threads']:.1f} ms "
              f"with {p['threads']} threads")
    return report


if __name__ == "__main__":
    main()
