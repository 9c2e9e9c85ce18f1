"""The tiny preset's backbone: a real ``Qwen2VLForConditionalGeneration``, small enough for a laptop CPU.

The real recipe starts from an instruction-tuned VLM that already understands images. The tiny model
earns that role honestly:
1. a byte-level BPE tokenizer is trained on ShapesWorld's text, with Qwen's special tokens and chat
   template, and paired with Qwen2-VL's own image processor;
2. a Qwen2-VL with the same architecture as the 2B (ViT with 2x2 patch merger, M-RoPE decoder, tied
   embeddings), only narrower and shallower, is initialised from a seed;
3. its ViT is pre-trained alone so that each image token tells where it is and what object is centred
   there (``comalite.tiny.vision``), as the real model's ViT was pre-trained before the VLM: question
   answering alone teaches a from-scratch ViT too slowly, and the model stayed image-blind;
4. the model is saved like a hub checkpoint, then "stage 0": a generative pre-training on ShapesWorld
   QA (ordinary causal attention, ViT frozen, every language-model parameter trained, no compression
   tokens) through the same loader, sequence builder, objective and training loop that stage 1 uses. Its
   data: the stage-1 training dialogues plus ``stage0_scenes`` more scenes drawn for it
   (``stage0_dialogues``), each scene's turns packed in one sequence where no turn sees another (the
   mask's ``separate_turns``): many answers a step, at every position a stage-1 dialogue puts them. Beside
   the next-token loss, a grounding loss (``comalite.tiny.pointing``) teaches attention heads to look at the
   cells a question is about, as a real VLM learned from pre-training on boxed data: from answers alone the
   fresh LM never learns to look things up;
5. the result is saved with ``save_pretrained`` and from then on loaded exactly like a real checkpoint.
``tiny_report.json`` beside it records what the ViT's tokens hold and the held-out answer accuracy, overall
and by question type, against an image-blind baseline.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ..backbone import load_backbone, use_cpu_threads
from ..checkpoints import write_checksums
from ..config import Config, ModelConfig, TrainConfig
from ..data.sources import data_source, stage1_dialogues
from ..objective import LMObjective, answer_accuracy, generate_answer, train_lm, without_last_answer
from ..processor import VLProcessor
from ..records import Dialogue
from ..sequence import dialogue_examples
from ..shapesworld import DESCRIBE, qa_dialogue, question_template, render, sample_scene, text_corpus
from ..shapesworld.asking import answer_set
from ..shapesworld.language import description_hits
from .pointing import Pointing, PointingLoss
from .vision import pretrain_vision, scale_image_tokens

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyConfig:
    """How the tiny VLM is built. Defaults: ~1.9M parameters (1.0M of them the ViT), 16 LLM tokens per 112 px image."""

    seed: int = 0
    vocab_size: int = 640             # BPE vocabulary trained on ShapesWorld text
    spare_rows: int = 64              # embedding rows left free, like the real 2B's (room for <|cmp_i|>)
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_depth: int = 4
    vision_dim: int = 128
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    image_size: int = 112
    stage0: TrainConfig = None        # set in __post_init__
    supervise: str = "answers"        # stage-0 loss on answers only: questions are templates, answers need the image
    pack_turns: bool = True           # a scene's turns in one sequence, each hidden from the others (the mask's
                                      # separate_turns): ~5x the answers per sequence, no copying between turns,
                                      # and answers at the later positions of stage 1's dialogues (one turn per
                                      # sequence: 81 % of turn-1 answers, 16 % of turn-5 ones in whole
                                      # dialogues). Plain multi-turn sequences let answers be copied ("where"
                                      # fell 53 -> 20 %).

    vision: TrainConfig = None        # ViT pre-training on token labels; set in __post_init__
    vision_scenes: int = 0            # seeded scenes for it, re-used across epochs (0: new scenes every step)
    vision_heldout: int = 500         # scenes that only measure it
    vision_objects: int | None = 4    # objects per pre-training scene (None: 1-4, as ShapesWorld draws them);
                                      # 4: 1.6x more labelled objects per (costly) ViT step
    threads: int = 1                  # torch CPU threads for the build: its matrices are too small to share, and
                                      # on a busy CPU extra threads make steps 10-100x slower (benchmarks/)
    stage0_scenes: int = 20000        # more seeded scenes for stage 0 beyond the stage-1 training dialogues
    stage0_turns: int = 5             # questions asked about each (``stage0_dialogues``)
    stage0_trains_vision: bool = False  # False: the pre-trained ViT stays frozen in stage 0 (as in LLaVA),
                                        # so the LLM learns to read it instead of the ViT drifting
    pointing: Pointing = field(default_factory=Pointing)  # stage 0's grounding loss on a few attention heads
                                      # (tiny.pointing: without it the fresh LM never learns to look things up)
    image_token_norm: float = 0.0     # rescale the pre-trained ViT's tokens to this mean norm before stage 0
                                      # (text embeddings sit near 1; tiny.vision.scale_image_tokens); 0: as trained

    def __post_init__(self):
        if self.stage0 is None:
            self.stage0 = TrainConfig(steps=3000, batch_size=32, lr=3e-3, warmup_ratio=0.05, save_every=100,
                                      log_every=20, weight_decay=0.01)
        if self.vision is None:
            self.vision = TrainConfig(steps=1000, batch_size=64, lr=3e-3, warmup_ratio=0.05, save_every=0,
                                      log_every=50, weight_decay=0.01)

    @classmethod
    def smoke(cls) -> "TinyConfig":
        """Short stages for tests and notebooks' smoke mode: a working checkpoint, not a good VLM."""
        short = dict(lr=3e-3, warmup_ratio=0.05, save_every=0, log_every=50)
        # The first build's small ViT on a fixed set of scenes: the shipped one's costs ~4x more per step.
        # One turn a sequence: packed, its 360 scenes are memorised (stage-0 loss 0.003; 28.9 % of held-out
        # answers one turn at a time against 30.2 % blind, where one turn a sequence reads 36.8 %).
        return cls(stage0=TrainConfig(steps=500, batch_size=32, **short), pack_turns=False,
                   vision=TrainConfig(steps=250, batch_size=64, **short),
                   vision_depth=2, vision_dim=64, vision_scenes=1500, vision_objects=None, vision_heldout=200,
                   stage0_scenes=0)


