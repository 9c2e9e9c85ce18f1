"""Can the tiny language model learn to look things up? Stage 0 on one family of questions, one lever at a time.

    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag base           # place lookups, ViT tokens
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag oracle --oracle  # exact labels as tokens
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag text --text      # the scene as a sentence
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag grid_captions --grid-captions 3000
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag text_pretrain --pretrain-text 600 --stage0-lr 1e-3
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag curriculum_600 --curriculum 600 --steps 2 --probe
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --tag point_layer1 --point 1  # grounding loss
    python benchmarks/bench_stage0_lookup.py --vision-from data/tiny-vlm --family all --tag all_point --point 1

Every build of the tiny VLM lands at the same ceiling (``benchmarks/README.md``, "Stage-0 levers"): it answers
what needs the scene as a whole (how many objects) and not what needs one object picked out ("Is there an object
at the top left?" stays at its blind rate). This script asks where that comes from, cheaply: a fresh language
model (the tiny recipe's tokenizer and LM, ``TinyConfig``) on the pre-trained ViT of the tiny checkpoint
``--vision-from`` (frozen), trained as stage 0 trains (``objective.train_lm``, answers supervised, one turn per
sequence) on 6,000 seeded scenes (``--scenes``; 400 held out), but only on the questions of ``--family``:

- ``place``: "Is there an object {place}?", "What color/shape is the object {place}?" (a lookup by position);
- ``object``: "Is there a {object}?", "What color is the {shape}?", "What shape is the {color} object?";
- ``relation``: "Is the {object} {relation} the {object}?" (two objects found, their places compared);
- ``all``: every short question (no description), as a full stage 0 asks them.

Levers (one per run): ``--lr``, ``--steps``; ``--oracle`` replaces each image token by the exact labels a linear
probe reads from it (row, column, colour, shape, size as one-hots: what the tokens hold, with no noise);
``--point LAYER`` adds stage 0's grounding loss (``tiny.pointing``: heads of that layer learn to attend, from
the position that predicts the answer, to the image tokens of the place or object asked about; ``--point-heads``
which head for questions naming a place, an object, a count); ``--text`` gives the scene as
its description instead of an image (``--copy`` adds the description asked back:
a dense copy task); ``--grid-captions N`` adds N scenes captioned place first (``grid_caption``);
``--pretrain-text STEPS`` first trains the LM on text lessons (``pretrain_on_text``; ``--stage0-lr`` then sets
the image stage's own rate); ``--curriculum STEPS`` first on the family's questions about one-object scenes, scored
on its own (``--probe`` adds linear probes of that phase, ``probe_places``); ``--one-relation STEPS`` first on
"left of" alone (relations); ``--lm FIELD=INT`` changes the
language model's shape; ``--whiten E`` whitens the image tokens (shrunk by E times the mean eigenvalue, through
the merger's last layer); ``--train-vision`` unfreezes the ViT. Held-out scenes, per question type, against the
honest blind (``tiny.build.blind_by_template``) and, for the place family, the bag of objects
(``bag_of_objects``). Numbers to ``--out`` (default
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
    "relation": ("Is the {object} {relation} the {object}?",),
    "all": (),  # every short question: what a full stage 0 asks (no description)
}


def fresh_model(vision_from: Path, out: Path, cfg, lm_shape: dict | None = None) -> Path:
    """A new tiny Qwen2-VL (the recipe's tokenizer and freshly initialised LM) carrying the pre-trained ViT of the
    tiny checkpoint ``vision_from`` (the ViT's shape and image size as its ``tiny_report.json`` records), saved to
    ``out``."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.shapesworld import text_corpus
    from comalite.tiny.build import TinyConfig, copy_vision, recipe_texts, tiny_qwen2vl_config, train_tokenizer

    built = json.loads((vision_from / "tiny_report.json").read_text())["config"]  # its ViT's shape and image size
    tc = TinyConfig(**{k: built[k] for k in ("hidden", "vision_depth", "vision_dim", "vision_heads",
                                             "vision_mlp_ratio", "image_size")}, **(lm_shape or {}))
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


GRID_PROMPT = "List the objects from the top left to the bottom right."


def grid_caption(scene) -> str:
    """The scene's objects in reading order, each place first: "top right: a large orange square. center: ..."
    Every phrase after a place is a lookup by that place, with the place words right before it."""
    return " ".join(f"{o.position}: a {o.size} {o.color} {o.shape}." for o in scene.objects)  # in reading order


def caption_dialogues(folder: Path, n: int, seed: int, image_size: int):
    """``n`` seeded scenes rendered under ``folder``, each asked ``GRID_PROMPT`` once."""
    from comalite.records import Dialogue, Turn
    from comalite.shapesworld import render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 21])
    out = []
    for i in range(n):
        scene = sample_scene(rng)
        path = folder / f"{i:06d}.png"
        render(scene, image_size).save(path, format="PNG", compress_level=1)
        out.append(Dialogue(turns=(Turn(GRID_PROMPT, grid_caption(scene)),), image=str(path)))
    return out


