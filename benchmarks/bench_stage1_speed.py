"""Benchmark stage-1 training speed and memory: seconds per optimizer step, 4-bit (nf4) base vs unquantised.

    python benchmarks/bench_stage1_speed.py                              # nf4 and none, 10 steps after 3 warm-up
    python benchmarks/bench_stage1_speed.py --steps 20 --warmup 5 --batch-size 8
    python benchmarks/bench_stage1_speed.py --checkpoint DIR --preset qwen2-vl-2b --device cuda

Each quantization runs in a fresh process (forked from a server that has only imported the libraries),
which loads the stage-1 backbone exactly as ``comalite.stage1.run_stage1`` does (``load_stage1_backbone``:
fresh LoRA ``stage1``, fresh compression rows, the preset's model settings with ``model.quantization``
set) and runs ``--warmup`` + ``--steps`` optimizer steps of stage 1 on the preset's training dialogues:
the batch of step ``s`` (``batch_indices``), ``dialogue_examples`` + ``collate``, ``lm_loss`` through the
compression mask, backward, gradient clipping and an AdamW step (as ``train_lm`` and ``Trainer`` do).

Reported per quantization: the median (and min/max) seconds per step over the measured steps, split into
data preparation (image loading, tokenising, collating) and compute (forward, backward, optimizer), tokens
per step, and the peak memory: peak RSS on CPU (``getrusage``), ``torch.cuda.max_memory_allocated`` on
CUDA, absolute and minus a baseline read after the model load. Plus the ratio nf4 / none.
The numbers go to a JSON file (default ``benchmarks/results/stage1_speed.json``) and to stdout.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from isolated import MEMORY_UNITS, add_model_args, ensure_checkpoint, rss_mb, run_isolated  # benchmarks/ is on sys.path

from comalite.atomic import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stage1_speed.json"
QUANTIZATIONS = ("nf4", "none")


def measure(spec: dict) -> dict:
    """One quantization, in this (fresh) process: load, ``warmup + steps`` timed stage-1 steps, peak memory."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from comalite.config import load_config
    from comalite.data.sources import stage1_dialogues
    from comalite.objective import lm_loss
    from comalite.sequence import collate
    from comalite.batching import batch_indices
    from comalite.sequence import dialogue_examples
    from comalite.stage1 import load_stage1_backbone
    from comalite.trainer import seed_everything

    backbone_set = [f"model.backbone={spec['checkpoint']}"] if spec["checkpoint"] else []
    cfg = load_config(spec["preset"], [*backbone_set, f"model.device={spec['device']}",
                                       f"model.quantization={spec['quantization']}", *spec["overrides"]])
    s1 = cfg.stage1
    batch_size = spec["batch_size"] or s1.train.batch_size
    dialogues = stage1_dialogues(cfg)
    train = dialogues[:-s1.heldout] if len(dialogues) > s1.heldout else dialogues
    backbone = load_stage1_backbone(cfg)
    cuda = backbone.device.type == "cuda"
    params = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=s1.train.lr, weight_decay=s1.train.weight_decay)
    pad_id = backbone.processor.tokenizer.pad_token_id
    seed_everything(s1.train.seed)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    base_rss = rss_mb()

    steps = []
    backbone.train()
    for step in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        idx = batch_indices(step, batch_size, len(train), s1.train.seed)
        batch = collate(dialogue_examples(backbone.processor, [train[i] for i in idx], s1), pad_id)
        ready = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = lm_loss(backbone, batch, compression_mask=s1.mask, supervise=s1.supervise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), s1.train.max_grad_norm)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        steps.append({"seconds": end - start, "data_seconds": ready - start, "compute_seconds": end - ready,
                      "loss": loss.item(), "tokens": int(batch["attention_mask"].sum()),
                      "padded_tokens": int(batch["input_ids"].numel()), "warmup": step < spec["warmup"]})
    peak_rss = rss_mb()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        base, peak = base_rss, peak_rss
    measured = [s for s in steps if not s["warmup"]] or steps
    seconds = [s["seconds"] for s in measured]
    summary = backbone.summary()
    return {
        "quantization": spec["quantization"], "device": str(backbone.device), "dtype": str(backbone.dtype),
        "batch_size": batch_size, "warmup_steps": spec["warmup"], "measured_steps": len(measured),
        "median_s_per_step": statistics.median(seconds), "min_s_per_step": min(seconds),
        "max_s_per_step": max(seconds),
        "median_data_s_per_step": statistics.median(s["data_seconds"] for s in measured),
        "median_compute_s_per_step": statistics.median(s["compute_seconds"] for s in measured),
        "tokens_per_step": statistics.mean(s["tokens"] for s in measured),
        "memory": "cuda_max_allocated" if cuda else "peak_rss",
        "baseline_mb": base, "peak_mb": peak, "delta_mb": peak - base,
        "baseline_rss_mb": base_rss, "peak_rss_mb": peak_rss,
        "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
        "backbone": cfg.model.backbone, "trainable_params": summary["trainable_params"],
        "linear4bit_modules": summary["linear4bit_modules"],
        "torch_threads": torch.get_num_threads(), "steps": steps,
    }


