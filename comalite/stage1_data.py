"""Stage-1 data for real images: multi-turn QA dialogues, from annotations or written by a VLM.

How the CoMa paper made its stage-1 data, and how close ``comalite stage1-data`` comes:

Matches the paper
- A larger VLM writes the dialogues: the ``qwen2.5-vl-7b-writer`` preset sets ``writer.backbone`` to
  Qwen2.5-VL-7B-Instruct, the paper's writer (any Qwen2(.5)-VL checkpoint works; default: ``model.backbone``).
- It first writes several retrieval-oriented questions per image (``writer.n_questions``, default 4; the
  paper: 3-5), then answers them in ONE multi-turn chat with the image in view: turn k sees the image, the
  earlier questions and its own earlier answers (``answer_in_one_chat``), in Qwen's chat format with the
  default system message its chat template inserts.
- The file holds one dialogue per image, and stage 1 trains on all its turns (``stage1.multi_turn``).

Departs from the paper
- Decoding is greedy (``do_sample=False``; other generation settings are the checkpoint's
  ``generation_config``). The paper does not say how it sampled.
- The question prompt is comalite's own wording (``writer.question_prompt``); the paper's prompt is not known
  here. Questions are the first ``n_questions`` distinct lines of the reply, numbering stripped; nothing else
  filters them.
- Every image gets the same number of questions (``n_questions``), not a number drawn from 3-5.
- Generation runs through transformers ``generate``, one image at a time, no vLLM and no batching. Each
  answer re-reads the whole chat (the image included: the vision tower runs once per turn); the KV cache is
  not carried from turn to turn, so a dialogue of n turns costs about n prefills of a growing chat.
- The writer may run 4-bit (``writer.quantization``, nf4 in the preset, to fit one GPU next to nothing
  else); the paper's writer presumably ran in bf16. Its view of an image is capped by ``writer.max_pixels``.
- Which images: the paper took up to 30K images from each of 12 MMEB-train subsets; ``stage1-data`` takes
  every image under ``--images``; ``--limit`` draws that many from all of them (seeded: ``data.seed``), not
  up to 30K per subset.

Where annotations already pair an image with questions and answers (MMEB-train's VQA-style subsets),
``dialogues_from_pairs`` turns them into dialogues without any generation.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_text
from .backbone import Backbone, load_backbone
from .config import Config, ModelConfig, WriterConfig
from .errors import ConfigError, DataFormatError
from .progress import progress_bar
from .records import IMAGE_PLACEHOLDER, Dialogue, TrainPair, Turn
from .data.images import find_images, load_image
from .data.io import read_dialogues
from .data.writers import dialogue_line
from .data.sources import image_root

log = logging.getLogger(__name__)
SYSTEM_MESSAGE = "You are a helpful assistant."
"""What Qwen2-VL's and Qwen2.5-VL's chat templates insert when a chat has no system message."""
_LIST_MARK = re.compile(r"^\s*(\d+\s*[.):]|[-*\u2022]|Q\d*\s*[.):])\s*")


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


# ----------------------------------------------------------------------------- one image, one chat


@dataclass
class _Chat:
    """A Qwen chat about one image, as token ids, with the image's patches and grid for ``generate``."""

    ids: list[int]
    pixel_values: torch.Tensor
    grid: torch.Tensor


def _open_chat(backbone: Backbone, image: str) -> _Chat:
    """``<|im_start|>system ... <|im_start|>user\\n`` and the image's vision span: the start of every chat."""
    processor = backbone.processor
    pixel_values, grid = processor.encode_image(load_image(image))
    ids = processor.encode_text(f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n")
    return _Chat(ids + processor.image_span(grid), pixel_values, grid)


def _stop_ids(backbone: Backbone) -> list[int]:
    """``<|im_end|>`` and the other ids the checkpoint ends a reply with (its generation config's, its
    tokenizer's: Qwen's list ``<|endoftext|>`` too)."""
    configured = backbone.hf.generation_config.eos_token_id
    ids = [backbone.processor.im_end_id, *(configured if isinstance(configured, list) else [configured]),
           backbone.processor.tokenizer.eos_token_id]
    return list(dict.fromkeys(t for t in ids if t is not None))


@torch.no_grad()
def _continue(backbone: Backbone, chat: _Chat, max_new_tokens: int) -> tuple[list[int], bool]:
    """Greedy reply to ``chat`` (which ends with an open assistant turn): (its token ids up to its end token,
    whether it was cut at ``max_new_tokens`` instead)."""
    processor, dev = backbone.processor, backbone.device
    ids = torch.tensor([chat.ids], device=dev)
    stops = _stop_ids(backbone)
    out = backbone.hf.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids),
        pixel_values=chat.pixel_values.to(dev, backbone.dtype), image_grid_thw=chat.grid[None].to(dev),
        mm_token_type_ids=(ids == processor.image_pad_id).int(), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=stops, pad_token_id=processor.tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    end = next((k for k, t in enumerate(new) if t in stops), None)
    return (new, len(new) >= max_new_tokens) if end is None else (new[:end], False)


