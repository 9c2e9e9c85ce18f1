"""The tiny VLM's ViT pre-training: its labels, the token order it relies on, and that it learns."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from comalite.processor import VLProcessor
from comalite.shapesworld import Background, Obj, Scene
from comalite.tiny.vision import TokenHead, token_labels, token_loss


def test_token_labels_put_each_object_in_the_token_under_its_centre():
    scene = Scene((Obj("circle", "red", "small", 0, 0), Obj("star", "blue", "large", 2, 2)),
                  Background("plain", ("charcoal",)))
    labels = token_labels(scene, 4, 4, 112)  # cell centres at 18.7 px and 93.3 px: tokens (0, 0) and (3, 3)
    assert labels.shape == (16, 5)
    assert labels[:, 0].tolist() == [r for r in range(4) for _ in range(4)]
    assert labels[:, 1].tolist() == list(range(4)) * 4
    assert labels[0, 2:].tolist() == [1, 1, 1]     # red (1st colour), circle (1st shape), small (1st size), +1
    assert labels[15, 2:].tolist() == [3, 4, 2]    # blue, star, large
    assert labels[1:15, 2:].eq(0).all()            # no object centred anywhere else


def test_merged_image_tokens_are_row_major(tiny_checkpoint):
    """The labels assume merged token k covers grid row k // w, column k % w: pin the processor's order."""
    processor = VLProcessor.from_pretrained(tiny_checkpoint)
    image = Image.new("RGB", (112, 112))
    image.paste((255, 255, 255), (56, 28, 84, 56))  # the square of token row 1, column 2
    pixels, grid = processor.encode_image(image)
    merge = processor.image_processor.merge_size
    per_token = pixels.view(-1, merge * merge, pixels.shape[-1]).mean(dim=(1, 2))
    assert grid.tolist() == [1, 8, 8] and per_token.shape == (16,)
    assert int(per_token.argmax()) == 1 * 4 + 2
    assert (per_token.topk(2).values[1] < per_token.max() - 1.0).item()  # only that token is bright


def test_token_loss_is_the_mean_cross_entropy_per_label_column():
    head = TokenHead(hidden=8, grid_h=4, grid_w=4)
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    labels = torch.zeros(2, 16, 5, dtype=torch.long)
    expected = sum(torch.log(torch.tensor(float(n))) for n in head.sizes) / len(head.sizes)  # uniform logits
    assert torch.isclose(token_loss(head, torch.randn(2, 16, 8), labels), expected)


def test_pretrained_vit_tokens_carry_place_and_content(tiny_checkpoint):
    """Even the smoke build's short ViT pre-training reads places and colours far above chance."""
    report = json.loads((tiny_checkpoint / "tiny_report.json").read_text())
    acc = report["vision_token_accuracy"]
    assert acc["row"] > 0.9 and acc["column"] > 0.9  # chance 0.25
    assert acc["color"] > 0.5                        # chance 1/8 (7 colours or none)
    assert report["vision_last_loss"] < 0.5 * report["vision_first_loss"]


def _small_visual():
    from transformers import Qwen2VLForConditionalGeneration

    from comalite.shapesworld import text_corpus
    from comalite.tiny.build import TinyConfig, tiny_qwen2vl_config, train_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tokenizer(text_corpus(seed=0, n=200), 400)
    tc = TinyConfig(vision_depth=1, vision_dim=32, layers=1)
    return Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tokenizer, tc)).model.visual, tokenizer


def test_patch_embed_as_matmul_computes_the_same_tokens_and_is_undone():
    from comalite.tiny.vision import image_tokens, patch_embed_as_matmul

    visual, _ = _small_visual()
    pixels, grid = torch.randn(128, 3 * 2 * 14 * 14), torch.tensor([[1, 8, 8], [1, 8, 8]])
    with torch.no_grad():
        conv = image_tokens(visual, pixels, grid)
        with patch_embed_as_matmul(visual):
            matmul = image_tokens(visual, pixels, grid)
        after = image_tokens(visual, pixels, grid)
    assert torch.allclose(conv, matmul, atol=1e-5)
    assert torch.equal(conv, after) and "forward" not in vars(visual.patch_embed)