def run_benchmark(out_file: str | Path, *, quantizations=QUANTIZATIONS, steps: int = 10, warmup: int = 3,
                  batch_size: int | None = None, device: str = "auto", checkpoint: str | None = None,
                  preset: str = "tiny", overrides: list[str] = (), threads: int | None = None,
                  timeout: float | None = None) -> dict:
    ensure_checkpoint(preset, overrides, checkpoint)
    load_before = os.getloadavg()[0]
    rows = []
    for quantization in quantizations:
        spec = {"quantization": quantization, "steps": steps, "warmup": warmup, "batch_size": batch_size,
                "device": device, "checkpoint": checkpoint, "preset": preset, "overrides": list(overrides),
                "threads": threads}
        row = run_isolated(measure, spec, {"quantization": spec["quantization"]}, timeout)
        rows.append(row)
        if "error" in row:
            print(f"{quantization:5s} FAILED: {row['error']}", file=sys.stderr)
    ok = {r["quantization"]: r for r in rows if "error" not in r}
    ratio = None
    if "nf4" in ok and "none" in ok:
        ratio = {"s_per_step": ok["nf4"]["median_s_per_step"] / ok["none"]["median_s_per_step"],
                 "compute_s_per_step": ok["nf4"]["median_compute_s_per_step"] / ok["none"]["median_compute_s_per_step"],
                 "peak_mb": ok["nf4"]["peak_mb"] / ok["none"]["peak_mb"]}
    first = next(iter(ok.values()), {})
    report = {
        "device": first.get("device", device), "memory": first.get("memory"), "checkpoint": checkpoint,
        "preset": preset, "overrides": list(overrides), "steps": steps, "warmup": warmup,
        "batch_size": first.get("batch_size", batch_size), "torch_threads": first.get("torch_threads", threads),
        "cpu_count": os.cpu_count(), "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "rows": rows, "nf4_over_none": ratio,
    }
    atomic_write_json(report, out_file)

    unit = MEMORY_UNITS.get(report["memory"], report["memory"])
    print(f"stage 1, preset {preset}, batch {report['batch_size']}, device {report['device']}, "
          f"median of {steps} steps after {warmup} warm-up; memory = {unit}")
    print(f"{'quant':>5s} {'s/step':>8s} {'min':>7s} {'max':>7s} {'data s':>7s} {'compute':>8s} {'tokens':>7s} "
          f"{'peak MB':>8s} {'delta MB':>9s} {'4-bit':>6s}")
    for r in ok.values():
        print(f"{r['quantization']:>5s} {r['median_s_per_step']:8.3f} {r['min_s_per_step']:7.3f} "
              f"{r['max_s_per_step']:7.3f} {r['median_data_s_per_step']:7.3f} {r['median_compute_s_per_step']:8.3f} "
              f"{r['tokens_per_step']:7.0f} {r['peak_mb']:8.1f} {r['delta_mb']:9.1f} {r['linear4bit_modules']:6d}")
    if ratio:
        print(f"nf4 / none: {ratio['s_per_step']:.2f}x time per step ({ratio['compute_s_per_step']:.2f}x compute), "
              f"{ratio['peak_mb']:.2f}x peak memory")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizations", default=",".join(QUANTIZATIONS), help="nf4, none or both")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps run first and not measured")
    parser.add_argument("--batch-size", type=int, help="dialogues per step (default: the preset's stage1.train)")
    add_model_args(parser)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per quantization")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the numbers")
    args = parser.parse_args(argv)
    quantizations = tuple(q for q in args.quantizations.split(",") if q)
    if unknown := set(quantizations) - set(QUANTIZATIONS):
        parser.error(f"unknown quantizations {sorted(unknown)}; choose from {', '.join(QUANTIZATIONS)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return run_benchmark(args.out, quantizations=quantizations, steps=args.steps, warmup=args.warmup,
                         batch_size=args.batch_size, device=args.device, checkpoint=args.checkpoint,
                         preset=args.preset, overrides=args.overrides, threads=args.threads,
                         timeout=args.timeout)


if __name__ == "__main__":
    report = main()
    sys.exit(1 if any("error" in r for r in report["rows"]) else 0)
