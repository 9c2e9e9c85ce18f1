"""Benchmark the real recipe at full size: stage-1 and stage-2 steps of Qwen2-VL-2B, nf4 vs bf16, with MFU.

    python benchmarks/bench_real_recipe.py --device cuda                 # the preset's sizes, 1 warm-up + 2 steps
    python benchmarks/bench_real_recipe.py --device cuda --stage2-batch 256 --steps 1
    python benchmarks/bench_real_recipe.py --device cpu --threads 1 --steps 1 --warmup 0 --stage2-batch 16 \\
        --chunk 8 --micro-batch 2 --image-size 56 --dialogue-tokens 24 --target-tokens 8 --set model.n_compress=4

The model is Qwen2-VL-2B-Instruct's architecture built from its public config with random weights
(``full_size.build_checkpoint``, into a temporary folder removed at the end; ``--checkpoint DIR`` uses a
folder instead, e.g. the real checkpoint), loaded by ``comalite.backbone.load_backbone`` from the preset's
model settings (``qwen2-vl-2b``: nf4 double quant with the ViT and ``lm_head`` unquantised, LoRA r16 on
q/k/v/o, K=16 compression tokens, gradient checkpointing, sdpa) with ``model.quantization`` set to ``nf4``
or ``none`` (the unquantised base, bf16 on a GPU). Each (stage, quantization) runs in a fresh process
(``isolated.run_isolated``), so memory peaks never mix; the checkpoint is built in one too.

- stage 1: one micro-batch of the preset (``stage1.train.batch_size / grad_accum`` = 256 / 32 = 8, or
  ``--micro-batch``) of synthetic dialogues: a random ``--image-size`` image (default: the side of
  ``model.max_pixels``: 896 -> 1024 image tokens for the preset; 448 -> 256 tokens with ``--image-size 448``), the stage-1 prompt, the K compression tokens, and QA turns
  until the QA part holds ``--dialogue-tokens`` tokens (default 150). ``dialogue_example`` + ``collate``,
  ``lm_loss`` with the preset's compression mask and supervision, backward. Per optimizer step:
  ``grad_accum`` micro-batches (``ceil(batch_size / micro-batch)``) plus one optimizer update.
- stage 2: one GradCache step (``gradcache_step`` with ``encode`` and ``InfoNCELoss``) on a batch of
  ``--stage2-batch`` pairs (default the preset's 1024) in chunks of ``--chunk`` (default 8): image queries
  ("<|image_1|> Represent the given image for classification." with the same-size random images) and text
  targets of ``--target-tokens`` tokens (default 32), each ending with the K compression tokens. A fresh
  ``stage2`` LoRA (the frozen stage-1 adapter the recipe stacks under it is left out: r16 on q/k/v/o costs
  under 0.3% of a layer's FLOPs).

Every step is followed by gradient clipping and an AdamW update (timed apart). ``--warmup`` steps (default
1) run first and are not reported; the median of ``--steps`` (default 2 on CUDA, 1 on CPU) is.

Reported per configuration: seconds per step and per optimizer step, tokens per second (real, unpadded LLM
tokens, image tokens included, counted once even though GradCache encodes twice), peak memory (CUDA:
``torch.cuda.max_memory_allocated``, absolute and minus ``memory_allocated`` after the load; CPU: peak RSS,
``isolated.rss_mb``, absolute and minus the RSS after the load), model and hardware FLOPs, MFU and HFU.

FLOPs (matmuls only; N_x = the sum of in*out over the Linear layers of part x, read off the loaded model:
N_lm = the language model's 28 layers, N_lora = the trainable LoRA, N_vit = the ViT's blocks and patch
embedding, N_merge = its merger, V*h = lm_head; T_b = the real tokens of sequence b, T = sum T_b,
P_i = the 14x14 patches of image i, P = sum P_i, S = the tokens fed to lm_head; L, d = the LLM's layers and
attention width, Lv, dv = the ViT's):

    ViT forward (frozen; no backward through it)   F_vit = 2 N_vit P + 2 N_merge P/4 + 4 Lv dv sum P_i^2
    LLM forward                                    F_fwd = 2 (N_lm + N_lora) T + 4 L d sum T_b^2
    LLM backward (activation gradients, plus the LoRA weight gradients; the frozen base computes none)
                                                   F_bwd = 2 (N_lm + N_lora) T + 2 N_lora T + 8 L d sum T_b^2
    lm_head (stage 1, supervised positions only)   F_head = 2 V h S forward + 2 V h S backward

    model FLOPs    = F_vit + F_fwd + F_bwd (+ F_head)          (the work the step needs; no recompute)
    hardware FLOPs = model FLOPs + F_fwd (gradient-checkpointing recompute)
                     + F_vit + F_fwd (stage 2 only: GradCache's first, no-grad pass)
    MFU = model FLOPs per optimizer step / seconds per optimizer step / peak; HFU the same with hardware FLOPs

This is not the dense-training 6*N*tokens: the frozen weights get no weight gradients (that would add another
2 N_lm T), and the ViT runs forward only. Attention counts the full T_b x T_b square (the explicit 4D mask
makes sdpa compute all of it). The peak is ``--peak-tflops``, else the device's bf16 dense tensor peak if known
(H100/H200 SXM 989, H100/H200 NVL 835, H100 PCIe 756, A100 312 TFLOP/s), else n/a (always n/a on CPU).
The numbers go to stdout and to a JSON file (default ``benchmarks/results/real_recipe_<device>.json``).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

from full_size import CAPTIONS, QA, QUERY, build_checkpoint, random_image, scratch  # benchmarks/ is on sys.path
from isolated import MEMORY_UNITS, add_model_args, rss_mb, run_isolated

from comalite.atomic import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
QUANTIZATIONS = ("nf4", "none")
STAGES = (1, 2)
N_IMAGES = 8  # distinct random images, cycled over the sequences
PEAK_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
               ("A100", 312.0))  # bf16 dense tensor-core peaks (NVIDIA datasheets: half the sparse figure)


def device_peak_tflops(name: str) -> float | None:
    """The bf16 dense peak of a GPU named ``name`` (``torch.cuda.get_device_name``), None if unknown."""
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def build(spec: dict) -> dict:
    """Write the random 2B checkpoint into ``spec["folder"]`` (in its own process: ~5 GB peak RSS)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    counts = build_checkpoint(spec["folder"])
    return {"stage": "build", **counts, "seconds": time.perf_counter() - start, "peak_rss_mb": rss_mb()}