def bag_of_objects(n: int, seed: int) -> dict[str, float]:
    """What a model that knows which objects the scene holds but not where scores, per place question template, on
    ``n`` seeded scenes' questions: a colour or shape at a place answered with the scene's most common one (ties
    shared), existence at a place with the best answer for the scene's number of objects. Above this, a model
    picks out the object at the place."""
    from collections import Counter, defaultdict

    from comalite.shapesworld import qa_dialogue, question_template, sample_scene

    rng = np.random.default_rng([seed, 31])
    credit, by_count = defaultdict(list), defaultdict(Counter)
    for _ in range(n):
        scene = sample_scene(rng)
        for turn in qa_dialogue(scene, rng, 5, 2):
            template = question_template(turn.question)
            if template not in FAMILIES["place"]:
                continue
            field = "color" if "color" in template else "shape" if "shape" in template else None
            if field is None:  # existence: tallied per number of objects, credited below
                by_count[template, len(scene.objects)][turn.answer] += 1
                continue
            counts = Counter(getattr(o, field) for o in scene.objects)
            top = max(counts.values())
            modes = [v for v, c in counts.items() if c == top]
            credit[template].append((turn.answer in modes) / len(modes))
    for (template, _), answers in by_count.items():
        credit[template].extend([answers.most_common(1)[0][1] / sum(answers.values())] * sum(answers.values()))
    return {template: float(np.mean(values)) for template, values in credit.items()}


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
    """One dialogue per turn of the family's question templates (its image, text and meta kept)."""
    from dataclasses import replace

    from comalite.shapesworld import DESCRIBE, question_template

    return [replace(d, turns=(t,)) for d in dialogues for t in d.turns
            if question_template(t.question) in FAMILIES[family] or (family == "all" and t.question != DESCRIBE)]


def text_lessons(n: int, seed: int):
    """``n`` seeded scenes as text-only dialogues: "Describe the image in detail." answered by the scene's
    description, then its questions, every answer readable from the description above it."""
    from comalite.records import Dialogue, Turn
    from comalite.shapesworld import DESCRIBE

    return [Dialogue(turns=(Turn(DESCRIBE, d.text),) + d.turns) for d in text_scenes(n, seed)]


