"""Stage-1 data for real images: dialogues from annotations, and dialogues written by a VLM (tiny here)."""
from __future__ import annotations

from comalite.records import EmbedInput, TrainPair
from comalite.data.dialogues import build_stage1_data, dialogues_from_pairs


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


def test_build_stage1_data_with_the_tiny_vlm_writes_and_resumes(tiny_config, data_root, tmp_path):
    from comalite.data.io import read_dialogues

    images = data_root / "images" / "stage1"
    out = tmp_path / "dialogues.jsonl"
    cfg = tiny_config()
    n = build_stage1_data(cfg, images=images, out=out, limit=2, n_questions=2, save_every=1)
    written = read_dialogues(out, images)
    assert n == len(written) <= 2
    assert all(d.image and d.image.startswith(str(images)) and d.turns for d in written)
    # A rerun finds every image already done and generates nothing new.
    assert build_stage1_data(cfg, images=images, out=out, limit=2, n_questions=2) == n
