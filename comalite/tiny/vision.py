"""Vision pre-training of the tiny VLM's ViT, before its stage 0.

A real Qwen2-VL does not learn to see from question answering alone: its ViT starts from a separately
pre-trained image encoder. The tiny VLM gets the same head start. Its ViT (with the 2x2 patch merger, so
exactly the tokens the language model will read) is trained so that *each merged token* says
1. where it is: its row and column in the token grid. The ViT's 2D RoPE is relative, and in the
   language model M-RoPE gives the width axis the lowest rotary frequencies, so "at the top left" is
   hard to find from positions alone; a token that carries its own place makes it a content lookup;
2. what is there: colour, shape and size of the object whose centre falls in the token's square, or
   "empty".
A linear head per token reads these out and is thrown away afterwards. Scenes are drawn fresh from a
seed (never the held-out colour/shape combinations, never the held-out style), so no evaluation image is
seen; by default every step draws new ones (``FreshScenes``), so there is no training set to memorise.
Shape is the hard label: a small object is ~16 px across, about one 14 px patch, which is why the
shipped ViT is 4 layers x 128 trained on 4-object scenes (its probe accuracies: ``tiny_report.json``).

Measured on 2 CPUs, one thread: see ``benchmarks/bench_tiny_build.py`` and ``tiny_report.json``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..batching import batch_indices
from ..config import TrainConfig
from ..shapesworld import COLORS, SHAPES, SIZES, Scene, object_geometry, render, sample_scene
from ..trainer import Trainer, seed_everything

ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES}


def token_labels(scene: Scene, grid_h: int, grid_w: int, image_size: int) -> torch.Tensor:
    """(grid_h * grid_w, 5) class ids per merged token, row-major: its row, its column, then the colour,
    shape and size index + 1 of the object centred in its square (0 = no object centred there)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    labels = torch.zeros(grid_h * grid_w, 2 + len(ATTRIBUTES), dtype=torch.long)
    labels[:, 0], labels[:, 1] = rows.flatten(), cols.flatten()
    for obj in reversed(scene.objects):  # the first object wins a (rare) shared square
        cx, cy, _ = object_geometry(obj, image_size)
        k = min(grid_h - 1, int(cy * grid_h / image_size)) * grid_w + min(grid_w - 1, int(cx * grid_w / image_size))
        for a, (name, values) in enumerate(ATTRIBUTES.items()):
            labels[k, 2 + a] = values.index(getattr(obj, name)) + 1
    return labels


class TokenHead(nn.Module):
    """Linear read-out, token by token, of its grid row and column and of the object centred in it."""

    def __init__(self, hidden: int, grid_h: int, grid_w: int):
        super().__init__()
        self.sizes = [grid_h, grid_w] + [len(v) + 1 for v in ATTRIBUTES.values()]
        self.linear = nn.Linear(hidden, sum(self.sizes))

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, n_tokens, hidden) -> one (B, n_tokens, classes) logit tensor per label column."""
        return list(self.linear(tokens).split(self.sizes, dim=-1))


def _encode(processor, scenes: list[Scene], image_size: int):
    """Patches (n, patches, dim), the one grid (t, h, w), the merged grid (h, w) and token labels of scenes."""
    encoded = [processor.encode_image(render(s, image_size)) for s in scenes]
    grid = encoded[0][1]
    merge = processor.image_processor.merge_size
    grid_hw = (int(grid[1]) // merge, int(grid[2]) // merge)
    labels = torch.stack([token_labels(s, *grid_hw, image_size) for s in scenes])
    return torch.stack([p for p, _ in encoded]), grid, grid_hw, labels


class SceneImages:
    """``n`` seeded ShapesWorld scenes as Qwen2-VL patches (all one size) and their token labels."""

    def __init__(self, processor, n: int, seed: int, image_size: int, n_objects: int | None = None):
        rng = np.random.default_rng([seed, 7])
        scenes = [sample_scene(rng, n_objects=n_objects) for _ in range(n)]
        self.pixels, self.grid, self.grid_hw, self.labels = _encode(processor, scenes, image_size)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat patches, per-image grids and labels of the items ``idx``."""
        pixels = self.pixels[idx]
        return pixels.flatten(0, 1), self.grid.repeat(len(idx), 1), self.labels[idx]


class FreshScenes:
    """New seeded scenes for every step: an endless stream (a scene drawn at step s depends only on the
    seed and s, so a resumed run sees the same ones), so the ViT never sees a scene twice and cannot
    memorise its training set. Drawing and encoding a batch costs a fraction of a step."""

    def __init__(self, processor, seed: int, image_size: int, n_objects: int | None = None):
        self.processor, self.seed, self.image_size, self.n_objects = processor, seed, image_size, n_objects
        rng = np.random.default_rng([seed, 12])
        _, self.grid, self.grid_hw, _ = _encode(processor, [sample_scene(rng)], image_size)

    def batch_for_step(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 11, step])
        scenes = [sample_scene(rng, n_objects=self.n_objects) for _ in range(batch_size)]
        pixels, grid, _, labels = _encode(self.processor, scenes, self.image_size)
        return pixels.flatten(0, 1), grid.repeat(batch_size, 1), labels


