"""The frozen vision tower: encoded once per image when cached, never part of a backward pass."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from PIL import Image

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.embedding import encode
from comalite.records import EmbedInput
from comalite.vision_cache import VisionCache


def test_the_cache_evicts_least_recently_used_and_misses_a_rewritten_file(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), (i, 0, 0)).save(paths[-1])
    tokens = torch.zeros(4, 8)  # 128 bytes
    cache = VisionCache(budget_bytes=256)
    grid = torch.tensor([1, 2, 2])
    cache.put(paths[0], grid, tokens)
    cache.put(paths[1], grid, tokens)
    assert cache.get(paths[0]) is not None  # 0 is now the most recently used
    cache.put(paths[2], grid, tokens)       # over budget: 1 goes
    assert cache.get(paths[1]) is None and cache.get(paths[0]) is not None and cache.used == 256
    Image.new("RGB", (9, 9), "blue").save(paths[0])  # rewritten in place: another size and mtime
    os.utime(paths[0], ns=(1, 1))
    assert cache.get(paths[0]) is None


def _model(checkpoint, cache_mb):
    cfg = ModelConfig(backbone=str(checkpoint), n_compress=4, max_pixels=12544, min_pixels=3136,
                      quantization="none", vision_cache_mb=cache_mb)
    return load_backbone(cfg, train_adapter="stage2")


def test_cached_image_tokens_give_the_same_embeddings_and_run_the_vit_once(tiny_checkpoint, data_root, tmp_path):
    # Copies: the cache is process-wide (one per vision tower), and other tests encode the data's own images.
    images = [shutil.copy(p, tmp_path / p.name) for p in sorted((data_root / "images").rglob("*.png"))[:3]]
    assert len(images) == 3
    inputs = [EmbedInput("<|image_1|>\nRepresent the given image.", str(p)) for p in images] + [EmbedInput("two")]
    plain = _model(tiny_checkpoint, 0).eval()
    cached = _model(tiny_checkpoint, 64).eval()
    calls = []
    cached.visual.register_forward_hook(lambda module, args, out: calls.append(1))
    with torch.no_grad():
        reference = encode(plain, inputs)
        first = encode(cached, inputs)
        second = encode(cached, inputs)
    assert len(calls) == 1  # three images, one ViT pass; the second encode found all three cached
    assert torch.allclose(first, reference, atol=1e-5) and torch.allclose(second, first, atol=1e-6)


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_no_backward_goes_through_the_frozen_vision_tower(tiny_checkpoint, tmp_path, cache_mb):
    backbone = _model(tiny_checkpoint, cache_mb).train()
    needs_grad = []
    backbone.visual.register_forward_hook(lambda module, args, out: needs_grad.append(out.pooler_output.requires_grad))
    image = str(tmp_path / "new.png")  # never seen, so never cached: the tower runs
    Image.new("RGB", (112, 112), "red").save(image)
    encode(backbone, [EmbedInput("<|image_1|>", image), EmbedInput("a red circle")]).sum().backward()
    assert needs_grad == [False]
    assert all(p.grad is None for p in backbone.visual.parameters())
    assert any(p.grad is not None for p in backbone.trainable_parameters().values())