class PeakMemory:
    """The peak memory from its creation on: ``torch.cuda.max_memory_allocated`` (baseline: ``memory_allocated``
    now) on CUDA, the process's peak RSS (baseline: the RSS now) on CPU; ``read()`` gives both, in MB."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda, self.base_rss = cuda, rss_mb()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20

    def read(self) -> dict:
        import torch

        peak_rss = rss_mb()
        base, peak = (self.base, torch.cuda.max_memory_allocated() / 2**20) if self.cuda else (self.base_rss, peak_rss)
        return {"memory": "cuda_max_allocated" if self.cuda else "peak_rss", "baseline_mb": base, "peak_mb": peak,
                "delta_mb": peak - base, "baseline_rss_mb": self.base_rss, "peak_rss_mb": peak_rss}


def matmul_sizes(hf) -> dict[str, int]:
    """Sum of in*out over the Linear (and Conv3d patch-embedding) layers, by part of the model."""
    import torch

    sizes = dict.fromkeys(("vision", "merger", "language", "lora", "lm_head"), 0)
    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear):
            n = module.in_features * module.out_features  # bitsandbytes' Linear4bit keeps the logical shape
        elif isinstance(module, torch.nn.Conv3d):
            n = module.weight.numel()
        else:
            continue
        part = ("lora" if "lora_" in name else "lm_head" if name.endswith("lm_head") else
                "merger" if "visual.merger" in name else "vision" if "visual" in name else "language")
        sizes[part] += n
    return sizes


def step_flops(sizes: dict, dims: dict, seqs: list[int], patches: list[int], supervised: int, *, stage: int,
               checkpointing: bool) -> dict[str, float]:
    """Model and hardware FLOPs of one step (module docstring); ``seqs`` = real tokens per sequence,
    ``patches`` = 14x14 patches per image, ``supervised`` = positions fed to ``lm_head``."""
    tokens, patch_total = sum(seqs), sum(patches)
    llm = sizes["language"] + sizes["lora"]
    attention = dims["layers"] * dims["width"] * sum(t * t for t in seqs)
    vit = (2 * sizes["vision"] * patch_total + 2 * sizes["merger"] * patch_total / dims["merge"] ** 2
           + 4 * dims["vision_layers"] * dims["vision_width"] * sum(p * p for p in patches))
    forward = 2 * llm * tokens + 4 * attention
    backward = 2 * llm * tokens + 2 * sizes["lora"] * tokens + 8 * attention
    model = vit + forward + backward + 4 * sizes["lm_head"] * supervised
    hardware = model + (forward if checkpointing else 0) + (vit + forward if stage == 2 else 0)
    return {"vit": vit, "forward": forward, "backward": backward, "model": model, "hardware": hardware}


def _dims(hf) -> dict[str, int]:
    text, vision = hf.config.text_config, hf.config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {"layers": text.num_hidden_layers, "width": text.num_attention_heads * head_dim,
            "vision_layers": vision.depth, "vision_width": getattr(vision, "embed_dim", vision.hidden_size),
            "merge": vision.spatial_merge_size}


def _repeat_until(n_tokens: int, count, pieces: list) -> list:
    """The shortest cycle of ``pieces`` (at least one) whose ``count(...)`` reaches ``n_tokens``."""
    chosen = [pieces[0]]
    while count(chosen) < n_tokens:
        chosen.append(pieces[len(chosen) % len(pieces)])
    return chosen


def _stage1(backbone, cfg, spec: dict):
    """Stage 1: ``(step, sequences)``; ``step()`` runs one micro-batch's forward and backward."""
    from comalite.objective import lm_loss
    from comalite.records import Dialogue, Turn
    from comalite.sequence import collate, dialogue_example

    s1, processor = cfg.stage1, backbone.processor
    last_compress = backbone.compression.token_ids[-1]

    def example(dialogue):
        return dialogue_example(processor, dialogue, prompt=s1.prompt, text_prompt=s1.text_prompt,
                                multi_turn=s1.multi_turn)

    def qa_tokens(turns):  # the tokens after the compression tokens (text-only stand-in: no image to process)
        ids = example(Dialogue(turns=tuple(turns), text="x")).input_ids
        return len(ids) - ids.index(last_compress) - 1

    dialogues = []
    for i in range(spec["micro_batch"]):
        pieces = [Turn(*QA[(i + j) % len(QA)]) for j in range(len(QA))]  # each dialogue starts elsewhere
        turns = _repeat_until(spec["dialogue_tokens"], qa_tokens, pieces)
        dialogues.append(Dialogue(turns=tuple(turns), image=spec["images"][i % N_IMAGES]))
    pad_id = processor.tokenizer.pad_token_id

    def step() -> dict:
        start = time.perf_counter()
        batch = collate([example(d) for d in dialogues], pad_id)
        ready = time.perf_counter()
        loss = lm_loss(backbone, batch, compression_mask=s1.mask, supervise=s1.supervise)
        loss.backward()
        return {"loss": loss.item(), "data_seconds": ready - start}

    batch = collate([example(d) for d in dialogues], pad_id)
    grids = batch.get("image_grid_thw")
    sequences = {"seqs": batch["attention_mask"].sum(1).tolist(), "padded_tokens": batch["input_ids"].numel(),
                 "patches": grids.prod(1).tolist() if grids is not None else []}
    return step, sequences