def _decode(backbone: Backbone, ids: list[int]) -> str:
    return backbone.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def write_questions(backbone: Backbone, image: str, writer: WriterConfig) -> tuple[list[str], bool]:
    """Ask the VLM for ``writer.n_questions`` questions about ``image`` (its own chat): (the first n distinct
    lines of its reply, numbering stripped; whether the reply was cut at ``writer.max_question_tokens``, in
    which case its unfinished last line is dropped)."""
    chat = _open_chat(backbone, image)
    prompt = writer.question_prompt.replace("{n}", str(writer.n_questions))
    chat.ids += backbone.processor.encode_text(f"{prompt}<|im_end|>\n<|im_start|>assistant\n")
    reply, cut = _continue(backbone, chat, writer.max_question_tokens)
    text = backbone.processor.tokenizer.decode(reply, skip_special_tokens=True)
    lines = text.splitlines()
    if cut and lines and not text.endswith("\n"):
        lines = lines[:-1]
    questions = []
    for line in lines:
        question = _LIST_MARK.sub("", line).strip()
        if question and not question.endswith(":") and question not in questions:  # ":" ends a preamble line
            questions.append(question)
    return questions[:writer.n_questions], cut


def answer_in_one_chat(backbone: Backbone, image: str, questions: list[str],
                       max_answer_tokens: int) -> tuple[list[Turn], int]:
    """Answer ``questions`` in one multi-turn chat about ``image``::

        <|im_start|>user\\n <image> Q1 <|im_end|>\\n<|im_start|>assistant\\n A1 <|im_end|>\\n
        <|im_start|>user\\n Q2 <|im_end|>\\n<|im_start|>assistant\\n A2 ...

    Turn k is generated with the image, the earlier questions and the earlier answers (the ids the model
    generated) in view. Returns the turns with a non-empty answer and how many answers were cut at
    ``max_answer_tokens``."""
    processor = backbone.processor
    chat = _open_chat(backbone, image)
    turns, n_cut = [], 0
    for k, question in enumerate(questions):
        opening = "" if k == 0 else "\n<|im_start|>user\n"  # the first question follows the image directly
        chat.ids += processor.encode_text(f"{opening}{question}<|im_end|>\n<|im_start|>assistant\n")
        answer, cut = _continue(backbone, chat, max_answer_tokens)
        n_cut += cut
        chat.ids += answer + [processor.im_end_id]
        if text := _decode(backbone, answer):
            turns.append(Turn(question, text))
    return turns, n_cut


def generate_dialogue(backbone: Backbone, image: str, writer: WriterConfig, *,
                      questions: list[str] | None = None) -> Dialogue:
    """The stage-1 dialogue the VLM writes about ``image``: ``write_questions`` (or the given ``questions``,
    all of them), then ``answer_in_one_chat``. ``meta`` counts what was cut: ``answers``, ``answers_cut``
    and ``questions_cut`` (0/1)."""
    questions_cut = False
    if questions is None:
        questions, questions_cut = write_questions(backbone, image, writer)
    turns, answers_cut = answer_in_one_chat(backbone, image, questions, writer.max_answer_tokens)
    return Dialogue(turns=tuple(turns), image=image, meta={"answers": len(questions), "answers_cut": answers_cut,
                                                           "questions_cut": int(questions_cut)})


# ----------------------------------------------------------------------------- a folder of images


def stage1_image_root(cfg: Config) -> Path | None:
    """The absolute folder stage 1 resolves the dialogues' image paths against (as
    ``sources.stage1_dialogues`` does: ``data.image_root``, else ``data.root``, ShapesWorld's ``root/images``),
    or None when the config sets neither ``data.image_root`` nor ``data.root``."""
    if not (cfg.data.image_root or cfg.data.root):
        return None
    return Path(os.path.abspath(image_root(cfg, cfg.data_root())))


def writer_model(cfg: Config, generator: str = "") -> ModelConfig:
    """The model settings of the writer: ``cfg.model`` with ``writer.*`` where set (``generator`` first), no
    gradient checkpointing, and no vision cache (``generate`` wants the image's patches)."""
    w, m = cfg.writer, cfg.model
    return dataclasses.replace(m, backbone=generator or w.backbone or m.backbone,
                               quantization=w.quantization or m.quantization, max_pixels=w.max_pixels or m.max_pixels,
                               min_pixels=w.min_pixels or m.min_pixels, gradient_checkpointing=False, vision_cache_mb=0)