def recipe_texts(cfg: Config, copies: int = 200) -> list[str]:
    """The fixed texts the recipe writes around ShapesWorld's (the chat roles, stage 1's prompts), ``copies`` times
    each so that BPE merges them into a few tokens: left out, "Summarize above image in a few words." and
    "assistant" stay one byte a token, ~20 of a stage-1 turn's ~50 tokens."""
    return ["user", "assistant", cfg.stage1.prompt, cfg.stage1.text_prompt] * copies


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (like Qwen's) with Qwen's special tokens and a Qwen-style chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_qwen2vl_config(tokenizer, tc: TinyConfig) -> Qwen2VLConfig:
    """A Qwen2-VL config of the real architecture at toy width (text hidden = vision merger output)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = tc.hidden // tc.heads
    # M-RoPE splits the head_dim/2 rotary pairs over (time, height, width) as the 2B does: 1/4, 3/8, 3/8.
    section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    text = dict(vocab_size=len(tokenizer) + tc.spare_rows, hidden_size=tc.hidden, intermediate_size=tc.intermediate,
                num_hidden_layers=tc.layers, num_attention_heads=tc.heads, num_key_value_heads=tc.kv_heads,
                max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "mrope_section": section},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=True)
    vision = dict(depth=tc.vision_depth, embed_dim=tc.vision_dim, hidden_size=tc.hidden, num_heads=tc.vision_heads,
                  mlp_ratio=tc.vision_mlp_ratio, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)


def stage0_dialogues(folder: Path, n: int, seed: int, image_size: int, n_turns: int,
                     language: int = 1, n_objects: int | None = None) -> list[Dialogue]:
    """``n`` more ShapesWorld scenes for stage 0, drawn as stage 1's are (1-4 objects, never a held-out
    colour/shape combination) but from a stream of their own, their images written as PNG under ``folder``,
    each asked ``n_turns`` questions of different types (no description): stage 0 then sees many more
    distinct images than the stage-1 set's, each a few times instead of many times. ``language``: ShapesWorld's
    question language (``DataConfig.language``; 2 = balanced answers); ``n_objects``: that many objects in every
    scene (default 1-4)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(b"tiny stage 0")])
    out = []
    for i in range(n):
        scene = sample_scene(rng, n_objects=n_objects)
        path = folder / f"{i:06d}.png"
        render(scene, image_size).save(path, format="PNG", compress_level=1)
        out.append(Dialogue(turns=qa_dialogue(scene, rng, n_turns, language), image=str(path),
                            meta={"cells": [(o.row, o.col) for o in scene.objects]}))  # for probes of place
    return out


