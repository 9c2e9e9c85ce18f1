"""Token layouts of the two stages, built segment by segment so every position knows its role.

Stage 1 (compression pre-training), one dialogue per sequence::

    <|im_start|>user\\n <vision span> Summarize above image in a few words.   role CONTEXT
    <|cmp_0|> ... <|cmp_K-1|>                                                role COMPRESS
    <|im_end|>\\n<|im_start|>user\\n Q1 <|im_end|>\\n<|im_start|>assistant\\n    role QUESTION
    A1 <|im_end|>                                                           role ANSWER
    \\n<|im_start|>user\\n Q2 <|im_end|>\\n<|im_start|>assistant\\n              role QUESTION
    A2 <|im_end|> ...                                                       ANSWER, ...

Stage 2 (embedding), queries and candidates alike, no chat template::

    instruction/text with <|image_1|> replaced by the vision span           role CONTEXT
    <|cmp_0|> ... <|cmp_K-1|>                                                role COMPRESS

The roles drive everything downstream: the attention mask (``comalite.mask``), the supervised tokens
(``supervised_positions``) and the pooled positions (``comalite.embedding``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from PIL import Image

from .data.images import load_image
from .errors import DataFormatError
from .prefetch import ImagePrefetcher
from .processor import VLProcessor
from .records import IMAGE_PLACEHOLDER, Dialogue, EmbedInput
from .roles import ANSWER, COMPRESS, CONTEXT, PAD, QUESTION

log = logging.getLogger(__name__)


TRUNCATED: dict[str, set[str]] = {"stage1.max_length": set(), "model.embed_max_length": set()}
"""The inputs cut to fit so far in this process (``too_long="truncate"``), by the setting that cut them; each is
logged once, with the running count."""


def _truncated(setting: str, name: str, message: str) -> None:
    seen = TRUNCATED.setdefault(setting, set())
    if name not in seen:
        seen.add(name)
        log.warning("%s (%d input(s) cut at %s so far)", message, len(seen), setting)


def _name(origin: str, text: str) -> str:
    """How a message names an input: where a reader found it, else the start of its text."""
    if origin:
        return origin
    return f"the input {text[:60]!r}" + ("..." if len(text) > 60 else "")


@dataclass
class Example:
    """One tokenised sequence: ids, a role per id, and its image (if any): its file (None for an in-memory
    image), its grid (t, h, w) and its patches (None when the processor's vision cache already holds the
    image's tokens)."""

    input_ids: list[int]
    roles: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    image: str | None = None

    def add(self, ids: list[int], role: int) -> None:
        self.input_ids += ids
        self.roles += [role] * len(ids)


def add_image(ex: Example, processor: VLProcessor, image: str | Image.Image, origin: str = "",
              images: ImagePrefetcher | None = None) -> None:
    """Append the vision span of ``image`` (role context) and keep its patches. ``image`` is a file path or
    an in-memory PIL image; the latter has no file identity (path, size, mtime) to key the vision cache by,
    so it is never cached and leaves ``ex.image`` None. An unreadable image file raises DataFormatError
    naming the file and, given the input's ``origin``, the row that uses it. ``images``: patches prepared
    ahead (``comalite.prefetch``), taken when the vision cache does not hold the image."""
    path = None if isinstance(image, Image.Image) else image
    prepared = images.take(path) if images is not None and path is not None else None
    cache = processor.vision_cache if path is not None else None
    cached = cache.get(path) if cache is not None else None
    if cached is not None:
        pixel_values, grid = None, cached[0]
    elif prepared is not None:
        pixel_values, grid = prepared
    else:
        pixel_values, grid = processor.encode_image(image if path is None else load_image(path, origin))
    ex.pixel_values, ex.image_grid_thw, ex.image = pixel_values, grid, path
    ex.add(processor.image_span(grid), CONTEXT)


def embed_example(processor: VLProcessor, item: EmbedInput, *, with_compression: bool = True,
                  max_length: int = 0, too_long: str = "refuse", images: ImagePrefetcher | None = None) -> Example:
    """Stage-2 input: text with ``<|image_1|>`` replaced by the image, then the compression tokens.

    An image without a placeholder goes first; a placeholder without an image is an error (it would
    silently become text). The text around the placeholder is kept exactly, spaces included, which gives
    the same ids as tokenising the whole string with the vision span written in.

    ``max_length`` (``model.embed_max_length``; 0 = none) bounds the tokens: a longer input raises
    DataFormatError naming it (its file and row when a reader found it) or, with ``too_long="truncate"``,
    loses the end of its text (the image and the compression tokens stay) and is counted in the log.
    """
    n_placeholders = item.text.count(IMAGE_PLACEHOLDER)
    if n_placeholders > 1:
        raise ValueError(f"input has {n_placeholders} image placeholders; comalite supports one: {item.text!r}")
    if n_placeholders and not item.image:
        raise ValueError(f"input text has {IMAGE_PLACEHOLDER} but no image path: {item.text!r}")
    ex = Example([], [])
    before, _, after = item.text.partition(IMAGE_PLACEHOLDER) if n_placeholders else ("", "", item.text)
    before_ids, after_ids = processor.encode_text(before), processor.encode_text(after)
    compress = processor.compress_ids if with_compression else []
    ex.add(before_ids, CONTEXT)
    if item.image:
        add_image(ex, processor, item.image, item.origin, images)
    n = len(ex.input_ids) + len(after_ids) + len(compress)
    if max_length and n > max_length:
        over, text = n - max_length, len(before_ids) + len(after_ids)
        name = _name(item.origin, item.text)
        if too_long != "truncate" or over > text:
            image = len(ex.input_ids) - len(before_ids)
            why = ("Cutting its text cannot make it fit: raise model.embed_max_length or lower model.max_pixels"
                   if too_long == "truncate" else "Shorten the text, raise model.embed_max_length, or set "
                   "model.embed_too_long=truncate to cut the text")
            raise DataFormatError(f"{name}: {n:,} tokens ({text:,} of text, {image:,} of image, {len(compress)} "
                                  f"compression), over model.embed_max_length={max_length:,}. {why}.")
        cut_after = min(over, len(after_ids))
        after_ids = after_ids[:len(after_ids) - cut_after]
        cut_before = over - cut_after
        if cut_before:  # the text before the image loses its end: the image's span moves up, intact
            kept = len(before_ids) - cut_before
            ex.input_ids, ex.roles = ex.input_ids[:kept] + ex.input_ids[len(before_ids):], \
                ex.roles[:kept] + ex.roles[len(before_ids):]
        _truncated("model.embed_max_length", name, f"{name}: {n:,} tokens, over model.embed_max_length="
                   f"{max_length:,}: the last {over:,} text tokens cut (model.embed_too_long=truncate)")
    ex.add(after_ids, CONTEXT)
    ex.add(compress, COMPRESS)
    if not ex.input_ids:
        raise ValueError("empty input: give a text, an image or both")
    return ex


def dialogue_example(processor: VLProcessor, dialogue: Dialogue, *, prompt: str, text_prompt: str,
                     multi_turn: bool = True, with_compression: bool = True, max_length: int = 0,
                     too_long: str = "refuse", images: ImagePrefetcher | None = None) -> Example:
    """Stage-1 sequence (and stage 0's, with ``with_compression=False``): the layout in the module doc.

    ``max_length`` (``stage1.max_length``; 0 = none) bounds the tokens: a longer dialogue raises
    DataFormatError naming its file and line or, with ``too_long="truncate"``, keeps the first turns that fit
    (counted in the log; refused still when not even the first one fits)."""
    ex = Example([], [])
    ex.add(processor.encode_text("<|im_start|>user\n"), CONTEXT)
    if dialogue.image:
        add_image(ex, processor, dialogue.image, dialogue.origin, images)
        ex.add(processor.encode_text(prompt), CONTEXT)
    else:
        ex.add(processor.encode_text(dialogue.text + "\n" + text_prompt), CONTEXT)
    if with_compression:
        ex.add(processor.compress_ids, COMPRESS)
    turns = dialogue.turns if multi_turn else dialogue.turns[:1]
    if not turns:
        raise ValueError("a stage-1 dialogue needs at least one question/answer turn")
    ends = []  # the length after each turn
    for k, turn in enumerate(turns):
        # The first turn closes the image's user message; later ones follow an answer's own <|im_end|>.
        opening = "<|im_end|>\n" if k == 0 else "\n"
        ex.add(processor.encode_text(f"{opening}<|im_start|>user\n{turn.question}<|im_end|>\n"
                                     "<|im_start|>assistant\n"), QUESTION)
        # The answer includes its closing <|im_end|>: predicting it is how the model learns to stop.
        ex.add(processor.encode_text(turn.answer) + [processor.im_end_id], ANSWER)
        ends.append(len(ex.input_ids))
    if max_length and ends[-1] > max_length:
        name = _name(dialogue.origin, dialogue.text or turns[0].question)
        fit = sum(end <= max_length for end in ends)
        if too_long != "truncate" or not fit:
            why = ("Not even its first turn fits: shorten it or raise stage1.max_length" if too_long == "truncate" else
                   "Shorten the dialogue" + (f" or split its {len(turns)} turns over several lines" if len(turns) > 1
                                             else "") + ", raise stage1.max_length, or set stage1.too_long=truncate "
                   "to keep the first turns that fit")
            context = ex.roles.count(CONTEXT) + ex.roles.count(COMPRESS)
            raise DataFormatError(f"{name}: {ends[-1]:,} tokens (image/text and prompt {context:,}, turn 1 "
                                  f"{ends[0] - context:,}), over stage1.max_length={max_length:,}. {why}.")
        ex.input_ids, ex.roles = ex.input_ids[:ends[fit - 1]], ex.roles[:ends[fit - 1]]
        _truncated("stage1.max_length", name, f"{name}: {ends[-1]:,} tokens, over stage1.max_length={max_length:,}: "
                   f"kept the first {fit} of {len(turns)} turns (stage1.too_long=truncate)")
    return ex


def dialogue_examples(processor, dialogues: list[Dialogue], s1, *, with_compression: bool = True,
                      images: ImagePrefetcher | None = None) -> list[Example]:
    """``dialogue_example`` for each dialogue, with the prompts and turn setting of ``s1`` (a
    ``Stage1Config``)."""
    return [dialogue_example(processor, d, prompt=s1.prompt, text_prompt=s1.text_prompt,
                             multi_turn=s1.multi_turn, with_compression=with_compression,
                             max_length=getattr(s1, "max_length", 0), too_long=getattr(s1, "too_long", "refuse"),
                             images=images)
            for d in dialogues]


def collate(examples: list[Example], pad_id: int, *, pad_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of examples into a batch: ids, 2D attention mask, roles (PAD = -1), and per image (in
    order): ``image_grid_thw`` (stacked), ``images`` (file paths; None for an in-memory image) and
    ``image_pixels`` (patches or None)."""
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', not {pad_side!r}")
    length = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    roles = torch.full((len(examples), length), PAD, dtype=torch.long)
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        span = slice(length - n, length) if pad_side == "left" else slice(0, n)
        ids[b, span] = torch.tensor(ex.input_ids)
        roles[b, span] = torch.tensor(ex.roles)
    batch = {"input_ids": ids, "roles": roles, "attention_mask": (roles != PAD).long()}
    with_images = [ex for ex in examples if ex.image_grid_thw is not None]
    if with_images:
        batch["image_grid_thw"] = torch.stack([ex.image_grid_thw for ex in with_images])
        batch["images"] = [ex.image for ex in with_images]
        batch["image_pixels"] = [ex.pixel_values for ex in with_images]
    return batch


def supervised_positions(roles: torch.Tensor, supervise: str = "answers") -> torch.Tensor:
    """Which tokens the next-token loss predicts: the answers (paper), or everything after compression."""
    if supervise == "answers":
        return roles == ANSWER
    if supervise == "all":
        return (roles == ANSWER) | (roles == QUESTION)
    raise ValueError(f"supervise must be 'answers' or 'all', not {supervise!r}")