def _stage2(backbone, cfg, spec: dict):
    """Stage 2: ``(step, sequences)``; ``step()`` runs one GradCache step over the whole batch."""
    from comalite.embedding import encode
    from comalite.gradcache import gradcache_step
    from comalite.loss import InfoNCELoss
    from comalite.records import EmbedInput
    from comalite.sequence import embed_example

    s2, processor, size, chunk = cfg.stage2, backbone.processor, spec["stage2_batch"], spec["chunk"]
    words = " ".join(CAPTIONS).split()
    caption = " ".join(_repeat_until(spec["target_tokens"], lambda w: len(embed_example(
        processor, EmbedInput(text=" ".join(w)), with_compression=False).input_ids), words))
    queries = [EmbedInput(text=QUERY, image=spec["images"][i % N_IMAGES]) for i in range(size)]
    targets = [EmbedInput(text=caption) for _ in range(size)]
    q_chunks = [queries[i:i + chunk] for i in range(0, size, chunk)]
    t_chunks = [targets[i:i + chunk] for i in range(0, size, chunk)]
    loss_fn = InfoNCELoss(temperature=s2.temperature, symmetric=s2.symmetric)

    def step() -> dict:
        loss = gradcache_step(lambda c: encode(backbone, c, s2.pooling), q_chunks, t_chunks, loss_fn)
        return {"loss": float(loss)}

    start = time.perf_counter()  # the inputs once, as encode builds them: token counts and data-prep time
    sequences = {"seqs": [], "patches": [], "padded_tokens": 0}
    for c in (*q_chunks, *t_chunks):
        examples = [embed_example(processor, item) for item in c]
        sequences["seqs"] += [len(ex.input_ids) for ex in examples]
        sequences["patches"] += [int(ex.image_grid_thw.prod()) for ex in examples if ex.image_grid_thw is not None]
        sequences["padded_tokens"] += len(examples) * max(len(ex.input_ids) for ex in examples)
    sequences["data_seconds_per_pass"] = time.perf_counter() - start
    return step, sequences