BLIND_BASELINE = ("per question template (shapesworld.question_template): the template's most frequent training "
                  "answer, never below 1/|answer set| (a guess: yes/no 0.5, colours 1/7, counts 1/5)")


def blind_by_template(train: list[Dialogue], test: list[Dialogue]) -> dict[str, dict]:
    """The image-blind baseline per question template on ``test``'s turns: answer every question of a template
    with that template's most frequent answer in ``train`` (its answer prior), and credit at least the uniform
    rate 1/|answer set| of the template (``shapesworld.language.answer_set``; 0 for descriptions), since guessing
    among the template's answers reaches it without the image either. Per template: ``answers``, ``prior_answer``,
    ``prior`` (the prior's accuracy), ``uniform`` and ``blind`` = max(prior, uniform).

    A template, not an exact question string: a per-string prior memorises e.g. that "Is the red circle left
    of the blue square?" was "no" in training, and scored 2 % on relations where a coin scores 50 %."""
    priors: dict[str, Counter] = {}
    for d in train:
        for t in d.turns:
            priors.setdefault(question_template(t.question), Counter())[t.answer] += 1
    groups: dict[str, list] = {}
    for d in test:
        for t in d.turns:
            groups.setdefault(question_template(t.question), []).append(t)
    out = {}
    for template, turns in groups.items():
        prior = priors.get(template)
        best = prior.most_common(1)[0][0] if prior else None
        rate = sum(t.answer == best for t in turns) / len(turns)
        size = len(answer_set(turns[0].question))
        uniform = 1 / size if size else 0.0
        out[template] = {"answers": len(turns), "prior_answer": best, "prior": rate, "uniform": uniform,
                         "blind": max(rate, uniform)}
    return out


def blind_baseline(train: list[Dialogue], test: list[Dialogue]) -> float:
    """The image-blind baseline over all of ``test``'s turns (``blind_by_template``, weighted by answers): the
    bar a VLM has to clear to show it uses the picture."""
    by_template = blind_by_template(train, test)
    n = sum(t["answers"] for t in by_template.values())
    return sum(t["blind"] * t["answers"] for t in by_template.values()) / max(1, n)


def accuracy_by_question_type(backbone, train: list[Dialogue], heldout: list[Dialogue], s1) -> dict[str, dict]:
    """Held-out answer accuracy per question type (``shapesworld.question_template``), one QA turn per
    sequence, next to the image-blind baseline on the same turns (``blind_by_template``: the template's answer
    prior, never below a uniform guess): where the model looks, and where it only learned the answer prior."""
    groups: dict[str, list[Dialogue]] = {}
    for d in heldout:
        for turn in d.turns:
            groups.setdefault(question_template(turn.question), []).append(replace(d, turns=(turn,)))
    blind = blind_by_template(train, heldout)
    out = {}
    for template, turns in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        examples = dialogue_examples(backbone.processor, turns, s1, with_compression=False)
        b = blind[template]
        out[template] = {"answers": len(turns), "blind": b["blind"], "prior": b["prior"], "uniform": b["uniform"],
                         "prior_answer": b["prior_answer"],
                         "accuracy": answer_accuracy(backbone, examples, compression_mask=False)["accuracy"]}
    return out


