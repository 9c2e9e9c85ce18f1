"""Can the tiny language model learn to look things up? Stage 0 on one family of questions, one lever at a time.

    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag base           # place lookups, ViT tokens
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag oracle --oracle  # exact labels as tokens
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag text --text      # the scene as a sentence
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag text_copy --text --copy

Every build of the tiny VLM lands at the same ceiling (``benchmarks/README.md``, "Stage-0 levers"): it answers
what needs the scene as a whole (how many objects) and not what needs one object picked out ("Is there an object
at the top left?" stays at its blind rate). This script asks where that comes from, cheaply: a fresh language
model (the tiny recipe's tokenizer and LM, ``TinyConfig``) on the pre-trained ViT of the tiny checkpoint
``--vision-from`` (frozen), trained as stage 0 trains (``objective.train_lm``, answers supervised, one turn per
sequence) on 6,000 seeded scenes (``--scenes``; 400 held out), but only on the questions of ``--family``:

- ``place``: "Is there an object {place}?", "What color/shape is the object {place}?" (a lookup by position);
- ``object``: "Is there a {object}?", "What color is the {shape}?", "What shape is the {color} object?".

Levers (one per run): ``--lr``, ``--steps``; ``--oracle`` replaces each image token by the exact labels a linear
probe reads from it (row, column, colour, shape, size as one-hots: what the tokens hold, with no noise);
``--text`` gives the scene as its description instead of an image (``--copy`` adds the description asked back:
a dense copy task); ``--whiten E`` whitens the image tokens (shrunk by E times the mean eigenvalue, through the
merger's last layer); ``--train-vision`` unfreezes the ViT. Held-out scenes, per question type, against the
honest blind (``tiny.build.blind_by_template``). Numbers to ``--out`` (default
``benchmarks/results/stage0_lookup/<tag>.json``) and stdout. One thread; a run of 600 steps takes ~5 min.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "stage0_lookup"
FAMILIES = {
    "place": ("Is there an object {place}?", "What color is the object {place}?", "What shape is the object {place}?"),
    "object": ("Is there a {object}?", "What color is the {shape}?", "What shape is the {color} object?"),
}


def fresh_model(vision_from: Path, out: Path, cfg) -> Path:
    """A new tiny Qwen2-VL (the recipe's tokenizer and freshly initialised LM) carrying the pre-trained ViT of the
    tiny checkpoint ``vision_from`` (the ViT's shape and image size as its ``tiny_report.json`` records), saved to
    ``out``."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.shapesworld import text_corpus
    from comalite.tiny.build import TinyConfig, copy_vision, recipe_texts, tiny_qwen2vl_config, train_tokenizer

    built = json.loads((vision_from / "tiny_report.json").read_text())["config"]  # its ViT's shape and image size
    tc = TinyConfig(**{k: built[k] for k in ("hidden", "vision_depth", "vision_dim", "vision_heads",
                                             "vision_mlp_ratio", "image_size")})
    torch.manual_seed(tc.seed)
    tokenizer = train_tokenizer(text_corpus(seed=tc.seed, language=cfg.data.language) + recipe_texts(cfg),
                                tc.vocab_size)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tokenizer, tc))
    copy_vision(model.model.visual, vision_from)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    pixels = tc.image_size ** 2
    Qwen2VLImageProcessorPil(min_pixels=pixels // 4, max_pixels=pixels).save_pretrained(str(out))
    return out


def scene_tokens(backbone, image_size: int, n: int, seed: int):
    """(tokens (n * grid, H), labels (n * grid, 5)) of ``n`` seeded scenes through the backbone's ViT."""
    from comalite.shapesworld import sample_scene
    from comalite.tiny.vision import _encode, image_tokens

    rng = np.random.default_rng([seed, 14])
    pixels, grid, _, labels = _encode(backbone.processor, [sample_scene(rng) for _ in range(n)], image_size)
    with torch.no_grad():
        tokens = image_tokens(backbone.visual, pixels.flatten(0, 1), grid.repeat(n, 1))
    return tokens.reshape(-1, tokens.shape[-1]), labels.reshape(-1, labels.shape[-1])


def whiten(backbone, image_size: int, shrink: float) -> None:
    """Fold a shrunk ZCA whitening of the image tokens into the merger's last linear layer."""
    tokens, _ = scene_tokens(backbone, image_size, 512, seed=0)
    tokens = tokens.double()
    values, vectors = torch.linalg.eigh(torch.cov(tokens.T))
    project = vectors @ torch.diag((values + shrink * values.mean()).rsqrt()) @ vectors.T
    last = backbone.visual.merger.mlp[-1]
    with torch.no_grad():
        bias = project @ (last.bias.double() - tokens.mean(0))
        last.weight.copy_((project @ last.weight.double()).float())
        last.bias.copy_(bias.float())


def use_oracle_tokens(backbone, image_size: int) -> list[float]:
    """Make the ViT hand the LM exact labels: linear probes (fit here on 1,500 scenes) read each token's row,
    column, colour, shape and size, and the token becomes their one-hots (zero-padded). Returns the probes'
    training accuracy per label."""
    tokens, labels = scene_tokens(backbone, image_size, 1500, seed=1)
    sizes = [int(labels[:, c].max()) + 1 for c in range(labels.shape[1])]
    probe = torch.nn.Linear(tokens.shape[1], sum(sizes))
    optimizer = torch.optim.Adam(probe.parameters(), 1e-2)
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    for _ in range(400):
        optimizer.zero_grad()
        loss = sum(torch.nn.functional.cross_entropy(logits, labels[:, c])
                   for c, logits in enumerate(probe(unit).split(sizes, -1)))
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = [float((lg.argmax(-1) == labels[:, c]).float().mean()) for c, lg in enumerate(probe(unit).split(sizes, -1))]
    visual, encode = backbone.visual, backbone.visual.forward

    def forward(*args, **kwargs):
        out = encode(*args, **kwargs)
        raw = getattr(out, "pooler_output", out)
        with torch.no_grad():
            logits = probe(raw / raw.norm(dim=-1, keepdim=True)).split(sizes, -1)
            exact = torch.cat([torch.nn.functional.one_hot(lg.argmax(-1), n).float() for lg, n in zip(logits, sizes)], -1)
            exact = torch.nn.functional.pad(exact, (0, raw.shape[-1] - exact.shape[-1]))
        if hasattr(out, "pooler_output"):
            out.pooler_output = exact
            return out
        return exact

    visual.forward = forward
    return accuracy


def text_scenes(n: int, seed: int):
    """``n`` seeded scenes as (description, question turns) dialogues without images."""
    from comalite.records import Dialogue
    from comalite.shapesworld import describe, qa_dialogue, sample_scene

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        out.append(Dialogue(turns=qa_dialogue(scene, rng, 5, 2), text=describe(scene)))
    return out


def family_turns(dialogues, family: str):
    """One dialogue per turn of the family's question templates."""
    from comalite.records import Dialogue
    from comalite.shapesworld import question_template

    return [Dialogue(turns=(t,), image=d.image, text=d.text) for d in dialogues for t in d.turns
            if question_template(t.question) in FAMILIES[family]]


def run(args) -> dict:
    """Train and score one run (``main``'s settings); its model and images live in a temporary folder."""
    work = Path(tempfile.mkdtemp(prefix="comalite-lookup-"))
    try:
        return run_in(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_in(work: Path, args) -> dict:
    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig, TrainConfig, load_config
    from comalite.objective import LMObjective, train_lm
    from comalite.records import Dialogue, Turn
    from comalite.shapesworld import DESCRIBE
    from comalite.tiny.build import accuracy_by_question_type, stage0_dialogues

    torch.set_num_threads(1)
    size = json.loads((Path(args.vision_from) / "tiny_report.json").read_text())["config"]["image_size"]
    cfg = load_config("tiny", ["data.language=2", f"data.image_size={size}"])
    model_dir = fresh_model(Path(args.vision_from), work / "model", cfg)
    pixels = size * size
    backbone = load_backbone(ModelConfig(backbone=str(model_dir), quantization="none", dtype="fp32", device="cpu",
                                         n_compress=0, gradient_checkpointing=False, min_pixels=pixels // 4,
                                         max_pixels=pixels, cpu_threads=1, vision_cache_mb=512),
                             train_adapter=None, train_compression=False)
    backbone.hf.requires_grad_(True)
    backbone.visual.requires_grad_(args.train_vision)
    extra = {}
    if args.whiten:
        whiten(backbone, size, args.whiten)
    if args.oracle:
        extra["oracle_probe_accuracy"] = use_oracle_tokens(backbone, size)
    if args.text:
        scenes = text_scenes(args.scenes, 0)
        train, test = family_turns(scenes, args.family), family_turns(text_scenes(args.scenes // 15, 7), args.family)
        if args.copy:
            train += [Dialogue(turns=(Turn(DESCRIBE, d.text),), text=d.text) for d in scenes]
            random.Random(0).shuffle(train)
    else:
        train = family_turns(stage0_dialogues(work / "train", args.scenes, 0, size, 5, 2), args.family)
        test = family_turns(stage0_dialogues(work / "test", args.scenes // 15, 7, size, 5, 2), args.family)
    objective = LMObjective(layout=cfg.stage1, compression_mask=False, with_compression=False, supervise="answers")
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.05,
                            save_every=0, log_every=50, weight_decay=0.01)
    start = time.perf_counter()
    history = train_lm(backbone, train, train_cfg, work / "run", objective, desc=args.tag)
    seconds = time.perf_counter() - start
    by_type = accuracy_by_question_type(backbone, train, test, cfg.stage1)
    return {"tag": args.tag, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "vision_from")},
            "vision_from": Path(args.vision_from).name, "train_sequences": len(train), "test_answers": len(test),
            "train_seconds": round(seconds, 1), "loss_every_50": [round(h["loss"], 4) for h in history[::50]],
            **extra,
            "by_type": {k: {"answers": v["answers"], "accuracy": v["accuracy"], "blind": v["blind"]}
                        for k, v in by_type.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-from", required=True, help="a tiny checkpoint whose pre-trained ViT to use")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="place")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scenes", type=int, default=6000, help="training scenes (1/15 as many held out)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--oracle", action="store_true", help="exact labels as image tokens")
    parser.add_argument("--text", action="store_true", help="the scene as its description, no image")
    parser.add_argument("--copy", action="store_true", help="with --text: add the description asked back")
    parser.add_argument("--whiten", type=float, default=0.0, help="whiten the image tokens, shrunk by this")
    parser.add_argument("--train-vision", action="store_true", help="unfreeze the ViT")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", help="JSON file (default results/stage0_lookup/<tag>.json)")
    args = parser.parse_args(argv)
    if args.copy and not args.text:
        parser.error("--copy needs --text")
    report = run(args)
    out = Path(args.out) if args.out else RESULTS / f"{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, row in report["by_type"].items():
        print(f"{100 * row['accuracy']:5.1f} % (blind {100 * row['blind']:4.1f}, {row['answers']} answers)  {name}")
    print(f"{report['train_seconds']:.0f} s of training; written to {out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(0 if main() else 1)