def measure(spec: dict) -> dict:
    """One (stage, quantization), in this (fresh) process: load, warm-up and timed steps, memory, FLOPs."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from comalite.backbone import load_backbone
    from comalite.config import load_config

    stage = spec["stage"]
    threads = [f"model.cpu_threads={spec['threads']}"] if spec.get("threads") else []
    cfg = load_config(spec["preset"], [f"model.backbone={spec['checkpoint']}", f"model.device={spec['device']}",
                                       f"model.quantization={spec['quantization']}", *threads, *spec["overrides"]])
    train = cfg.stage1.train if stage == 1 else cfg.stage2.train
    start = time.perf_counter()
    backbone = load_backbone(cfg.model, train_adapter=f"stage{stage}", seed=train.seed,
                             train_compression=stage == 1 or cfg.stage2.train_compress_rows)
    load_seconds = time.perf_counter() - start
    cuda = backbone.device.type == "cuda"
    backbone.train()
    params = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=train.lr, weight_decay=train.weight_decay)
    step, sequences = (_stage1 if stage == 1 else _stage2)(backbone, cfg, spec)

    seen = {"lm_head_rows": 0, "vision_in_backward": False}  # what the FLOP count assumes, checked

    def count_head(module, inputs, output):
        seen["lm_head_rows"] += inputs[0].shape[0] if inputs[0].dim() == 2 else inputs[0].shape[:-1].numel()

    def vision_grad(module, inputs, output):
        seen["vision_in_backward"] |= output.requires_grad

    hooks = [backbone.hf.lm_head.register_forward_hook(count_head),
             backbone.hf.model.visual.merger.register_forward_hook(vision_grad)]
    memory = PeakMemory(cuda)
    steps = []
    for i in range(spec["warmup"] + spec["steps"]):
        seen["lm_head_rows"] = 0
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        info = step()
        if cuda:
            torch.cuda.synchronize()
        done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(list(params.values()), train.max_grad_norm)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        steps.append({**info, "seconds": done - start, "optimizer_seconds": time.perf_counter() - done,
                      "supervised": seen["lm_head_rows"], "warmup": i < spec["warmup"]})
    for hook in hooks:
        hook.remove()
    peaks = memory.read()

    measured = [s for s in steps if not s["warmup"]]
    seconds = statistics.median(s["seconds"] for s in measured)
    optimizer_seconds = statistics.median(s["optimizer_seconds"] for s in measured)
    accum = math.ceil(train.batch_size / spec["micro_batch"]) if stage == 1 else 1
    sizes, dims = matmul_sizes(backbone.hf), _dims(backbone.hf)
    flops = step_flops(sizes, dims, sequences["seqs"], sequences["patches"], measured[-1]["supervised"],
                       stage=stage, checkpointing=cfg.model.gradient_checkpointing)
    tokens = sum(sequences["seqs"])
    opt_seconds = accum * seconds + optimizer_seconds
    name = torch.cuda.get_device_name(backbone.device) if cuda else "cpu"
    peak_tflops = spec["peak_tflops"] or (device_peak_tflops(name) if cuda else None)
    utilisation = {kind: accum * flops[kind] / opt_seconds / (peak_tflops * 1e12) if peak_tflops else None
                   for kind in ("model", "hardware")}
    summary = backbone.summary()
    return {
        "stage": stage, "quantization": spec["quantization"], "device": str(backbone.device), "device_name": name,
        "dtype": str(backbone.dtype), "sequences_per_step": len(sequences["seqs"]),
        "micro_batch": spec["micro_batch"] if stage == 1 else None, "grad_accum": accum,
        "optimizer_batch": train.batch_size if stage == 1 else spec["stage2_batch"],
        "chunk": spec["chunk"] if stage == 2 else None, "warmup_steps": spec["warmup"],
        "measured_steps": len(measured), "load_seconds": load_seconds,
        "seconds_per_step": seconds, "min_seconds_per_step": min(s["seconds"] for s in measured),
        "max_seconds_per_step": max(s["seconds"] for s in measured),
        "data_seconds_per_step": (statistics.median(s["data_seconds"] for s in measured) if stage == 1
                                  else 2 * sequences["data_seconds_per_pass"]),
        "optimizer_seconds": optimizer_seconds, "seconds_per_optimizer_step": opt_seconds,
        "tokens_per_step": tokens, "padded_tokens_per_step": sequences["padded_tokens"],
        "image_tokens_per_step": sum(sequences["patches"]) // dims["merge"] ** 2,
        "patches_per_step": sum(sequences["patches"]), "supervised_tokens_per_step": measured[-1]["supervised"],
        "tokens_per_second": tokens / seconds, "tokens_per_optimizer_step": accum * tokens,
        "model_tflop_per_step": flops["model"] / 1e12, "hardware_tflop_per_step": flops["hardware"] / 1e12,
        "tflop_parts_per_step": {k: flops[k] / 1e12 for k in ("vit", "forward", "backward")},
        "model_tflop_per_optimizer_step": accum * flops["model"] / 1e12,
        "achieved_model_tflops": accum * flops["model"] / opt_seconds / 1e12,
        "peak_tflops": peak_tflops, "mfu": utilisation["model"], "hfu": utilisation["hardware"],
        **peaks, "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
        "matmul_params": sizes, "vision_in_backward": seen["vision_in_backward"],
        "trainable_params": summary["trainable_params"], "linear4bit_modules": summary["linear4bit_modules"],
        "compression_tokens": summary["compression_tokens"], "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "torch_threads": torch.get_num_threads(), "steps": steps,
    }


def _fmt(value, spec: str) -> str:
    """``format(value, spec)``, or "n/a" right-aligned to the spec's width when there is no value."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("n/a", f">{width}") if value is None else format(value, spec)