def image_tokens(visual: nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The merged tokens the language model reads, as (B, n_tokens, hidden)."""
    out = visual(pixels, grid_thw=grid)
    tokens = getattr(out, "pooler_output", out)
    return tokens.view(len(grid), -1, tokens.shape[-1])


def token_loss(head: TokenHead, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over tokens and label columns."""
    logits = head(tokens)
    return sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[..., c].flatten())
               for c, lg in enumerate(logits)) / len(logits)


LABEL_NAMES = ("row", "column") + tuple(ATTRIBUTES)


@torch.no_grad()
def token_accuracy(visual: nn.Module, head: TokenHead, data: SceneImages, batch_size: int = 64) -> dict[str, float]:
    """Per label column, the fraction read correctly: row and column over all tokens, the attributes over
    the tokens with an object centred in them (empty tokens are most tokens, and easy)."""
    hits = torch.zeros(len(LABEL_NAMES))
    counts = torch.zeros(len(LABEL_NAMES))
    for start in range(0, len(data), batch_size):
        pixels, grid, labels = data.batch(list(range(start, min(len(data), start + batch_size))))
        logits = head(image_tokens(visual, pixels, grid))
        has_object = labels[..., 2] > 0
        for c, lg in enumerate(logits):
            scored = torch.ones_like(has_object) if c < 2 else has_object
            hits[c] += (lg.argmax(-1) == labels[..., c])[scored].sum()
            counts[c] += scored.sum()
    return {name: float(hits[c] / counts[c].clamp(min=1)) for c, name in enumerate(LABEL_NAMES)}


@torch.no_grad()
def scale_image_tokens(visual: nn.Module, processor, image_size: int, target_norm: float, *, n_scenes: int = 64,
                       seed: int = 0) -> float:
    """Rescale the ViT's output (its merger's last linear layer) so that its tokens' mean norm over ``n_scenes``
    seeded scenes is ``target_norm``; returns the factor. Pre-training against linear probes leaves the tokens
    at a norm of ~40-70 (the probes do not care), while the language model's text embeddings sit near 1: in the
    residual stream an image token then swamps every update the language model's layers add to it, so they
    cannot compute anything at image positions. The probes' accuracy does not change (a linear read-out of a
    scaled token is as good)."""
    rng = np.random.default_rng([seed, 13])
    pixels, grid, _, _ = _encode(processor, [sample_scene(rng) for _ in range(n_scenes)], image_size)
    norm = image_tokens(visual, pixels.flatten(0, 1), grid.repeat(n_scenes, 1)).norm(dim=-1).mean()
    factor = float(target_norm / norm)
    last = visual.merger.mlp[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return factor


@contextlib.contextmanager
def patch_embed_as_matmul(visual: nn.Module):
    """Qwen2-VL embeds each patch with a Conv3d whose kernel is its stride: the same product as one matmul,
    whose backward is ~3x faster on a CPU. Swapped in while pre-training only; the weights are the same."""
    embed = visual.patch_embed

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        weight = embed.proj.weight
        return nn.functional.linear(hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype), weight.flatten(1))

    embed.forward = forward
    try:
        yield visual
    finally:
        del embed.forward


def pretrain_vision(visual: nn.Module, processor, train: TrainConfig, out_dir: Path, *, n_scenes: int,
                    n_heldout: int, image_size: int, n_objects: int | None = None) -> dict:
    """Train ``visual`` in place on token labels; returns its held-out token accuracy and first/last loss.

    ``n_scenes``: a fixed set re-used across epochs, or 0 for new scenes every step; ``n_objects``: objects
    per training scene (None: 1-4, as ShapesWorld draws them). The held-out scenes always have 1-4."""
    seed_everything(train.seed)
    data = SceneImages(processor, n_scenes, train.seed, image_size, n_objects) if n_scenes else \
        FreshScenes(processor, train.seed, image_size, n_objects)
    heldout = SceneImages(processor, n_heldout, train.seed + 1, image_size)
    head = TokenHead(visual.merger.mlp[-1].out_features, *data.grid_hw)
    visual.requires_grad_(True)

    def step_fn(step: int) -> float:
        visual.train()
        if n_scenes:
            pixels, grid, labels = data.batch(batch_indices(step, train.batch_size, len(data), train.seed))
        else:
            pixels, grid, labels = data.batch_for_step(step, train.batch_size)
        loss = token_loss(head, image_tokens(visual, pixels, grid), labels)
        loss.backward()
        return loss.item()

    params = {f"visual.{n}": p for n, p in visual.named_parameters()}
    params.update({f"head.{n}": p for n, p in head.named_parameters()})
    with patch_embed_as_matmul(visual):
        history = Trainer(params, train, out_dir, step_fn, desc="vision").run()
    visual.eval()
    return {"token_accuracy": token_accuracy(visual, head, heldout), "first_loss": history[0]["loss"],
            "last_loss": history[-1]["loss"]}
