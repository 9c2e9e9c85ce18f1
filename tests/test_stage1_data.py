"""Stage-1 data for real images: dialogues from annotations, and dialogues written by a VLM (tiny here).

What ``comalite stage1-data`` must do: write image paths stage 1 can read back (relative to the config's
image root), never duplicate a dialogue when it resumes, ask the questions in one multi-turn chat that
carries the history, and honour the writer's settings."""
from __future__ import annotations

import logging
import re
import shutil
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from cli_checks import cli, refuse_model_loads
from comalite.backbone import load_backbone
from comalite.cli import main
from comalite.stage1_data import (
    build_stage1_data,
    dialogues_from_pairs,
    generate_dialogue,
    sample_images,
    write_questions,
    writer_model,
)
from comalite.data.io import read_dialogues
from comalite.data.writers import write_dialogues
from comalite.data.sources import stage1_dialogues
from comalite.errors import DataFormatError
from comalite.records import Dialogue, EmbedInput, TrainPair, Turn


def test_dialogues_from_pairs_groups_image_to_text_pairs_by_image():
    pairs = [
        TrainPair(EmbedInput("<|image_1|>\nWhat colour is it?", "/a.png"), EmbedInput("red")),
        TrainPair(EmbedInput("<|image_1|>\nHow many?", "/a.png"), EmbedInput("two")),
        TrainPair(EmbedInput("<|image_1|>\nWhat is it?", "/b.png"), EmbedInput("a star")),
        TrainPair(EmbedInput("a caption"), EmbedInput("", "/c.png")),               # text -> image: skipped
        TrainPair(EmbedInput("<|image_1|>\nCrop?", "/a.png"), EmbedInput("", "/d.png")),  # image target: skipped
    ]
    dialogues = dialogues_from_pairs(pairs)
    assert [d.image for d in dialogues] == ["/a.png", "/b.png"]
    assert [(t.question, t.answer) for t in dialogues[0].turns] == [("What colour is it?", "red"), ("How many?", "two")]


QUESTIONS = ["How many objects are there?", "What color is the object at the top left?"]
SHORT = ("writer.max_answer_tokens=3",)  # generation kept to a few tokens: these tests check plumbing, not text


def fake_dialogue(backbone, image, writer, questions=None):
    """A stand-in for the VLM: one fixed turn per image, nothing cut."""
    return Dialogue((Turn("What is it?", "a shape"),), image, meta={"answers": 1, "answers_cut": 0, "questions_cut": 0})


@pytest.fixture
def no_vlm(monkeypatch):
    """Path and resume logic without a model: loading returns a dummy, generation ``fake_dialogue``; returns
    the list of images generated for."""
    generated = []

    def generate(backbone, image, writer, questions=None):
        generated.append(image)
        return fake_dialogue(backbone, image, writer, questions)

    dummy = types.SimpleNamespace(eval=lambda: None)
    monkeypatch.setattr("comalite.stage1_data.load_backbone", lambda *a, **k: dummy)
    monkeypatch.setattr("comalite.stage1_data.generate_dialogue", generate)
    return generated