def print_table(report: dict) -> None:
    unit = MEMORY_UNITS.get(report["memory"], report["memory"])
    print(f"real recipe at full size, preset {report['preset']}, device {report['device_name']}; memory = {unit}; "
          f"peak {_fmt(report['peak_tflops'], '.0f')} TFLOP/s; median of {report['steps']} step(s) after "
          f"{report['warmup']} warm-up")
    print(f"{'stage':>5s} {'quant':>5s} {'batch':>10s} {'tokens':>7s} {'s/step':>8s} {'s/opt':>9s} {'tok/s':>8s} "
          f"{'peak MB':>9s} {'delta MB':>9s} {'TFLOP/opt':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'HFU':>6s}")
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['stage']:>5} {r['quantization']:>5s} FAILED: {r['error']}")
            continue
        batch = (f"{r['micro_batch']}x{r['grad_accum']}" if r["stage"] == 1
                 else f"{r['optimizer_batch']}/{r['chunk']}")
        print(f"{r['stage']:>5} {r['quantization']:>5s} {batch:>10s} {r['tokens_per_step']:7d} "
              f"{r['seconds_per_step']:8.2f} {r['seconds_per_optimizer_step']:9.2f} {r['tokens_per_second']:8.0f} "
              f"{r['peak_mb']:9.0f} {r['delta_mb']:9.0f} {r['model_tflop_per_optimizer_step']:10.2f} "
              f"{r['achieved_model_tflops']:8.3f} {_fmt(r['mfu'], '6.1%')} {_fmt(r['hfu'], '6.1%')}")
    for stage, ratio in report["nf4_over_none"].items():
        print(f"stage {stage}, nf4 / none: {ratio['seconds_per_step']:.2f}x time per step, "
              f"{ratio['peak_mb']:.2f}x peak memory")