@dataclass
class Stage1DataReport:
    """What one ``build_stage1_data`` call did."""

    dialogues: int = 0      # dialogues in the file at the end
    new: int = 0            # dialogues this call wrote
    skipped: int = 0        # images this call got no usable turn for
    answers: int = 0        # answers this call generated
    answers_cut: int = 0    # of which cut at writer.max_answer_tokens
    questions_cut: int = 0  # question lists cut at writer.max_question_tokens
    unreadable: int = 0     # images this call could not read (listed in ``skipped_file``)
    not_retried: int = 0    # images an earlier call could not read, left out again (``retry_skipped=False``)
    skipped_file: Path | None = None  # ``<out>.skipped``: one unreadable image per line, ``path<TAB>reason``


def skipped_path(out: str | Path) -> Path:
    """``<out>.skipped``: the images ``build_stage1_data`` could not read, one ``path<TAB>reason`` per line."""
    out = Path(out)
    return out.with_name(out.name + ".skipped")


def read_skipped(out: str | Path) -> dict[str, str]:
    """Absolute image path -> reason, from ``<out>.skipped`` (empty when there is none)."""
    path = skipped_path(out)
    if not path.exists():
        return {}
    listed = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        image, _, reason = line.partition("\t")
        if image.strip():
            listed[os.path.abspath(image)] = reason
    return listed


def _drop_torn_line(out: Path) -> None:
    """A run killed while writing leaves its last line unfinished: cut it off (with a warning) so the file
    reads and appends cleanly. A last line without its newline that is whole JSON gets the newline instead."""
    data = out.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        log.warning("%s: its last line is unfinished (%d bytes; a run stopped while writing it): dropped, and "
                    "its image is written again", out, len(data) - start)
        with open(out, "r+b") as f:
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
        return
    with open(out, "ab") as f:
        f.write(b"\n")


def _done(out: Path, root: Path) -> list[Dialogue]:
    """The dialogues already in ``out`` (none if it does not exist or holds none yet); an unfinished last line
    (a killed run) is dropped first. Duplicates an earlier run left are kept as they are and reported, never
    added to."""
    if not out.exists():
        return []
    _drop_torn_line(out)
    if not out.read_bytes().strip():
        return []
    try:
        done = read_dialogues(out, root)
    except DataFormatError as err:
        raise DataFormatError(f"{err} (resuming {out}: its image paths must be relative to {root}, where stage 1 "
                              "reads them; move the file away to start afresh)") from None
    repeats = sum(n - 1 for n in Counter(os.path.abspath(d.image) for d in done if d.image).values())
    if repeats:
        log.warning("%s holds %d extra dialogue(s) of images it already has (an earlier run's resume); they are "
                    "kept as they are, and no image gets another one", out, repeats)
    return done