def pretrain_on_text(backbone, cfg, args, out: Path) -> dict:
    """Language pre-training before stage 0, as a real VLM's LLM has had: ``--pretrain-text`` steps of next-token
    loss on ``text_lessons`` (questions and answers supervised, every turn in context), so the LM first learns to
    find a thing in its context where the words themselves match. Returns its loss and, on held-out text lessons
    one question at a time after the description, the accuracy of the family's questions."""
    from dataclasses import replace

    from comalite.config import TrainConfig
    from comalite.objective import LMObjective, train_lm
    from comalite.records import Dialogue, Turn
    from comalite.shapesworld import DESCRIBE

    layout = replace(cfg.stage1, multi_turn=True)
    objective = LMObjective(layout=layout, compression_mask=False, with_compression=False, supervise="all")
    train_cfg = TrainConfig(steps=args.pretrain_text, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.05,
                            save_every=0, log_every=50, weight_decay=0.01)
    train = text_lessons(args.scenes, 3)
    history = train_lm(backbone, train, train_cfg, out, objective, desc="text pre-training")
    test = [Dialogue(turns=(Turn(DESCRIBE, d.turns[0].answer), t)) for d in text_lessons(args.scenes // 15, 8)
            for t in d.turns[1:] if t.question != DESCRIBE]
    by_type = accuracy_by_question_type_in_context(backbone, train, test, layout)
    return {"steps": args.pretrain_text, "loss_every_50": [round(h["loss"], 4) for h in history[::50]],
            "by_type": by_type}


def accuracy_by_question_type_in_context(backbone, train, test, layout) -> dict:
    """Per question template of each test dialogue's last turn: the accuracy of that answer alone (the earlier
    turns are context), next to the honest blind on the same questions."""
    from comalite.objective import answer_accuracy
    from comalite.records import Dialogue
    from comalite.sequence import ANSWER, CONTEXT, dialogue_examples
    from comalite.shapesworld import question_template
    from comalite.tiny.build import blind_by_template

    groups: dict[str, list] = {}
    for d in test:
        groups.setdefault(question_template(d.turns[-1].question), []).append(d)
    blind = blind_by_template([Dialogue(turns=d.turns[1:]) for d in train],
                              [Dialogue(turns=d.turns[-1:]) for d in test])
    out = {}
    for template, dialogues in sorted(groups.items()):
        examples = dialogue_examples(backbone.processor, dialogues, layout, with_compression=False)
        for ex in examples:  # only the last answer is scored: earlier answers become context
            last = max(i for i, r in enumerate(ex.roles) if r != ANSWER)
            ex.roles = [CONTEXT if r == ANSWER and i < last else r for i, r in enumerate(ex.roles)]
        out[template] = {"answers": len(dialogues), "blind": blind[template]["blind"],
                         "accuracy": answer_accuracy(backbone, examples, compression_mask=False)["accuracy"]}
    return out


def probe_places(backbone, turns, s1) -> dict:
    """Where does "Is there an object {place}?" break on one-object scenes? Layer by layer, at the position that
    predicts the answer, linear probes (fit on 70 % of ``turns``, scored on the rest) for the place the question
    asks (9-way), the place of the scene's one object (9-way) and the answer. Both places readable but not the
    answer: the LM holds both and fails to compare them; the asked place unreadable: it never takes it in."""
    from comalite.sequence import ANSWER, collate, dialogue_examples
    from comalite.shapesworld.scene import POSITIONS, position_name

    turns = [d for d in turns if d.turns[0].question.startswith("Is there an object ") and len(d.meta["cells"]) == 1]
    asked = [d.turns[0].question.removeprefix("Is there an object ").rstrip("?") for d in turns]
    labels = {"asked place": [POSITIONS.index(a.removeprefix("at the ").removeprefix("in the ")) for a in asked],
              "object's place": [POSITIONS.index(position_name(*d.meta["cells"][0])) for d in turns],
              "answer": [int(d.turns[0].answer == "yes") for d in turns]}
    layers = backbone.hf.model.language_model.layers
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, layer in enumerate(layers)]
    states: dict[int, list] = {k: [] for k in range(len(layers))}
    examples = dialogue_examples(backbone.processor, turns, s1, with_compression=False)
    backbone.eval()
    try:
        for start in range(0, len(examples), 32):
            batch = collate(examples[start:start + 32], backbone.processor.tokenizer.pad_token_id)
            with torch.no_grad():
                backbone.hidden_states(batch)
            at = (batch["roles"] == ANSWER).int().argmax(1) - 1  # the position whose output is the first answer token
            for k, hidden in captured.items():
                states[k].append(hidden[torch.arange(len(at)), at].float())
    finally:
        for hook in hooks:
            hook.remove()
    order = torch.randperm(len(turns), generator=torch.Generator().manual_seed(0))
    fit, held = order[: int(0.7 * len(turns))], order[int(0.7 * len(turns)):]
    out = {"turns": len(turns)}
    for k, chunks in states.items():
        x = torch.cat(chunks)
        x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
        for name, y in labels.items():
            y = torch.tensor(y)
            probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
            optimizer = torch.optim.Adam(probe.parameters(), 1e-2, weight_decay=1e-3)
            for _ in range(300):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(probe(x[fit]), y[fit]).backward()
                optimizer.step()
            with torch.no_grad():
                out.setdefault(name, []).append(round(float((probe(x[held]).argmax(-1) == y[held]).float().mean()), 3))
    return out