def _report(settings: dict, built: dict | None, rows: list[dict], load_before: float) -> dict:
    ok = {(r["stage"], r["quantization"]): r for r in rows if "error" not in r}
    ratios = {stage: {"seconds_per_step": ok[stage, "nf4"]["seconds_per_step"] / ok[stage, "none"]["seconds_per_step"],
                      "peak_mb": ok[stage, "nf4"]["peak_mb"] / ok[stage, "none"]["peak_mb"]}
              for stage in STAGES if (stage, "nf4") in ok and (stage, "none") in ok}
    first = next(iter(ok.values()), {})
    return {**settings, "device": first.get("device", settings["device"]),
            "device_name": first.get("device_name", settings["device"]), "memory": first.get("memory"),
            "peak_tflops": first.get("peak_tflops", settings["peak_tflops"]),
            "build": built, "torch_threads": first.get("torch_threads", settings["threads"]),
            "cpu_count": os.cpu_count(), "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
            "rows": rows, "nf4_over_none": ratios}


def run_benchmark(out_file: str | Path | None = None, *, stages=STAGES, quantizations=QUANTIZATIONS,
                  steps: int | None = None, warmup: int = 1, device: str = "auto", checkpoint: str | None = None,
                  preset: str = "qwen2-vl-2b", overrides: list[str] = (), threads: int | None = None,
                  micro_batch: int | None = None, image_size: int | None = None, dialogue_tokens: int = 150,
                  stage2_batch: int | None = None, chunk: int | None = None, target_tokens: int = 32,
                  peak_tflops: float | None = None, timeout: float | None = None) -> dict:
    """Build the checkpoint (unless ``checkpoint``), run every (stage, quantization) in a fresh process, and
    write the report after each one (a run cut short keeps what it measured)."""
    import torch

    from comalite.config import load_config

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(preset, list(overrides))
    settings = {"preset": preset, "overrides": list(overrides), "device": device, "threads": threads,
                "checkpoint": checkpoint or "random (full_size.build_checkpoint)",
                "steps": steps or (2 if device.startswith("cuda") else 1), "warmup": warmup,
                "micro_batch": micro_batch or cfg.stage1.train.batch_size // cfg.stage1.train.grad_accum,
                "image_size": image_size or math.isqrt(cfg.model.max_pixels) // 28 * 28,
                "dialogue_tokens": dialogue_tokens, "stage2_batch": stage2_batch or cfg.stage2.train.batch_size,
                "chunk": chunk or cfg.stage2.chunk_size, "target_tokens": target_tokens, "peak_tflops": peak_tflops}
    out_file = Path(out_file) if out_file else RESULTS / f"real_recipe_{device.split(':')[0]}.json"
    load_before = os.getloadavg()[0]
    rows, built = [], None
    with scratch() as folder:
        if checkpoint is None:
            checkpoint = str(folder / "qwen2-vl-2b-random")
            built = run_isolated(build, {"folder": checkpoint, "threads": threads}, {"stage": "build"}, timeout)
            if "error" in built:
                print(f"building the checkpoint FAILED: {built['error']}", file=sys.stderr)
                stages = ()
        images = [random_image(folder / f"image{i}.png", settings["image_size"], seed=i) for i in range(N_IMAGES)]
        for stage in stages:
            for quantization in quantizations:
                spec = {**settings, "stage": stage, "quantization": quantization, "checkpoint": checkpoint,
                        "images": images}
                row = run_isolated(measure, spec, {"stage": stage, "quantization": quantization}, timeout)
                rows.append(row)
                if "error" in row:
                    print(f"stage {stage} {quantization} FAILED: {row['error']}\n{row.get('traceback', '')}",
                          file=sys.stderr)
                atomic_write_json(_report(settings, built, rows, load_before), out_file)
    report = _report(settings, built, rows, load_before)
    atomic_write_json(report, out_file)
    print_table(report)
    print(f"written to {out_file}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1,2", help="1, 2 or both")
    parser.add_argument("--quantizations", default=",".join(QUANTIZATIONS), help="nf4, none or both")
    parser.add_argument("--steps", type=int, help="measured steps, median reported (default 2 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not reported")
    parser.add_argument("--micro-batch", type=int, help="stage-1 dialogues per micro-batch (default: the "
                                                        "preset's batch_size / grad_accum)")
    parser.add_argument("--image-size", type=int, help="side of the square random images in pixels (default: "
                                                       "the side of model.max_pixels, 896 for the preset)")
    parser.add_argument("--dialogue-tokens", type=int, default=150, help="stage-1 QA tokens per dialogue (at least)")
    parser.add_argument("--stage2-batch", type=int, help="stage-2 pairs per step (default: the preset's 1024)")
    parser.add_argument("--chunk", type=int, help="GradCache chunk (default: the preset's stage2.chunk_size)")
    parser.add_argument("--target-tokens", type=int, default=32, help="stage-2 text-target tokens (at least), "
                                                                      "before the compression tokens")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: the bf16 "
                                                          "dense peak of a known GPU)")
    add_model_args(parser)
    parser.set_defaults(preset="qwen2-vl-2b")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration (and for the build)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/real_recipe_<device>.json)")
    args = parser.parse_args(argv)
    stages = tuple(int(s) for s in args.stages.split(",") if s)
    quantizations = tuple(q for q in args.quantizations.split(",") if q)
    if set(stages) - set(STAGES) or set(quantizations) - set(QUANTIZATIONS):
        parser.error(f"--stages from {STAGES}, --quantizations from {QUANTIZATIONS}")
    if (args.steps is not None and args.steps < 1) or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return run_benchmark(args.out, stages=stages, quantizations=quantizations, steps=args.steps, warmup=args.warmup,
                         device=args.device, checkpoint=args.checkpoint, preset=args.preset, overrides=args.overrides,
                         threads=args.threads, micro_batch=args.micro_batch, image_size=args.image_size,
                         dialogue_tokens=args.dialogue_tokens, stage2_batch=args.stage2_batch, chunk=args.chunk,
                         target_tokens=args.target_tokens, peak_tflops=args.peak_tflops, timeout=args.timeout)


if __name__ == "__main__":
    report = main()
    sys.exit(1 if any("error" in r for r in report["rows"]) or (report["build"] or {}).get("error") else 0)
