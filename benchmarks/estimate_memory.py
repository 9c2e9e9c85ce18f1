"""Estimate the GPU memory of the real recipe per image budget (max LLM tokens per image): an ESTIMATE.

    python benchmarks/estimate_memory.py                               # Qwen2-VL-2B, the qwen2-vl-2b preset
    python benchmarks/estimate_memory.py --image-tokens 256,1024 --micro-batch 4

No GPU was lent to this project when it was written, so the README's image-budget table comes from this
arithmetic, not from a measurement; ``bench_real_recipe.py --device cuda --image-size S`` measures the same
cases on a GPU (``gpu_check.sh`` runs it) and its numbers replace these where they exist.

Assumptions (bf16 compute, nf4 language model with the ViT and the tied embedding kept in bf16, LoRA on
q/k/v/o, gradient checkpointing per decoder layer, sdpa with a memory-efficient kernel so no T x T score
matrix is stored; every count in bytes; T = tokens of one sequence, H/I = the LLM's hidden/MLP width,
L = its layers, V = its vocabulary, dv = the ViT's width):

    weights           0.53 N_lm_linear (nf4 + double-quant scales) + 2 (N_embedding + N_vit)
    trainable         16 per LoRA parameter and compression row (fp32 weight, grad, two Adam moments)
    checkpoints       2 L B T H                 (each layer's input, kept for the backward pass)
    one layer         2 x 2 B T (10 H + 4 I)    (a layer's saved activations, recomputed, plus their grads;
                                                 10 H: norms, q/k/v/o, residuals and LoRA dropout copies)
    mask              2 B T^2                   (stage 1's additive 4D compression mask, bf16)
    logits            10 B S V                  (stage 1: lm_head at the S supervised positions only:
                                                 bf16 logits, their fp32 copy for the loss, its gradient)
    vision tower      2 B P 8 dv + 2 B n H      (forward only, one block at a time; P = 4 n patches)

Stage 1 runs one micro-batch of B = batch_size / grad_accum sequences; stage 2 one GradCache chunk of
``chunk_size`` sequences with gradients (the cached embeddings of the whole batch are a few MB); evaluation
one batch without gradients (a single layer's activations, no checkpoints). The largest of the three is what
a GPU must hold, plus the allocator's slack (assume +20 %).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import TEXT, VISION  # noqa: E402  (the 2B's public config)

from comalite.atomic import atomic_write_json  # noqa: E402
from comalite.config import load_config  # noqa: E402

GB = 1024 ** 3
N_LM_LINEAR = 1_310_195_712      # sum of in*out over the 2B's 28 decoder layers' Linear modules
N_EMBEDDING = 233_373_696        # 151,936 x 1,536, tied with lm_head
N_VIT = 665_271_296
N_LORA_PER_RANK = 272_384        # LoRA on q/k/v/o of the 2B's 28 layers: (in + out) summed, per unit of rank


def sequence_tokens(image_tokens: int, text_tokens: int, n_compress: int) -> int:
    """LLM tokens of one sequence: the vision span (with its start/end tokens), the text and the K tokens."""
    return image_tokens + 2 + text_tokens + n_compress


def estimate(image_tokens: int, *, batch: int, text_tokens: int, n_compress: int, lora_r: int,
             supervised: int = 0, grad: bool = True, mask: bool = False) -> dict:
    """GiB per term for one forward (+ backward when ``grad``) of ``batch`` sequences (see the docstring)."""
    h, i, layers, vocab = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["num_hidden_layers"], TEXT["vocab_size"]
    t = sequence_tokens(image_tokens, text_tokens, n_compress)
    terms = {
        "weights": 0.53 * N_LM_LINEAR + 2 * (N_EMBEDDING + N_VIT),
        "trainable": 16 * (N_LORA_PER_RANK * lora_r + n_compress * h) if grad else 0,
        "checkpoints": 2 * layers * batch * t * h if grad else 0,
        "one_layer": (2 if grad else 1) * 2 * batch * t * (10 * h + 4 * i),
        "mask": 2 * batch * t * t if mask else 0,
        "logits": 10 * batch * supervised * vocab,
        "vision_tower": 2 * batch * 4 * image_tokens * 8 * VISION["embed_dim"] + 2 * batch * image_tokens * h,
    }
    gib = {k: v / GB for k, v in terms.items()}
    gib["total"] = sum(gib.values())
    gib["with_slack"] = 1.2 * gib["total"]
    gib["tokens_per_sequence"] = t
    return gib


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="qwen2-vl-2b")
    parser.add_argument("--image-tokens", default="256,512,1024", help="max LLM tokens per image, comma-separated")
    parser.add_argument("--micro-batch", type=int, default=0, help="stage-1 sequences per micro-batch (0: preset)")
    parser.add_argument("--qa-tokens", type=int, default=150, help="stage-1 question/answer tokens per dialogue")
    parser.add_argument("--supervised", type=int, default=100, help="stage-1 supervised (answer) tokens per dialogue")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_estimate.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.preset)
    k, r = cfg.model.n_compress, cfg.model.lora_r
    micro = args.micro_batch or cfg.stage1.train.batch_size // cfg.stage1.train.grad_accum
    rows = []
    for n in [int(x) for x in args.image_tokens.split(",") if x]:
        stages = {
            "stage1": estimate(n, batch=micro, text_tokens=12 + args.qa_tokens, n_compress=k, lora_r=r,
                               supervised=args.supervised, mask=True),
            "stage2": estimate(n, batch=cfg.stage2.chunk_size, text_tokens=20, n_compress=k, lora_r=r),
            "eval": estimate(n, batch=cfg.eval.batch_size, text_tokens=20, n_compress=k, lora_r=r, grad=False),
        }
        rows.append({"image_tokens": n, "max_pixels": n * 28 * 28, **stages})
    result = {"estimate": True, "preset": args.preset, "stage1_micro_batch": micro,
              "stage2_chunk": cfg.stage2.chunk_size, "eval_batch": cfg.eval.batch_size, "n_compress": k,
              "qa_tokens": args.qa_tokens, "supervised": args.supervised, "rows": rows}
    print(f"ESTIMATE (not measured), {args.preset}: GiB incl. 20 % slack; stage-1 micro-batch {micro}, "
          f"stage-2 chunk {cfg.stage2.chunk_size}, eval batch {cfg.eval.batch_size}")
    print("| image tokens | max_pixels | stage 1 | stage 2 | eval |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['image_tokens']} | {row['max_pixels']} | " + " | ".join(
            f"{row[s]['with_slack']:.1f}" for s in ("stage1", "stage2", "eval")) + " |")
    atomic_write_json(result, Path(args.out))
    return result


if __name__ == "__main__":
    main()