@pytest.fixture
def standin(data_root, tmp_path, monkeypatch):
    """A stand-in for /data/MMEB-train in ``tmp_path/MMEB-train``: three images under ``images/Sub``; the
    working directory is ``tmp_path``, so ``MMEB-train/images`` is a relative --images."""
    images = tmp_path / "MMEB-train" / "images" / "Sub"
    images.mkdir(parents=True)
    for path in sorted((data_root / "images" / "stage1").glob("*.png"))[:3]:
        shutil.copy(path, images / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "MMEB-train"


def test_the_tiny_vlm_answers_given_questions_and_a_rerun_resumes(tiny_config, data_root, tmp_path, monkeypatch,
                                                                   caplog):
    images = data_root / "images" / "stage1"
    out = tmp_path / "dialogues.jsonl"
    cfg = tiny_config(*SHORT)
    with caplog.at_level(logging.WARNING, logger="comalite.stage1_data"):
        report = build_stage1_data(cfg, images=images, out=out, limit=2, questions=QUESTIONS, save_every=1)
    assert (report.dialogues, report.new, report.answers) == (2, 2, 4)
    # tiny-smoke sets neither data.root nor data.image_root: paths are relative to --images, and the log says so.
    assert "neither data.image_root nor data.root" in caplog.text
    written = read_dialogues(out, images)
    assert [d.image for d in written] == [str(p) for p in sample_images(sorted(images.rglob("*.png")), 2, 0)]
    for d in written:
        assert [t.question for t in d.turns] == QUESTIONS and all(t.answer.strip() for t in d.turns)
    # A rerun finds every image already done: nothing is generated and no model loads.
    refuse_model_loads(monkeypatch)
    assert build_stage1_data(cfg, images=images, out=out, limit=2, questions=QUESTIONS).dialogues == 2


def test_a_generator_that_answers_nothing_is_an_error(tiny_config, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr("comalite.stage1_data.generate_dialogue",
                        lambda backbone, image, writer, **k: Dialogue((), image, meta=dict.fromkeys(
                            ("answers", "answers_cut", "questions_cut"), 0)))
    with pytest.raises(DataFormatError, match="no usable question and answer for any of the 2 images"):
        build_stage1_data(tiny_config(), images=data_root / "images" / "stage1", out=tmp_path / "d.jsonl", limit=2)
    assert not (tmp_path / "d.jsonl").exists()  # no empty file is left to look like data


def test_the_writer_settings_replace_the_models_where_set(tiny_config):
    cfg = tiny_config("writer.backbone=some/vlm", "writer.quantization=none", "writer.max_pixels=200704")
    model = writer_model(cfg)
    assert (model.backbone, model.quantization, model.max_pixels, model.min_pixels) == \
        ("some/vlm", "none", 200704, cfg.model.min_pixels)
    assert writer_model(cfg, generator="other/vlm").backbone == "other/vlm"  # --generator wins
    plain = tiny_config()
    assert (writer_model(plain).backbone, writer_model(plain).quantization) == (plain.model.backbone,
                                                                               plain.model.quantization)


# ----------------------------------------------------------------------------- paths and resume


def test_a_resume_with_a_relative_images_folder_writes_no_duplicate(tiny_config, standin, monkeypatch):
    cfg = tiny_config("data.source=mmeb", "data.root=MMEB-train", *SHORT)  # relative, as typed in a shell
    out = standin.parent / "stage1.jsonl"
    assert build_stage1_data(cfg, images="MMEB-train/images", out=out, limit=2, questions=QUESTIONS[:1]).new == 2
    generated = []
    real = generate_dialogue
    monkeypatch.setattr("comalite.stage1_data.generate_dialogue",
                        lambda backbone, image, *a, **k: generated.append(image) or real(backbone, image, *a, **k))
    assert build_stage1_data(cfg, images="MMEB-train/images", out=out, limit=3, questions=QUESTIONS[:1]).new == 1
    first_two = sample_images(sorted(standin.rglob("*.png")), 2, cfg.data.seed)
    assert generated == [str(p) for p in sorted(standin.rglob("*.png")) if p not in first_two]  # only the one not done
    images = [d.image for d in read_dialogues(out, standin)]
    assert sorted(images) == sorted(str(p) for p in standin.rglob("*.png"))  # each image once
    assert len(out.read_text().splitlines()) == 3


def test_a_file_that_holds_duplicates_is_not_made_worse(tiny_config, standin, no_vlm):
    cfg = tiny_config("data.source=mmeb", f"data.root={standin}")
    first, second, third = sorted(standin.rglob("*.png"))
    out = standin.parent / "stage1.jsonl"
    twice = fake_dialogue(None, str(first), None)
    write_dialogues([twice, twice, fake_dialogue(None, str(second), None)], out, standin)
    assert build_stage1_data(cfg, images="MMEB-train/images", out=out).new == 1
    assert no_vlm == [str(third)]
    counts = Counter(d.image for d in read_dialogues(out, standin))
    assert counts == {str(first): 2, str(second): 1, str(third): 1}


def test_a_file_written_against_another_root_is_named_when_resumed(tiny_config, standin, no_vlm):
    """A file an earlier comalite wrote relative to --images cannot be resumed against data.root: one message."""
    out = standin.parent / "stage1.jsonl"
    write_dialogues([fake_dialogue(None, str(sorted(standin.rglob("*.png"))[0]), None)], out, standin / "images")
    message = f"resuming {out}: its image paths must be relative to {standin},"
    with pytest.raises(DataFormatError, match=re.escape(message)):
        build_stage1_data(tiny_config("data.source=mmeb", f"data.root={standin}"), images="MMEB-train/images",
                          out=out)
    assert no_vlm == []


@pytest.mark.parametrize("sets", [("data.source=mmeb", "data.root={root}"), ("data.image_root={root}",)],
                         ids=["data.root", "data.image_root"])
def test_the_paths_written_resolve_with_stage1s_own_reader(capsys, tiny_home, standin, no_vlm, sets):
    """The README's commands on a stand-in /data/MMEB-train: stage1-data, then stage 1's reader."""
    overrides = [s.format(root=standin) for s in sets]
    out = standin.parent / "stage1.jsonl"
    main(["stage1-data", "--preset", "tiny-smoke", *(a for s in overrides for a in ("--set", s)),
          "--images", str(standin / "images"), "--out", str(out)])
    assert "3 dialogues, 3 new" in capsys.readouterr().out
    assert all(line.startswith('{"image": "images/Sub/') for line in out.read_text().splitlines())
    from comalite.config import load_config

    cfg = load_config("tiny-smoke", [*overrides, f"stage1.dialogues={out}"])
    assert [d.image for d in stage1_dialogues(cfg)] == [str(p) for p in sorted(standin.rglob("*.png"))]


def test_images_outside_the_image_root_are_an_error_before_a_model_loads(capsys, tiny_home, standin, tmp_path,
                                                                          monkeypatch):
    refuse_model_loads(monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(standin / "images", elsewhere)
    err = cli(capsys, "stage1-data", "--preset", "tiny-smoke", "--set", "data.source=mmeb", "--set",
              f"data.root={standin}", "--images", str(elsewhere), "--out", str(tmp_path / "stage1.jsonl"))[1]  # exit 2
    assert err.startswith(f"comalite stage1-data: error: --images {elsewhere} is not under {standin}, the folder "
                          "stage 1 reads image paths against")
    assert "Traceback" not in err and not (tmp_path / "stage1.jsonl").exists()


# ----------------------------------------------------------------------------- the multi-turn chat


@pytest.fixture
def writer_vlm(tiny_config, monkeypatch):
    """``(backbone, writer settings, calls, replies)``: the tiny VLM as writer, its ``generate`` spied on; each
    call is recorded as ``(input ids, new ids, max_new_tokens)``. Texts put in ``replies`` are returned by the
    next calls, in order, instead of generating (up to ``max_new_tokens`` tokens, without the end token if cut
    there); ``None`` there, or an empty list, generates."""
    cfg = tiny_config("writer.max_answer_tokens=3", "writer.n_questions=3", "writer.max_question_tokens=200")
    backbone = load_backbone(writer_model(cfg), train_adapter=None, train_compression=False).eval()
    real, calls, replies = backbone.hf.generate, [], []

    def spy(**kw):
        ids, cap = kw["input_ids"], kw["max_new_tokens"]
        assert kw["pixel_values"] is not None and kw["do_sample"] is False  # the image is in view; greedy
        text = replies.pop(0) if replies else None
        if text is None:
            out = real(**kw)
        else:
            new = (backbone.processor.encode_text(text) + [backbone.processor.im_end_id])[:cap]
            out = torch.cat([ids, torch.tensor([new])], dim=1)
        calls.append((ids[0].tolist(), out[0, ids.shape[1]:].tolist(), cap))
        return out

    monkeypatch.setattr(backbone.hf, "generate", spy)
    return backbone, cfg.writer, calls, replies


def until_stop(ids: list[int], backbone) -> list[int]:
    stops = {backbone.processor.im_end_id, backbone.processor.tokenizer.eos_token_id}
    return next((ids[:k] for k, t in enumerate(ids) if t in stops), ids)


def test_the_answers_come_from_one_chat_that_carries_the_history(writer_vlm, data_root):
    backbone, writer, calls, _ = writer_vlm
    encode = backbone.processor.encode_text
    image = str(sorted((data_root / "images" / "stage1").glob("*.png"))[0])
    questions = ["How many objects are there?", "What color is the circle?", "Where is the square?"]
    dialogue = generate_dialogue(backbone, image, writer, questions=questions)
    assert len(calls) == len(questions)
    n_pad = calls[0][0].count(backbone.processor.image_pad_id)
    assert n_pad > 0 and all(ids.count(backbone.processor.image_pad_id) == n_pad for ids, _, _ in calls)
    assert calls[0][0][-len(encode(f"{questions[0]}<|im_end|>\n<|im_start|>assistant\n")):] == \
        encode(f"{questions[0]}<|im_end|>\n<|im_start|>assistant\n")
    for k in range(1, len(questions)):
        before, answer = calls[k - 1][0], until_stop(calls[k - 1][1], backbone)
        # Turn k's input is turn k-1's input, its answer closed by <|im_end|>, then question k.
        assert calls[k][0] == before + answer + [backbone.processor.im_end_id] + \
            encode(f"\n<|im_start|>user\n{questions[k]}<|im_end|>\n<|im_start|>assistant\n")
    assert [t.question for t in dialogue.turns] == questions
    assert [t.answer for t in dialogue.turns] == [
        backbone.processor.tokenizer.decode(until_stop(new, backbone), skip_special_tokens=True).strip()
        for _, new, _ in calls]


def test_max_answer_tokens_and_n_questions_are_honoured(writer_vlm, data_root):
    backbone, writer, calls, replies = writer_vlm
    image = str(sorted((data_root / "images" / "stage1").glob("*.png"))[1])
    # The writer's reply: a preamble, numbered questions, one repeated; the first 3 distinct ones are asked.
    # Then three answers: one longer than max_answer_tokens, a short one, and the tiny VLM's own.
    replies += ["Here are the questions:\n1. How many shapes?\n2. How many shapes?\n3) What color is the star?\n"
                "- Is there a circle?\n4. Where is the square?\n5. What is big?",
                "two big shapes and one small shape in the middle", "red", None]
    dialogue = generate_dialogue(backbone, image, writer)
    asked = ["How many shapes?", "What color is the star?", "Is there a circle?"]
    assert len(asked) == writer.n_questions
    assert len(dialogue.turns) >= 2  # the two scripted answers are not empty
    assert [t.question for t in dialogue.turns] == asked[:len(dialogue.turns)]
    for (ids, _, _), question in zip(calls[1:], asked):  # each asked in its turn of the chat
        tail = backbone.processor.encode_text(f"{question}<|im_end|>\n<|im_start|>assistant\n")
        assert ids[-len(tail):] == tail
    assert [cap for _, _, cap in calls] == [writer.max_question_tokens] + [writer.max_answer_tokens] * 3
    answers = [new for _, new, _ in calls[1:]]
    assert all(len(new) <= writer.max_answer_tokens for new in answers)
    cut = sum(len(until_stop(new, backbone)) == writer.max_answer_tokens for new in answers)
    assert cut >= 1 and dialogue.turns[0].answer == backbone.processor.tokenizer.decode(answers[0]).strip()
    assert dialogue.meta == {"answers": 3, "answers_cut": cut, "questions_cut": 0}


def test_a_question_list_cut_at_max_question_tokens_loses_its_unfinished_line(writer_vlm, data_root):
    backbone, writer, calls, replies = writer_vlm
    image = str(sorted((data_root / "images" / "stage1").glob("*.png"))[0])
    text = "How many shapes?\nWhat color is the star?\nWhere is the squ"
    writer.max_question_tokens = len(backbone.processor.encode_text(text))
    replies.append(text + "are?")
    assert write_questions(backbone, image, writer) == (["How many shapes?", "What color is the star?"], True)


@pytest.fixture(scope="module")
def tiny_qwen2_5_vl(tiny_checkpoint, tmp_path_factory):
    """A Qwen2.5-VL (the ``qwen2.5-vl-7b-writer`` preset's architecture) at the tiny VLM's size, random weights,
    with the tiny VLM's tokenizer and image processor."""
    import json

    import transformers

    folder = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    text = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]
    text = {**{k: v for k, v in text.items() if k != "dtype"}, "model_type": "qwen2_5_vl_text"}
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=text["hidden_size"],
                  window_size=112, fullatt_block_indexes=[1])
    config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=5, video_token_id=6,
                                           vision_start_token_id=3, vision_end_token_id=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    return folder


def test_the_writer_runs_on_the_qwen2_5_vl_architecture(tiny_config, tiny_qwen2_5_vl, data_root, monkeypatch):
    cfg = tiny_config(f"writer.backbone={tiny_qwen2_5_vl}", "writer.quantization=nf4", "writer.max_answer_tokens=3")
    backbone = load_backbone(writer_model(cfg), train_adapter=None, train_compression=False).eval()
    assert type(backbone.hf).__name__ == "Qwen2_5_VLForConditionalGeneration"
    real, inputs = backbone.hf.generate, []
    monkeypatch.setattr(backbone.hf, "generate", lambda **kw: inputs.append(kw["input_ids"][0].tolist()) or real(**kw))
    image = str(sorted((data_root / "images" / "stage1").glob("*.png"))[0])
    dialogue = generate_dialogue(backbone, image, cfg.writer, questions=QUESTIONS)
    assert dialogue.meta["answers"] == len(inputs) == 2 and inputs[1][:len(inputs[0])] == inputs[0]


def test_the_7b_writer_preset_changes_only_the_writer():
    """``--preset qwen2.5-vl-7b-writer`` for stage1-data: the paper's writer in nf4; everything else (run name,
    model, data, stages) is qwen2-vl-2b's, so stage 1 and 2 run with that preset on the same folders."""
    from comalite.config import load_config

    writer, base = load_config("qwen2.5-vl-7b-writer").to_dict(), load_config("qwen2-vl-2b").to_dict()
    assert writer.pop("writer")["backbone"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert load_config("qwen2.5-vl-7b-writer").writer.quantization == "nf4"
    base.pop("writer")
    assert writer == base


def test_a_limit_draws_from_every_image_and_a_larger_one_keeps_the_smaller_ones_draw():
    paths = [Path(f"images/{subset}/{i:03d}.png") for subset in ("A-OKVQA", "CIRR", "VisDial") for i in range(40)]
    ten, thirty = sample_images(paths, 10, seed=0), sample_images(paths, 30, seed=0)
    assert len(ten) == 10 and set(ten) < set(thirty) and ten == sorted(ten)
    assert {p.parent.name for p in thirty} == {"A-OKVQA", "CIRR", "VisDial"}   # not the first folder's 30
    assert sample_images(paths, 10, seed=1) != ten and sample_images(paths, 0, seed=0) == paths


def test_a_writer_budget_below_the_models_minimum_is_refused():
    from comalite.config import load_config
    from comalite.errors import ConfigError

    with pytest.raises(ConfigError, match=r"writer.min_pixels=200704 and writer.max_pixels=100352 \(a writer's 0"):
        load_config("qwen2.5-vl-7b-writer", ["writer.max_pixels=100352"])   # the 2B's min_pixels is inherited
