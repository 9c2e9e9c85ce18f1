"""``benchmarks/bench_real_recipe.py``: its FLOP accounting (fast) and one CPU run at small sizes (slow).

The slow test builds the full-size random 2B checkpoint (~4.5 GB of temporary disk, removed afterwards) and runs
every configuration once on CPU with one thread: 30 min on 2 cores shared with other jobs (load average 3-4),
peak RSS 13 GB (the unquantised fp32 load; nf4: 8.8 GB).

    .venv/bin/python -m pytest -m slow tests/test_bench_real_recipe.py -s
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

CPU_ARGS = ["--device", "cpu", "--threads", "1", "--steps", "1", "--warmup", "0", "--stage2-batch", "16",
            "--chunk", "8", "--micro-batch", "2", "--image-size", "56", "--dialogue-tokens", "24",
            "--target-tokens", "8", "--set", "model.n_compress=4"]
POSITIVE = ("load_seconds", "seconds_per_step", "seconds_per_optimizer_step", "optimizer_seconds",
            "data_seconds_per_step", "tokens_per_step", "padded_tokens_per_step", "image_tokens_per_step",
            "patches_per_step", "tokens_per_second", "model_tflop_per_step", "hardware_tflop_per_step",
            "model_tflop_per_optimizer_step", "achieved_model_tflops", "peak_mb", "baseline_mb", "peak_rss_mb",
            "first_loss", "trainable_params")


def test_matmul_sizes_and_flops_of_the_2b_architecture(bench):
    from transformers import Qwen2VLForConditionalGeneration

    full_size, real = bench("full_size"), bench("bench_real_recipe")
    with torch.device("meta"):  # the 2B's modules without their memory
        model = Qwen2VLForConditionalGeneration._from_config(full_size.make_config())
    sizes = real.matmul_sizes(model)
    e, h, kv, ffn = 1280, 1536, 256, 8960
    assert sizes == {"vision": 32 * 12 * e * e + 3 * 2 * 14 * 14 * e,  # qkv + proj + fc1 + fc2, patch conv
                     "merger": 4 * e * 4 * e + 4 * e * h,
                     "language": 28 * (2 * h * h + 2 * h * kv + 3 * h * ffn),  # q, o; k, v; gate, up, down
                     "lora": 0, "lm_head": 151936 * h}
    assert 0 < full_size.N_PARAMETERS - sum(sizes.values()) < 1e-3 * full_size.N_PARAMETERS  # biases and norms
    dims = real._dims(model)
    assert dims == {"layers": 28, "width": h, "vision_layers": 32, "vision_width": e, "merge": 2}

    # Text only, sequences of one token (no attention to speak of): forward 2NT, backward through the
    # activations 2NT, so the model FLOPs are 2/3 of the dense 6NT; recompute adds a forward in hardware FLOPs.
    text_only = dict(sizes, lora=0, lm_head=0)
    flops = real.step_flops(text_only, dims, [1] * 100, [], 0, stage=1, checkpointing=True)
    n, attention = sizes["language"], 28 * h * 100
    assert flops["model"] == 4 * n * 100 + 12 * attention
    assert flops["hardware"] == flops["model"] + 2 * n * 100 + 4 * attention
    stage2 = real.step_flops(sizes, dims, [300, 50], [1024], 0, stage=2, checkpointing=False)
    assert stage2["vit"] > 0 and stage2["hardware"] == stage2["model"] + stage2["vit"] + stage2["forward"]


def test_peak_of_known_gpus(bench):
    peak = bench("bench_real_recipe").device_peak_tflops
    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("Tesla T4") is None


@pytest.mark.slow
def test_every_configuration_runs_once_on_cpu(bench, tmp_path):
    scratch = set(Path(tempfile.gettempdir()).glob("comalite-full-size-*"))
    out = tmp_path / "real_recipe_cpu.json"
    report = bench("bench_real_recipe").main([*CPU_ARGS, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(Path(tempfile.gettempdir()).glob("comalite-full-size-*")) == scratch  # the 4.5 GB folder is gone
    assert saved["build"]["total"] == bench("full_size").N_PARAMETERS and saved["build"]["tied"]

    rows = {(r["stage"], r["quantization"]): r for r in saved["rows"]}
    assert set(rows) == {(1, "nf4"), (1, "none"), (2, "nf4"), (2, "none")}
    for r in rows.values():
        assert "error" not in r, r.get("traceback", r)
        for key in POSITIVE:
            assert math.isfinite(r[key]) and r[key] > 0, (r["stage"], r["quantization"], key, r[key])
        assert r["device"] == "cpu" and r["memory"] == "peak_rss" and r["torch_threads"] == 1
        assert r["peak_tflops"] is None and r["mfu"] is None and r["hfu"] is None  # n/a on CPU
        assert r["peak_mb"] < 14 * 1024
        assert r["hardware_tflop_per_step"] > r["model_tflop_per_step"]
        assert r["measured_steps"] == 1 and len(r["steps"]) == 1
        assert not r["vision_in_backward"]  # the frozen ViT runs forward only, as the FLOP count assumes
        assert r["compression_tokens"] == 4 and r["image_tokens_per_step"] * 4 == r["patches_per_step"]
    for stage in (1, 2):
        assert rows[stage, "nf4"]["linear4bit_modules"] == 28 * 7 and rows[stage, "none"]["linear4bit_modules"] == 0
        assert saved["nf4_over_none"][str(stage)]["seconds_per_step"] > 0
    one = rows[1, "nf4"]
    assert one["micro_batch"] == 2 and one["grad_accum"] == 128 and one["sequences_per_step"] == 2  # 256 / 2
    assert one["supervised_tokens_per_step"] > 0 and one["image_tokens_per_step"] == 2 * 4  # 56 px: 2x2 tokens
    two = rows[2, "nf4"]
    assert two["sequences_per_step"] == 32 and two["chunk"] == 8 and two["grad_accum"] == 1
    assert two["supervised_tokens_per_step"] == 0  # stage 2 never calls lm_head
