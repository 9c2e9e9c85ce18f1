"""Stage-1 data for real images: dialogues from annotations, and dialogues written by a VLM (tiny here)."""
from __future__ import annotations

import pytest

from comalite.data.dialogues import build_stage1_data, dialogues_from_pairs
from comalite.data.io import read_dialogues
from comalite.errors import DataFormatError
from comalite.records import Dialogue, EmbedInput, TrainPair


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


def test_the_tiny_vlm_answers_given_questions_and_a_rerun_resumes(tiny_config, data_root, tmp_path, monkeypatch):
    images = data_root / "images" / "stage1"
    out = tmp_path / "dialogues.jsonl"
    cfg = tiny_config()
    assert build_stage1_data(cfg, images=images, out=out, limit=2, questions=QUESTIONS, save_every=1) == 2
    written = read_dialogues(out, images)
    assert [d.image for d in written] == [str(p) for p in sorted(images.rglob("*.png"))[:2]]
    for d in written:
        assert [t.question for t in d.turns] == QUESTIONS and all(t.answer.strip() for t in d.turns)
    # A rerun finds every image already done: nothing is generated.
    monkeypatch.setattr("comalite.data.dialogues.generate_dialogue", lambda *a, **k: pytest.fail("generated again"))
    assert build_stage1_data(cfg, images=images, out=out, limit=2, questions=QUESTIONS) == 2


def test_a_generator_that_answers_nothing_is_an_error(tiny_config, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr("comalite.data.dialogues.generate_dialogue", lambda backbone, image, **k: Dialogue((), image))
    with pytest.raises(DataFormatError, match="no usable question and answer for any of the 2 images"):
        build_stage1_data(tiny_config(), images=data_root / "images" / "stage1", out=tmp_path / "d.jsonl", limit=2)
    assert not (tmp_path / "d.jsonl").exists()  # no empty file is left to look like data
