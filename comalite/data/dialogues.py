"""Stage-1 data for real images: multi-turn QA dialogues, from annotations or written by a VLM.

The paper had a larger VLM (Qwen2.5-VL-7B) write 3-5 retrieval-oriented questions per image and answer
them as one dialogue. ``generate_dialogue`` does the same with any Qwen2-VL-family checkpoint through
transformers ``generate``: first it asks for questions, then it answers each one with the image in view.
Where annotations already pair an image with questions and answers (MMEB-train's VQA-style subsets),
``dialogues_from_pairs`` turns them into dialogues without any generation.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch

from ..backbone import Backbone, load_backbone
from ..errors import DataFormatError
from ..progress import progress_bar
from ..records import IMAGE_PLACEHOLDER, Dialogue, TrainPair, Turn
from ..sequence import CONTEXT, Example, add_image, collate
from .images import load_image
from .io import read_dialogues, write_dialogues

log = logging.getLogger(__name__)
QUESTION_PROMPT = ("Write {n} short questions about this image that together pin down what it shows "
                   "(objects, attributes, counts, positions, text). One question per line.")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def dialogues_from_pairs(pairs: list[TrainPair], max_turns: int = 5) -> list[Dialogue]:
    """Group image->text pairs by image: each query text (placeholder removed) becomes a question and
    its positive text the answer. Pairs whose query has no image or whose target has one are skipped."""
    by_image: dict[str, list[Turn]] = {}
    for pair in pairs:
        if not pair.query.image or pair.positive.image or not pair.positive.text.strip():
            continue
        question = pair.query.text.replace(IMAGE_PLACEHOLDER, "").strip()
        by_image.setdefault(pair.query.image, []).append(Turn(question, pair.positive.text.strip()))
    return [Dialogue(turns=tuple(turns[:max_turns]), image=image) for image, turns in by_image.items()]


@torch.no_grad()
def _reply(backbone: Backbone, image_example: Example, prompt: str, max_new_tokens: int) -> str:
    """Greedy reply of the (chat-tuned) backbone to ``prompt`` about the image in ``image_example``."""
    processor = backbone.processor
    ex = dataclasses.replace(image_example, input_ids=list(image_example.input_ids), roles=list(image_example.roles))
    ex.add(processor.encode_text(f"{prompt}<|im_end|>\n<|im_start|>assistant\n"), CONTEXT)
    batch = collate([ex], processor.tokenizer.pad_token_id)
    ids = batch["input_ids"].to(backbone.device)
    out = backbone.hf.generate(
        input_ids=ids, attention_mask=batch["attention_mask"].to(backbone.device),
        pixel_values=ex.pixel_values.to(backbone.device, backbone.dtype),
        image_grid_thw=ex.image_grid_thw[None].to(backbone.device),
        mm_token_type_ids=(ids == processor.image_pad_id).int(), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=processor.im_end_id, pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def generate_dialogue(backbone: Backbone, image: str, *, n_questions: int = 4, questions: list[str] | None = None,
                      max_new_tokens: int = 64) -> Dialogue:
    """Ask the VLM for ``n_questions`` questions about ``image`` (or take the given ``questions``), then for
    each an answer with the image in view. Turns without an answer are dropped."""
    head = Example([], [])
    head.add(backbone.processor.encode_text("<|im_start|>user\n"), CONTEXT)
    add_image(head, backbone.processor, image)
    if head.pixel_values is None:  # the vision cache held its tokens, but transformers' generate wants patches
        head.pixel_values, _ = backbone.processor.encode_image(load_image(image))
    if questions is None:
        text = _reply(backbone, head, QUESTION_PROMPT.format(n=n_questions), max_new_tokens * n_questions)
        questions = [re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", line).strip() for line in text.splitlines()]
        questions = [q for q in questions if q][:n_questions]
    turns = tuple(Turn(q, _reply(backbone, head, q, max_new_tokens)) for q in questions)
    return Dialogue(turns=tuple(t for t in turns if t.answer), image=image)


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def build_stage1_data(cfg, *, images: str | Path, out: str | Path, generator: str = "", limit: int = 0,
                      n_questions: int = 4, questions: list[str] | None = None, save_every: int = 50) -> int:
    """Write a stage-1 jsonl for every image under ``images`` using ``generator`` (default: the preset's
    backbone), which writes ``n_questions`` questions per image or answers the fixed ``questions``.
    Resumes: images already in ``out`` are skipped; the file is rewritten atomically every ``save_every``
    images. Returns the number of dialogues in ``out``; a generator that answers nothing at all is an error."""
    out, image_root = Path(out), Path(images)
    paths = find_images(image_root)[:limit or None]
    done = read_dialogues(out, image_root) if out.exists() else []
    seen = {d.image for d in done}
    todo = [p for p in paths if str(p) not in seen]
    model_cfg = dataclasses.replace(cfg.model, backbone=generator or cfg.model.backbone)
    backbone = load_backbone(model_cfg, train_adapter=None, train_compression=False).eval()
    for i, path in enumerate(progress_bar(todo, desc="stage-1 dialogues"), 1):
        dialogue = generate_dialogue(backbone, str(path), n_questions=n_questions, questions=questions)
        if dialogue.turns:
            done.append(dialogue)
        else:
            log.warning("no usable question/answer for %s; skipped", path)
        if done and (i % save_every == 0 or i == len(todo)):
            out.parent.mkdir(parents=True, exist_ok=True)
            write_dialogues(done, out, image_root)
    if not done:
        raise DataFormatError(f"{generator or cfg.model.backbone} wrote no usable question and answer for any of "
                              f"the {len(todo)} images under {image_root}: use a chat-tuned VLM (--generator) or give "
                              "the questions to answer (--question)")
    return len(done)