def description_accuracy(backbone, heldout: list[Dialogue], s1, max_new_tokens: int = 96) -> dict[str, float | int]:
    """The free description scored per thing it states: each held-out "Describe the image in detail." turn, alone
    with its image, answered by greedy decoding (``objective.generate_answer``) and read against the true one
    (``shapesworld.language.description_hits``): the fraction of object counts, and of the true objects' sizes,
    colours, shapes and places, said right. Exact match of a whole description is ~0 and says little."""
    turns = [replace(d, turns=(t,)) for d in heldout for t in d.turns if t.question == DESCRIBE]
    totals: dict[str, list[int]] = {}
    for dialogue, example in zip(turns, dialogue_examples(backbone.processor, turns, s1, with_compression=False)):
        said = generate_answer(backbone, without_last_answer(example)[0], compression_mask=False,
                               max_new_tokens=max_new_tokens)
        for stated, (right, asked) in description_hits(said, dialogue.turns[0].answer).items():
            total = totals.setdefault(stated, [0, 0])
            total[0] += right
            total[1] += asked
    return {"descriptions": len(turns), **{stated: right / max(1, asked) for stated, (right, asked) in totals.items()}}


def copy_vision(visual: torch.nn.Module, source: Path) -> dict:
    """Load the pre-trained ViT of the tiny checkpoint ``source`` into ``visual`` (same vision config) and return
    what its ``tiny_report.json`` measured of it: stage-0 studies reuse one ViT instead of pre-training it again."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(source) / "model.safetensors"))
    state = {k.removeprefix("model.").removeprefix("visual."): v for k, v in weights.items()
             if k.removeprefix("model.").startswith("visual.")}
    visual.load_state_dict(state, strict=True)
    report = json.loads((Path(source) / "tiny_report.json").read_text())
    return {"token_accuracy": report["vision_token_accuracy"], "first_loss": report["vision_first_loss"],
            "last_loss": report["vision_last_loss"]}


def build_tiny_vlm(out_dir: str | Path, tc: TinyConfig, data_cfg: Config, vision_from: str | Path | None = None) -> Path:
    """Build, stage-0 train and save the tiny VLM into ``out_dir``; stage 0 reads ``data_cfg``'s dialogues.
    ``vision_from``: a tiny checkpoint whose pre-trained ViT to reuse (its vision settings must be ``tc``'s)."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    use_cpu_threads(tc.threads)
    torch.manual_seed(tc.seed)
    language = data_source(data_cfg).question_language()
    tokenizer = train_tokenizer(text_corpus(seed=tc.seed, language=language) + recipe_texts(data_cfg), tc.vocab_size)
    pixels = tc.image_size * tc.image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels // 4, max_pixels=pixels)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tokenizer, tc))

    work = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    init_dir = work / "init"
    clock = time.perf_counter()
    if vision_from:
        vision = copy_vision(model.model.visual, Path(vision_from))
    else:
        vision = pretrain_vision(model.model.visual, VLProcessor(tokenizer, image_processor), tc.vision,
                                 work / "vision", n_scenes=tc.vision_scenes, n_heldout=tc.vision_heldout,
                                 image_size=tc.image_size, n_objects=tc.vision_objects)
    if tc.image_token_norm:
        vision["token_scale"] = scale_image_tokens(model.model.visual, VLProcessor(tokenizer, image_processor),
                                                   tc.image_size, tc.image_token_norm, seed=tc.seed)
    vision_seconds = time.perf_counter() - clock
    model.save_pretrained(str(init_dir))
    tokenizer.save_pretrained(str(init_dir))
    image_processor.save_pretrained(str(init_dir))

    # The ViT is frozen in stage 0 (unless stage0_trains_vision): each image through it once (comalite.vision_cache).
    mcfg = ModelConfig(backbone=str(init_dir), quantization="none", dtype="fp32", device="cpu", n_compress=0,
                       gradient_checkpointing=False, min_pixels=pixels // 4, max_pixels=pixels, cpu_threads=tc.threads,
                       vision_cache_mb=1024, attn_implementation="eager" if tc.pointing.weight else "sdpa")
    backbone = load_backbone(mcfg, train_adapter=None, train_compression=False)
    backbone.hf.requires_grad_(True)
    backbone.visual.requires_grad_(tc.stage0_trains_vision)
    dialogues = stage1_dialogues(data_cfg)
    n_heldout = data_cfg.stage1.heldout  # the same dialogues stage 1 holds out
    train, heldout = dialogues[:-n_heldout], dialogues[-n_heldout:]
    stage0 = train + stage0_dialogues(work / "stage0_images", tc.stage0_scenes, tc.seed, tc.image_size,
                                      tc.stage0_turns, language)
    if not tc.pack_turns:  # stage 0 only: the report splits the held-out dialogues itself
        stage0 = [Dialogue(turns=(turn,), image=d.image, text=d.text) for d in stage0 for turn in d.turns]
    clock = time.perf_counter()
    pointing = (PointingLoss(backbone, tc.pointing),) if tc.pointing.weight else ()
    stage0_objective = LMObjective(layout=data_cfg.stage1, compression_mask=False, with_compression=False,
                                   supervise=tc.supervise, separate_turns=tc.pack_turns,  # no compression tokens
                                   auxiliary=pointing)
    try:
        history = train_lm(backbone, stage0, tc.stage0, work / "stage0", stage0_objective, desc="stage 0")
    finally:
        for aux in pointing:
            aux.close()
    stage0_seconds = time.perf_counter() - clock
    heldout_examples = dialogue_examples(backbone.processor, heldout, data_cfg.stage1, with_compression=False)
    accuracy = answer_accuracy(backbone, heldout_examples, compression_mask=False)
    by_type = accuracy_by_question_type(backbone, stage0, heldout, data_cfg.stage1)  # priors: what stage 0 saw
    descriptions = description_accuracy(backbone, heldout, data_cfg.stage1)
    short = {k: v for k, v in by_type.items() if k != DESCRIBE}
    n_short = sum(t["answers"] for t in short.values())
    n_turns = sum(t["answers"] for t in by_type.values())

    backbone.hf.save_pretrained(str(work / "model"))
    backbone.processor.save_pretrained(str(work / "model"))
    report = {
        "vision_token_accuracy": vision["token_accuracy"], "vision_first_loss": vision["first_loss"],
        "vision_last_loss": vision["last_loss"], "vision_token_scale": vision.get("token_scale", 1.0),
        # whole held-out dialogues, every turn in context (what stage 1 measures through its tokens) ...
        "heldout_answer_accuracy": accuracy["accuracy"], "heldout_answers": accuracy["answers"],
        "heldout_answer_loss": accuracy["loss"],
        # the honest blind baseline (per template, >= uniform); reports before it held a per-question-string one
        "heldout_blind_accuracy": blind_baseline(stage0, heldout), "blind_baseline": BLIND_BASELINE,
        "language": language,
        # ... and one QA turn per sequence (each answer right after its image), overall and by question type
        "heldout_turn_accuracy": sum(t["accuracy"] * t["answers"] for t in by_type.values()) / n_turns,
        "heldout_turn_blind": sum(t["blind"] * t["answers"] for t in by_type.values()) / n_turns,
        "heldout_by_question_type": by_type,
        # ... the short answers alone (every type but the free description), and the description per attribute
        "heldout_short_accuracy": sum(t["accuracy"] * t["answers"] for t in short.values()) / max(1, n_short),
        "heldout_short_blind": sum(t["blind"] * t["answers"] for t in short.values()) / max(1, n_short),
        "heldout_description": descriptions,
        "stage0_first_loss": history[0]["loss"], "stage0_last_loss": history[-1]["loss"],
        "vision_from": str(vision_from) if vision_from else None,
        "vision_seconds": round(vision_seconds, 1), "stage0_seconds": round(stage0_seconds, 1),
        "stage0_sequences": len(stage0),
        "parameters": sum(p.numel() for p in backbone.hf.parameters()),
        "build_seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
        "config": asdict(tc)}
    (work / "model" / "tiny_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_checksums(work / "model")
    shutil.rmtree(out_dir, ignore_errors=True)
    (work / "model").rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    log.info("tiny VLM built in %s: %s", out_dir, report)
    return out_dir
