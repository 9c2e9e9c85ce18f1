"""The real 2B's architecture through the real loader: Qwen2-VL-2B-Instruct's public config, random weights.

Slow (a few minutes, ~13 GB of RAM, ~4.5 GB of disk), so it is excluded from the default run:

    .venv/bin/python -m pytest -m slow tests/test_full_size.py -s

No hub access: the model is built in code from the config values of Qwen2-VL-2B-Instruct's public
``config.json`` (written out below), saved in bf16 safetensors with a small Qwen-style tokenizer and the
Qwen2-VL image processor, then loaded by ``comalite.backbone.load_backbone`` in nf4 with 32 compression
tokens, exactly as the ``qwen2-vl-2b`` preset would load the real checkpoint. It checks what only the
full size can show (the 4-bit layout, the exact parameter count, the LoRA size, that the new tokens fit
into the real embedding without a resize) and runs one stage-1 forward/backward through the compression
mask. Each phase's time and the peak RSS are printed (``-s``) and recorded as test properties.
"""
from __future__ import annotations

import gc
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

# Qwen2-VL-2B-Instruct's public config.json, in transformers 5 field names.
TEXT = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
            rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536, in_channels=3,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
N_PARAMETERS = 2_208_985_600      # the real checkpoint's count (lm_head tied to the embedding)
N_VISION_PARAMETERS = 665_271_296
N_COMPRESS = 32
LORA_R = 16


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kilobytes


@pytest.fixture
def scratch():
    """A temporary folder removed afterwards (the checkpoint is ~4.5 GB: not left in pytest's tmp dirs)."""
    folder = Path(tempfile.mkdtemp(prefix="comalite-full-size-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _build_checkpoint(folder: Path) -> dict:
    """Write a random-weight Qwen2-VL-2B-shaped checkpoint (bf16 safetensors) with tokenizer and image
    processor into ``folder``; return its parameter counts."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.shapesworld import text_corpus
    from comalite.tiny import SPECIAL_TOKENS, train_tokenizer

    tokenizer = train_tokenizer(text_corpus(seed=0, n=300), vocab_size=400)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TEXT, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    config = Qwen2VLConfig(text_config=text, vision_config=VISION, tie_word_embeddings=True,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.tie_weights()  # else lm_head may count twice
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "vision": sum(p.numel() for p in model.model.visual.parameters()),
              "tied": model.lm_head.weight is model.get_input_embeddings().weight}
    model.save_pretrained(str(folder))  # safetensors, bf16
    del model
    gc.collect()
    tokenizer.save_pretrained(str(folder))
    Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056).save_pretrained(str(folder))  # the 2B's budget
    return counts


def _dialogue_batch(backbone, folder: Path):
    from PIL import Image

    from comalite.records import Dialogue, Turn
    from comalite.sequence import collate, dialogue_example

    rng = torch.Generator().manual_seed(0)
    dialogues = []
    for i, size in enumerate((112, 84)):
        pixels = torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8).numpy()
        path = folder / f"image{i}.png"
        Image.fromarray(pixels).save(path)
        dialogues.append(Dialogue(turns=(Turn("How many objects are there?", "three"),
                                         Turn("What color is the circle?", "red")), image=str(path)))
    examples = [dialogue_example(backbone.processor, d, prompt="Summarize above image in a few words.",
                                 text_prompt="") for d in dialogues]
    return collate(examples, backbone.processor.tokenizer.pad_token_id)


def test_qwen2_vl_2b_architecture_loads_in_nf4_and_trains_one_stage1_step(scratch, record_property):
    import bitsandbytes as bnb

    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig
    from comalite.objective import lm_loss

    timings = {}
    start = time.perf_counter()
    checkpoint = scratch / "qwen2-vl-2b-random"
    counts = _build_checkpoint(checkpoint)
    timings["build_and_save_s"] = time.perf_counter() - start
    assert counts["tied"]
    assert counts["total"] == N_PARAMETERS
    assert counts["vision"] == N_VISION_PARAMETERS
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
    visual = list(backbone.core.visual.parameters())
    assert sum(p.numel() for p in visual) == N_VISION_PARAMETERS  # unquantised: every element still there
    assert all(p.dtype.is_floating_point and not p.requires_grad for p in visual)

    # The 32 compression tokens fit into the 2B's spare embedding rows: no resize.
    assert hf.get_input_embeddings().num_embeddings == TEXT["vocab_size"]
    assert len(backbone.compression.token_ids) == N_COMPRESS
    assert max(backbone.compression.token_ids) < TEXT["vocab_size"]

    # Trainable: LoRA r=16 on q, k, v, o of the 28 layers, plus the 32 compression rows.
    hidden = TEXT["hidden_size"]
    kv = TEXT["num_key_value_heads"] * hidden // TEXT["num_attention_heads"]  # 2 KV heads x head_dim 128
    per_layer = LORA_R * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))  # q, k, v, o
    trainable = backbone.trainable_parameters()
    lora = {n: p for n, p in trainable.items() if "lora_" in n}
    assert sum(p.numel() for p in lora.values()) == 28 * per_layer == 4_358_144
    assert set(trainable) == set(lora) | {"compression.rows"}
    assert summary["trainable_params"] == 28 * per_layer + N_COMPRESS * hidden
    assert summary["adapted_modules"] == 28 * 4

    # One stage-1 step: forward through the compression mask, backward.
    start = time.perf_counter()
    batch = _dialogue_batch(backbone, scratch)
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

    timings["peak_rss_gb"] = _peak_rss_gb()
    timings["loss"] = float(loss)
    timings["tokens"] = int(batch["attention_mask"].sum())
    timings["torch_threads"] = torch.get_num_threads()
    for key, value in timings.items():
        record_property(key, value)
    print("\nfull-size Qwen2-VL-2B (random weights):",
          ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in timings.items()))