def test_fresh_scenes_depend_only_on_seed_and_step():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.tiny.vision import FreshScenes

    _, tokenizer = _small_visual()
    processor = VLProcessor(tokenizer, Qwen2VLImageProcessorPil(min_pixels=112 * 112 // 4, max_pixels=112 * 112))
    a, b = FreshScenes(processor, 0, 112, n_objects=4), FreshScenes(processor, 0, 112, n_objects=4)
    pixels, grid, labels = a.batch_for_step(3, 5)
    assert pixels.shape == (5 * 64, 3 * 2 * 14 * 14) and grid.tolist() == [[1, 8, 8]] * 5
    assert torch.equal(labels, b.batch_for_step(3, 5)[2])
    assert not torch.equal(labels, a.batch_for_step(4, 5)[2])
    assert ((labels[..., 2] > 0).sum(1) == 4).all()  # four objects, each centred in a token of its own


def test_stage0_dialogues_ask_distinct_questions_about_fresh_images(tmp_path):
    from comalite.shapesworld import DESCRIBE
    from comalite.tiny.build import stage0_dialogues

    dialogues = stage0_dialogues(tmp_path / "images", 3, seed=0, image_size=112, n_turns=6)
    assert len(dialogues) == 3
    for d in dialogues:
        assert len(d.turns) == 6 and len({t.question for t in d.turns}) == 6
        assert all(t.question != DESCRIBE for t in d.turns)
        assert Image.open(d.image).size == (112, 112)
        assert 1 <= len(d.meta["cells"]) == len(set(d.meta["cells"])) <= 4  # its objects' cells, for probes
    one = stage0_dialogues(tmp_path / "one", 3, seed=0, image_size=112, n_turns=2, n_objects=1)
    assert all(len(d.meta["cells"]) == 1 for d in one)
    again = stage0_dialogues(tmp_path / "again", 3, seed=0, image_size=112, n_turns=6)
    assert [d.turns for d in again] == [d.turns for d in dialogues]  # seeded


def test_scale_image_tokens_sets_their_mean_norm_and_keeps_their_directions():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from comalite.shapesworld import sample_scene
    from comalite.tiny.vision import _encode, image_tokens, scale_image_tokens

    visual, tokenizer = _small_visual()
    processor = VLProcessor(tokenizer, Qwen2VLImageProcessorPil(min_pixels=784, max_pixels=112 * 112))
    pixels, grid, _, _ = _encode(processor, [sample_scene(np.random.default_rng(1)) for _ in range(3)], 112)
    with torch.no_grad():
        before = image_tokens(visual, pixels.flatten(0, 1), grid.repeat(3, 1))
        factor = scale_image_tokens(visual, processor, 112, 1.0, n_scenes=8)
        after = image_tokens(visual, pixels.flatten(0, 1), grid.repeat(3, 1))
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-6)  # one factor, the same directions
    assert 0.5 < float(after.norm(dim=-1).mean()) < 2.0 and abs(factor - 1) > 0.1  # near the target, really moved
    again = scale_image_tokens(visual, processor, 112, 1.0, n_scenes=8)
    assert again == pytest.approx(1.0, abs=1e-4)  # the same scenes: already at the target


def test_the_tokenizer_learns_the_recipes_fixed_texts():
    """Stage 1's prompt and the chat roles come out of the tokenizer as words, not one token a byte (without
    ``recipe_texts`` "Summarize above image in a few words." took ~20 tokens of a ~50-token stage-1 turn)."""
    from comalite.config import load_config
    from comalite.shapesworld import text_corpus
    from comalite.tiny.build import recipe_texts, train_tokenizer

    cfg = load_config("tiny")
    corpus = text_corpus(seed=0, n=300)
    plain, taught = train_tokenizer(corpus, 640), train_tokenizer(corpus + recipe_texts(cfg), 640)
    for text in (cfg.stage1.prompt, cfg.stage1.text_prompt, "assistant"):
        assert len(taught(text)["input_ids"]) <= len(text.split()) + 1 < len(plain(text)["input_ids"]), text


def test_accuracy_by_question_type_scores_each_turn_with_its_dialogues_text_and_image(monkeypatch):
    """A held-out text dialogue is scored with its text in context (it once lost it: a text-only model was
    scored on the bare question, at its blind rate)."""
    from comalite.records import Dialogue, Turn
    from comalite.tiny import build

    seen = []
    monkeypatch.setattr(build, "dialogue_examples", lambda processor, turns, s1, **kw: seen.extend(turns) or turns)
    monkeypatch.setattr(build, "answer_accuracy", lambda backbone, examples, **kw: {"accuracy": 1.0})
    heldout = [Dialogue(turns=(Turn("How many objects are there?", "two"), Turn("Is there a red star?", "no")),
                        text="two objects: a small red circle in the center and a large blue star at the top left.")]
    by_type = build.accuracy_by_question_type(SimpleNamespace(processor=None), heldout, heldout, s1=None)
    assert set(by_type) == {"How many objects are there?", "Is there a {object}?"}
    assert [len(d.turns) for d in seen] == [1, 1] and all(d.text == heldout[0].text for d in seen)
