"""Token layouts: where the image goes, which roles each token gets, which tokens are supervised."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from comalite.records import Dialogue, EmbedInput, Turn
from comalite.sequence import (ANSWER, COMPRESS, CONTEXT, PAD, QUESTION, collate, dialogue_example,
                               embed_example, supervised_positions)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from comalite.processor import VLProcessor

    return VLProcessor.from_pretrained(tiny_checkpoint, n_compress=4, min_pixels=3136, max_pixels=12544)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (112, 112), (200, 20, 20)).save(path)
    return str(path)


def test_placeholder_becomes_the_vision_span_with_whitespace_kept(processor, image):
    text = "<|image_1|> Represent the given image for classification"
    ex = embed_example(processor, EmbedInput(text, image))
    span = "<|vision_start|>" + "<|image_pad|>" * 16 + "<|vision_end|>"
    # Same ids as tokenising the whole string with the span written in (what MMEB's code does).
    whole = processor.tokenizer.encode(text.replace("<|image_1|>", span), add_special_tokens=False)
    assert ex.input_ids == whole + processor.compress_ids
    assert ex.roles == [CONTEXT] * len(whole) + [COMPRESS] * 4
    assert processor.tokenizer.decode(ex.input_ids[18:19]).startswith(" ")  # the space after the image stays


def test_image_without_placeholder_goes_first_and_text_only_works(processor, image):
    with_image = embed_example(processor, EmbedInput("a red square", image))
    assert with_image.input_ids[0] == processor.vision_start_id
    text_only = embed_example(processor, EmbedInput("a red square"))
    assert text_only.pixel_values is None
    assert text_only.input_ids[-4:] == processor.compress_ids


def test_placeholder_without_image_is_an_error(processor):
    with pytest.raises(ValueError, match="no image path"):
        embed_example(processor, EmbedInput("<|image_1|> Represent the image"))


def test_stage1_layout_roles_and_supervision(processor, image):
    dialogue = Dialogue(turns=(Turn("How many objects?", "two"), Turn("What colour?", "red")), image=image)
    ex = dialogue_example(processor, dialogue, prompt="Summarize above image in a few words.", text_prompt="")
    roles = torch.tensor(ex.roles)
    ids = torch.tensor(ex.input_ids)
    # context (image + prompt), then K compression tokens, then question/answer turns
    first_compress = ex.roles.index(COMPRESS)
    assert set(ex.roles[:first_compress]) == {CONTEXT}
    assert ex.roles[first_compress:first_compress + 4] == [COMPRESS] * 4
    assert ex.input_ids[first_compress:first_compress + 4] == processor.compress_ids
    assert processor.vision_end_id in ex.input_ids[:first_compress]

    answers = ids[supervised_positions(roles, "answers")].tolist()
    assert processor.tokenizer.decode(answers) == "two<|im_end|>red<|im_end|>"
    everything = ids[supervised_positions(roles, "all")].tolist()
    assert everything == ex.input_ids[first_compress + 4:]
    assert "How many objects?" in processor.tokenizer.decode(everything)
    single = dialogue_example(processor, dialogue, prompt="Summarize.", text_prompt="", multi_turn=False)
    assert single.roles.count(ANSWER) == len(processor.encode_text("two")) + 1
    with pytest.raises(ValueError):
        supervised_positions(roles, "questions")


def test_consecutive_turns_follow_the_chat_template_exactly(processor, image):
    # One <|im_end|> closes each message: the image's user message before the first question, each answer
    # before the next question. Checked on the exact ids, against the Qwen chat format written out.
    dialogue = Dialogue(turns=(Turn("Q1?", "A1"), Turn("Q2?", "A2")), image=image)
    ex = dialogue_example(processor, dialogue, prompt="P.", text_prompt="")
    after = ex.input_ids[ex.roles.index(COMPRESS) + 4:]
    expected = processor.encode_text("<|im_end|>\n<|im_start|>user\nQ1?<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>"
                                     "\n<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>")
    assert after == expected
    im_end = processor.im_end_id
    assert not any(a == b == im_end for a, b in zip(after, after[1:]))  # never two in a row


def test_text_only_dialogue_and_collate_padding(processor, image):
    text = dialogue_example(processor, Dialogue(turns=(Turn("Colour?", "red"),), text="a red square"),
                            prompt="", text_prompt="Summarize above sentence.")
    img = dialogue_example(processor, Dialogue(turns=(Turn("Colour?", "red"),), image=image), prompt="Sum.",
                           text_prompt="")
    for side in ("left", "right"):
        batch = collate([text, img], pad_id=0, pad_side=side)
        n = len(text.input_ids)
        row = batch["roles"][0]
        assert (row == PAD).sum() == len(img.input_ids) - n
        assert (row[-n:] if side == "left" else row[:n]).tolist() == text.roles
        assert batch["attention_mask"].tolist() == (batch["roles"] != PAD).long().tolist()
        assert batch["images"] == [image] and torch.equal(batch["image_pixels"][0], img.pixel_values)
        assert batch["image_grid_thw"].shape == (1, 3)
    assert QUESTION in text.roles
