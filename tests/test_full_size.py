"""The real 2B's architecture through the real loader: Qwen2-VL-2B-Instruct's public config, random weights.

Slow (a few minutes, ~13 GB of RAM, ~4.5 GB of disk), so it is excluded from the default run:

    .venv/bin/python -m pytest -m slow tests/test_full_size.py -s

No hub access: the model is built in code from the config values of Qwen2-VL-2B-Instruct's public
``config.json`` (by ``benchmarks/full_size.py``, which ``benchmarks/bench_real_recipe.py`` shares), saved in
bf16 safetensors with a small Qwen-style tokenizer and the Qwen2-VL image processor, then loaded by
``comalite.backbone.load_backbone`` in nf4 with 32 compression tokens, exactly as the ``qwen2-vl-2b`` preset
would load the real checkpoint. It checks what only the full size can show (the 4-bit layout, the exact
parameter count, the LoRA size, that the new tokens fit into the real embedding without a resize) and runs
one stage-1 forward/backward through the compression mask. Each phase's time and the peak RSS are printed
(``-s``) and recorded as test properties.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

N_COMPRESS = 32
LORA_R = 16


@pytest.fixture
def scratch(bench):
    """A temporary folder removed afterwards (the checkpoint is ~4.5 GB: not left in pytest's tmp dirs)."""
    with bench("full_size").scratch() as folder:
        yield folder


def _dialogue_batch(backbone, folder: Path, full_size):
    from comalite.records import Dialogue, Turn
    from comalite.sequence import collate, dialogue_example

    dialogues = [Dialogue(turns=(Turn("How many objects are there?", "three"), Turn("What color is the circle?", "red")),
                          image=full_size.random_image(folder / f"image{i}.png", size, seed=i))
                 for i, size in enumerate((112, 84))]
    examples = [dialogue_example(backbone.processor, d, prompt="Summarize above image in a few words.",
                                 text_prompt="") for d in dialogues]
    return collate(examples, backbone.processor.tokenizer.pad_token_id)


def test_qwen2_vl_2b_architecture_loads_in_nf4_and_trains_one_stage1_step(bench, scratch, record_property):
    import bitsandbytes as bnb

    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig
    from comalite.objective import lm_loss

    full_size, isolated = bench("full_size"), bench("isolated")
    text = full_size.TEXT
    timings = {}
    start = time.perf_counter()
    checkpoint = scratch / "qwen2-vl-2b-random"
    counts = full_size.build_checkpoint(checkpoint)
    timings["build_and_save_s"] = time.perf_counter() - start
    assert counts["tied"]
    assert counts["total"] == full_size.N_PARAMETERS
    assert counts["vision"] == full_size.N_VISION_PARAMETERS
    assert list(checkpoint.glob("*.safetensors"))

    start = time.perf_counter()
    cfg = ModelConfig(backbone=str(checkpoint), quantization="nf4", n_compress=N_COMPRESS, lora_r=LORA_R,
                      device="cpu", max_pixels=28 * 28 * 256, min_pixels=28 * 28 * 4)
    backbone = load_backbone(cfg)
    timings["load_nf4_s"] = time.perf_counter() - start
    hf = backbone.hf
    summary = backbone.summary()

    # 4-bit: the 7 projections of each of the 28 decoder layers, nothing in the vision tower or lm_head.
    quantised = [n for n, m in hf.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 28 * 7 == summary["linear4bit_modules"]
    assert all("language_model.layers." in n for n in quantised)
    assert not isinstance(hf.lm_head, bnb.nn.Linear4bit)
    visual = list(hf.model.visual.parameters())
    assert sum(p.numel() for p in visual) == full_size.N_VISION_PARAMETERS  # unquantised: every element still there
    assert all(p.dtype.is_floating_point and not p.requires_grad for p in visual)

    # The 32 compression tokens fit into the 2B's spare embedding rows: no resize.
    assert hf.get_input_embeddings().num_embeddings == text["vocab_size"]
    assert len(backbone.compression.token_ids) == N_COMPRESS
    assert max(backbone.compression.token_ids) < text["vocab_size"]

    # Trainable: LoRA r=16 on q, k, v, o of the 28 layers, plus the 32 compression rows.
    hidden = text["hidden_size"]
    kv = text["num_key_value_heads"] * hidden // text["num_attention_heads"]  # 2 KV heads x head_dim 128
    per_layer = LORA_R * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))  # q, k, v, o
    trainable = backbone.trainable_parameters()
    lora = {n: p for n, p in trainable.items() if "lora_" in n}
    assert sum(p.numel() for p in lora.values()) == 28 * per_layer == 4_358_144
    assert set(trainable) == set(lora) | {"compression.rows"}
    assert summary["trainable_params"] == 28 * per_layer + N_COMPRESS * hidden
    assert summary["adapted_modules"] == 28 * 4

    # One stage-1 step: forward through the compression mask, backward.
    start = time.perf_counter()
    batch = _dialogue_batch(backbone, scratch, full_size)
    backbone.train()
    loss = lm_loss(backbone, batch)
    loss.backward()
    timings["forward_backward_s"] = time.perf_counter() - start
    assert torch.isfinite(loss)
    lora_b = [p.grad for n, p in lora.items() if "lora_B" in n]
    assert lora_b and all(g is not None and torch.isfinite(g).all() for g in lora_b)
    assert any(float(g.abs().max()) > 0 for g in lora_b)  # lora_A's gradient is 0 while B is 0 (its init)
    rows = backbone.compression.rows.grad
    assert rows is not None and torch.isfinite(rows).all() and float(rows.abs().max()) > 0
    assert all(p.grad is None for p in visual)

    timings["peak_rss_gb"] = isolated.rss_mb() / 1024
    timings["loss"] = float(loss)
    timings["tokens"] = int(batch["attention_mask"].sum())
    timings["torch_threads"] = torch.get_num_threads()
    for key, value in timings.items():
        record_property(key, value)
    print("\nfull-size Qwen2-VL-2B (random weights):",
          ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in timings.items()))
