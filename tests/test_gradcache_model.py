"""GradCache on the real tiny Qwen2-VL: the full-batch gradients of LoRA and compression rows, dropout on.

``tests/test_gradcache.py`` pins the algorithm on a toy encoder in float64; this file pins it on the model
stage 2 actually trains: a stage-2 LoRA with dropout 0.3 (its B made non-zero so the dropout changes the
output), gradient checkpointing on (the default: its recomputation draws dropout masks too), trainable
compression rows, mixed image/text inputs padded in chunks of 2.
"""
from __future__ import annotations

import pytest
import torch

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.data.sources import train_pairs
from comalite.embedding import encode
from comalite.gradcache import accumulation_step, full_batch_step, gradcache_step
from comalite.loss import InfoNCELoss

CHUNK = 2
LOSS = InfoNCELoss(temperature=0.05)


def _load(checkpoint, quantization):
    cfg = ModelConfig(backbone=str(checkpoint), n_compress=4, max_pixels=12544, min_pixels=3136,
                      quantization=quantization, lora_dropout=0.3)
    torch.manual_seed(0)  # load_backbone's seed covers the compression rows only; PEFT draws LoRA A globally
    backbone = load_backbone(cfg, train_adapter="stage2")
    assert backbone.hf.is_activation_checkpointing          # the default; recomputation replays dropout too
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lora_b = [p for name, p in backbone.trainable_parameters().items() if "lora_B" in name]
        assert lora_b and all(float(p.abs().max()) == 0 for p in lora_b)   # PEFT starts B at zero
        for p in lora_b:
            p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    return backbone.train()


def _batch(tiny_config):
    """8 pairs, at least one of each ShapesWorld subset: image->text, text->image, image->image queries."""
    by_subset: dict[str, list] = {}
    for pair in train_pairs(tiny_config()):
        by_subset.setdefault(pair.subset, []).append(pair)
    pairs = [by_subset[s][i] for i in range(2) for s in sorted(by_subset)][:8]
    assert len(pairs) == 8 and len({p.subset for p in pairs}) >= 6
    chunks = lambda items: [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    return chunks([p.query for p in pairs]), chunks([p.positive for p in pairs])


def _step(step, backbone, queries, targets, seed=1):
    """Run one step from a fixed seed; return its loss, the gradients by name, and the RNG draw after it."""
    params = backbone.trainable_parameters()
    for p in params.values():
        p.grad = None
    torch.manual_seed(seed)
    loss = step(lambda chunk: encode(backbone, chunk), queries, targets, LOSS)
    grads = {name: p.grad.detach().clone() for name, p in params.items()}
    for p in params.values():
        p.grad = None
    return loss, grads, torch.rand(4)


def _max_abs(a: dict, b: dict | None = None) -> float:
    return max(float((a[n] - (b[n] if b is not None else 0)).abs().max()) for n in a)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_gradcache_equals_the_full_batch_with_lora_dropout(tiny_checkpoint, tiny_config, quantization):
    backbone = _load(tiny_checkpoint, quantization)
    queries, targets = _batch(tiny_config)
    params = backbone.trainable_parameters()
    assert "compression.rows" in params and sum("lora_A" in n for n in params) == sum("lora_B" in n for n in params) > 0

    # Dropout is live: the same chunk encoded from two seeds differs (and not at all in eval mode).
    with torch.no_grad():
        draws = [(torch.manual_seed(s), encode(backbone, queries[0]))[1] for s in (1, 2)]
        assert (draws[0] - draws[1]).abs().max() > 1e-3

    loss_gc, grads_gc, after_gc = _step(gradcache_step, backbone, queries, targets)
    loss_full, grads_full, after_full = _step(full_batch_step, backbone, queries, targets)

    assert not loss_gc.requires_grad
    assert loss_gc.item() == pytest.approx(loss_full.item(), abs=1e-6)
    scale = _max_abs(grads_full)
    error = _max_abs(grads_gc, grads_full)
    print(f"\n[{quantization}] GradCache vs full batch: loss {loss_gc.item():.6f} vs {loss_full.item():.6f}, "
          f"max |grad error| {error:.3g} at gradient scale {scale:.3g} (relative {error / scale:.2g})")
    # Every trainable tensor (LoRA A and B of every adapted layer, the compression rows) gets a real gradient.
    assert all(float(g.abs().max()) > 0 for g in grads_full.values())
    assert error <= 1e-5 * scale
    # Both leave the random stream where one ordinary pass leaves it.
    torch.testing.assert_close(after_gc, after_full, atol=0, rtol=0)

    # The check has teeth: full-batch gradients from another dropout seed are far off.
    _, grads_other, _ = _step(full_batch_step, backbone, queries, targets, seed=2)
    assert _max_abs(grads_other, grads_full) > 1e-2 * scale


def test_plain_accumulation_is_another_loss_with_other_gradients(tiny_checkpoint, tiny_config):
    """Separate InfoNCE per chunk (what gradient accumulation computes) has only 1 negative per query here.

    To isolate the loss from the dropout draws, the chunks are encoded in exactly the order and from the
    seed ``full_batch_step`` uses, so both see the same embeddings; the gradient of the mean of the
    per-chunk losses is what accumulating each chunk's backward would add up to.
    """
    backbone = _load(tiny_checkpoint, "none")
    queries, targets = _batch(tiny_config)
    loss_full, grads_full, _ = _step(full_batch_step, backbone, queries, targets)

    loss_acc, grads_acc, _ = _step(accumulation_step, backbone, queries, targets)
    # Same embeddings, fewer negatives: each query's log-sum-exp runs over a subset, so the loss is lower.
    assert loss_acc.item() < loss_full.item() - 0.1
    scale = _max_abs(grads_full)
    assert _max_abs(grads_acc, grads_full) > 1e-2 * scale
    print(f"\naccumulation loss {loss_acc.item():.4f} vs full batch {loss_full.item():.4f}; "
          f"max |grad difference| {_max_abs(grads_acc, grads_full):.3g} at scale {scale:.3g}")