def run(args) -> dict:
    """Train and score one run (``main``'s settings); its model and images live in a temporary folder."""
    work = Path(tempfile.mkdtemp(prefix="comalite-lookup-"))
    try:
        return run_in(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_in(work: Path, args) -> dict:
    from comalite.backbone import load_backbone
    from dataclasses import replace

    from comalite.config import ModelConfig, TrainConfig, load_config
    from comalite.objective import LMObjective, train_lm
    from comalite.records import Dialogue, Turn
    from comalite.shapesworld import DESCRIBE
    from comalite.tiny.build import accuracy_by_question_type, stage0_dialogues
    from comalite.tiny.pointing import Pointing, PointingLoss

    torch.set_num_threads(1)
    size = json.loads((Path(args.vision_from) / "tiny_report.json").read_text())["config"]["image_size"]
    cfg = load_config("tiny", ["data.language=2", f"data.image_size={size}"])
    model_dir = fresh_model(Path(args.vision_from), work / "model", cfg, dict(args.lm))
    pixels = size * size
    backbone = load_backbone(ModelConfig(backbone=str(model_dir), quantization="none", dtype="fp32", device="cpu",
                                         n_compress=0, gradient_checkpointing=False, min_pixels=pixels // 4,
                                         max_pixels=pixels, cpu_threads=1, vision_cache_mb=512,
                                         attn_implementation="eager" if args.point is not None else "sdpa"),
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
        if args.grid_captions:
            train += caption_dialogues(work / "captions", args.grid_captions, 0, size)
            random.Random(0).shuffle(train)
    heads = dict(zip(("place_head", "object_head", "count_head"), args.point_heads))
    pointing = () if args.point is None else (
        PointingLoss(backbone, Pointing(layer=args.point, second_head=args.second_head, **heads)),)
    objective = LMObjective(layout=cfg.stage1, compression_mask=False, with_compression=False, supervise="answers",
                            auxiliary=pointing)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.stage0_lr or args.lr,
                            warmup_ratio=0.05, save_every=0, log_every=50, weight_decay=0.01)
    start = time.perf_counter()
    if args.curriculum:  # the family's questions on one-object scenes first: which object is the one to read is
        # never in doubt, only whether its place is the one asked about
        one = family_turns(stage0_dialogues(work / "one", args.scenes, 5, size, 5, 2, n_objects=1), args.family)
        history = train_lm(backbone, one, replace(train_cfg, steps=args.curriculum), work / "one_run", objective,
                           desc="one object")
        one_test = family_turns(stage0_dialogues(work / "one_test", args.scenes // 15, 9, size, 5, 2, n_objects=1),
                                args.family)
        extra["curriculum"] = {"steps": args.curriculum, "loss_every_50": [round(h["loss"], 4) for h in history[::50]],
                               "by_type": {k: {"answers": v["answers"], "accuracy": v["accuracy"], "blind": v["blind"]}
                                           for k, v in accuracy_by_question_type(backbone, one, one_test,
                                                                                 cfg.stage1).items()}}
        if args.probe:
            extra["probe"] = probe_places(backbone, family_turns(stage0_dialogues(
                work / "probe", max(40, args.scenes // 4), 11, size, 5, 2, n_objects=1), args.family), cfg.stage1)
            print("probes, layer by layer:", extra["probe"], flush=True)
        for name, row in extra["curriculum"]["by_type"].items():
            print(f"one object: {100 * row['accuracy']:5.1f} % (blind {100 * row['blind']:4.1f}, {row['answers']} "
                  f"answers)  {name}", flush=True)
    if args.one_relation:  # relations: "left of" alone first, where the answer needs the two places compared but
        # not the relation word; then all four, where reading the word flips an answer already computed
        left = [d for d in train if " left of " in d.turns[0].question]
        history = train_lm(backbone, left, replace(train_cfg, steps=args.one_relation), work / "left_run", objective,
                           desc="left of")
        rows = accuracy_by_question_type(backbone, left, [d for d in test if " left of " in d.turns[0].question],
                                         cfg.stage1)
        extra["one_relation"] = {"steps": args.one_relation, "relation": "left of",
                                 "loss_every_50": [round(h["loss"], 4) for h in history[::50]],
                                 "by_type": {k: {"answers": v["answers"], "accuracy": v["accuracy"],
                                                 "blind": v["blind"]} for k, v in rows.items()}}
        for name, row in extra["one_relation"]["by_type"].items():
            print(f"left of only: {100 * row['accuracy']:5.1f} % (blind {100 * row['blind']:4.1f}, {row['answers']} "
                  f"answers)  {name}", flush=True)
    if args.pretrain_text:
        extra["text_pretraining"] = pretrain_on_text(backbone, cfg, args, work / "text")
        for name, row in extra["text_pretraining"]["by_type"].items():
            print(f"text: {100 * row['accuracy']:5.1f} % (blind {100 * row['blind']:4.1f}, {row['answers']} answers)  "
                  f"{name}", flush=True)
    history = train_lm(backbone, train, train_cfg, work / "run", objective, desc=args.tag)
    seconds = time.perf_counter() - start
    by_type = accuracy_by_question_type(backbone, train, test, cfg.stage1)
    if args.family == "place":
        extra["bag_of_objects"] = bag_of_objects(3000, 0)
    return {"tag": args.tag, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "vision_from")},
            "vision_from": Path(args.vision_from).name, "train_sequences": len(train), "test_answers": len(test),
            "train_seconds": round(seconds, 1), "loss_every_50": [round(h["loss"], 4) for h in history[::50]],
            **extra,
            "by_type": {k: {"answers": v["answers"], "accuracy": v["accuracy"], "blind": v["blind"]}
                        for k, v in by_type.items()}}


def lm_field(text: str) -> tuple[str, int]:
    """``--lm``'s FIELD=INT, for a field of the language model's shape."""
    name, _, value = text.partition("=")
    if name not in ("layers", "heads", "kv_heads", "intermediate") or not value.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give layers, heads, kv_heads or intermediate as FIELD=INT")
    return name, int(value)


def point_heads(text: str) -> list[int]:
    """``--point-heads``'s P,O,C."""
    try:
        heads = [int(h) for h in text.split(",")]
    except ValueError:
        heads = []
    if len(heads) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three heads as P,O,C, e.g. 0,1,2 (-1: none)")
    return heads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-from", required=True, help="a tiny checkpoint whose pre-trained ViT to use")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="place")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scenes", type=int, default=6000, help="training scenes (1/15 as many held out)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--stage0-lr", type=float, default=0.0,
                        help="learning rate of the image stage alone (default --lr; after --pretrain-text, 3e-3 spikes)")
    parser.add_argument("--curriculum", type=int, default=0, metavar="STEPS",
                        help="first train this many steps on the family's questions about one-object scenes")
    parser.add_argument("--one-relation", type=int, default=0, metavar="STEPS",
                        help="relation family: first STEPS steps on \"left of\" questions alone, then all four")
    parser.add_argument("--probe", action="store_true",
                        help="with --curriculum: probe each layer for the asked place, the object's place, the answer")
    parser.add_argument("--grid-captions", type=int, default=0, metavar="N",
                        help="add N scenes captioned place first, in reading order (grid_caption)")
    parser.add_argument("--point", type=int, metavar="LAYER",
                        help="stage 0's grounding loss on head 0 of this layer (tiny.pointing; --text has no image)")
    parser.add_argument("--point-heads", type=point_heads, default=[0, 1, 2], metavar="P,O,C",
                        help="with --point: the heads that point for questions naming a place, an object, a count "
                             "(-1: none; default 0,1,2)")
    parser.add_argument("--second-head", type=int, default=-1, metavar="HEAD",
                        help="with --point: the head that points at a relation's second object (default -1: the "
                             "object head points at both)")
    parser.add_argument("--oracle", action="store_true", help="exact labels as image tokens")
    parser.add_argument("--text", action="store_true", help="the scene as its description, no image")
    parser.add_argument("--copy", action="store_true", help="with --text: add the description asked back")
    parser.add_argument("--whiten", type=float, default=0.0, help="whiten the image tokens, shrunk by this")
    parser.add_argument("--train-vision", action="store_true", help="unfreeze the ViT")
    parser.add_argument("--pretrain-text", type=int, default=0, metavar="STEPS",
                        help="first train the LM this many steps on text lessons (pretrain_on_text)")
    parser.add_argument("--lm", action="append", default=[], metavar="FIELD=INT", type=lm_field,
                        help="the language model's shape, e.g. --lm heads=8 --lm kv_heads=8 (TinyConfig's layers, "
                             "heads, kv_heads, intermediate)")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", help="JSON file (default results/stage0_lookup/<tag>.json)")
    args = parser.parse_args(argv)
    if args.copy and not args.text:
        parser.error("--copy needs --text")
    if args.one_relation and args.family != "relation":
        parser.error("--one-relation needs --family relation")
    if args.probe and not args.curriculum:
        parser.error("--probe needs --curriculum (it probes the one-object phase)")
    if args.text and (args.curriculum or args.grid_captions or args.point is not None):
        parser.error("--curriculum, --grid-captions and --point train on images, not with --text")
    report = run(args)
    out = Path(args.out) if args.out else RESULTS / f"{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    bag = report.get("bag_of_objects", {})
    for name, row in report["by_type"].items():
        print(f"{100 * row['accuracy']:5.1f} % (blind {100 * row['blind']:4.1f}, "
              + (f"bag of objects {100 * bag[name]:4.1f}, " if name in bag else "") + f"{row['answers']} answers)  {name}")
    print(f"{report['train_seconds']:.0f} s of training; written to {out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(0 if main() else 1)