def _append(path: Path, data: bytes, sync: bool) -> None:
    """Append ``data`` to ``path`` and flush it to the OS (a killed process loses nothing); ``sync`` also
    fsyncs (a power cut loses nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def sample_images(paths: list[Path], limit: int, seed: int) -> list[Path]:
    """``limit`` of ``paths`` (all of them when ``limit`` is 0 or more), drawn by a seeded shuffle and kept in
    their order: images from every sub-folder rather than the first folders' (sorted, MMEB's subsets come
    alphabetically), and a larger limit keeps every image a smaller one drew, so a rerun extends the file."""
    if not limit or limit >= len(paths):
        return paths
    return [paths[i] for i in sorted(np.random.default_rng(seed).permutation(len(paths))[:limit])]


def build_stage1_data(cfg: Config, *, images: str | Path, out: str | Path, generator: str = "", limit: int = 0,
                      questions: list[str] | None = None, save_every: int = 1,
                      retry_skipped: bool = False) -> Stage1DataReport:
    """Write a stage-1 jsonl for every image under ``images`` with the writer VLM (``cfg.writer``;
    ``generator`` overrides ``writer.backbone``), which writes ``writer.n_questions`` questions per image or
    answers the fixed ``questions``.

    Image paths are written relative to the folder stage 1 reads them against (``stage1_image_root``);
    ``images`` must lie under it (a ConfigError before any model loads). When the config names no such
    folder, they are relative to ``images`` and the log says which setting stage 1 then needs.

    Nothing written is lost: each dialogue is appended to ``out`` and flushed as soon as it is written
    (fsynced every ``save_every`` dialogues; default every one). Resumes: images already in ``out`` (by
    absolute path) are skipped; an unfinished last line (a killed run) is dropped with a warning and its
    image written again. An image that cannot be read is skipped, listed in ``<out>.skipped``
    (``path<TAB>reason``) and counted (``unreadable``); ``writer.strict`` makes it an error instead (the
    dialogues before it stay in ``out``). A rerun leaves the listed images out (``not_retried``) unless
    ``retry_skipped``; an image read on a retry leaves the list. A writer that answers nothing at all is an
    error."""
    out, image_dir = Path(out), Path(os.path.abspath(images))
    if not image_dir.is_dir():
        raise DataFormatError(f"--images {images}: no such folder. Give the folder of images (searched "
                              "recursively).")
    root = stage1_image_root(cfg)
    if root is None:
        root = image_dir
        log.warning("the config sets neither data.image_root nor data.root: image paths are written relative to "
                    "--images %s; run stage 1 with --set data.image_root=%s", images, image_dir)
    elif not image_dir.is_relative_to(root):
        raise ConfigError(f"--images {images} is not under {root}, the folder stage 1 reads image paths against "
                          "(data.image_root, else data.root): put the images under it, or set data.root / "
                          "data.image_root to a folder that holds them")
    paths = sample_images(find_images(image_dir), limit, cfg.data.seed)
    done = _done(out, root)
    have = {os.path.abspath(d.image) for d in done if d.image}
    listed = read_skipped(out)
    todo = [p for p in paths if os.path.abspath(p) not in have]
    report = Stage1DataReport(dialogues=len(done), skipped_file=skipped_path(out))
    if not retry_skipped:
        report.not_retried = sum(os.path.abspath(p) in listed for p in todo)
        todo = [p for p in todo if os.path.abspath(p) not in listed]
        if report.not_retried:
            log.warning("%d image(s) listed in %s as unreadable are not retried (pass --retry-skipped, or delete "
                        "their lines, to try them again)", report.not_retried, report.skipped_file)
    if not todo:
        return report
    writer = cfg.writer
    backbone = load_backbone(writer_model(cfg, generator), train_adapter=None, train_compression=False).eval()
    for i, path in enumerate(progress_bar(todo, desc="stage-1 dialogues"), 1):
        key = os.path.abspath(path)
        try:
            dialogue = generate_dialogue(backbone, str(path), writer, questions=questions)
        except DataFormatError as err:  # load_image's: an unreadable, oversized or vanished image
            if writer.strict:
                raise DataFormatError(f"{err} (writer.strict is set: the {report.new} dialogue(s) written "
                                      f"before it are kept in {out}; the same command resumes after them)") from None
            reason = str(err).removeprefix(f"{path}: ").replace("\n", " ").replace("\t", " ")
            if key not in listed:
                _append(report.skipped_file, f"{key}\t{reason}\n".encode("utf-8"), sync=True)
                listed[key] = reason
            report.unreadable += 1
            log.warning("%s: cannot read this image; skipped and listed in %s", path, report.skipped_file)
            continue
        for k in ("answers", "answers_cut", "questions_cut"):
            setattr(report, k, getattr(report, k) + dialogue.meta[k])
        if dialogue.turns:
            _append(out, dialogue_line(dialogue, root).encode("utf-8"), sync=(report.new + 1) % max(save_every, 1) == 0)
            done.append(dialogue)
            have.add(key)
            report.new += 1
        else:
            report.skipped += 1
            log.warning("no usable question/answer for %s; skipped", path)
    if retry_skipped and have & set(listed):  # images read on this retry leave the list
        atomic_write_text(report.skipped_file, "".join(f"{p}\t{r}\n" for p, r in listed.items() if p not in have))
    if not done:
        if report.unreadable == len(todo):
            raise DataFormatError(f"none of the {len(todo)} images under {image_dir} could be read (listed in "
                                  f"{report.skipped_file}): check the folder")
        raise DataFormatError(f"{writer_model(cfg, generator).backbone} wrote no usable question and answer for any "
                              f"of the {len(todo)} images under {image_dir}: use a chat-tuned VLM (--generator or "
                              "writer.backbone) or give the questions to answer (--question)")
    report.dialogues = len(done)
    if report.unreadable:
        log.warning("%d image(s) could not be read and were skipped: listed in %s", report.unreadable,
                    report.skipped_file)
    if report.answers_cut:
        log.warning("%d of %d answers hit writer.max_answer_tokens=%d and were cut mid-answer; raise it to keep "
                    "them whole", report.answers_cut, report.answers, writer.max_answer_tokens)
    if report.questions_cut:
        log.warning("%d question lists hit writer.max_question_tokens=%d (their unfinished last line was dropped)",
                    report.questions_cut, writer.max_question_tokens)
    return report
