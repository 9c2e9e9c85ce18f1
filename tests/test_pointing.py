"""Stage 0's grounding loss (``comalite.tiny.pointing``): the regions ShapesWorld marks, the tokens they select, and
a loss that trains the one head it names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.records import Dialogue, Turn
from comalite.sequence import ANSWER, collate, dialogue_example
from comalite.shapesworld import sample_scene
from comalite.shapesworld.language import cell_box, scene_questions
from comalite.shapesworld.scene import Background, Obj, Scene
from comalite.tiny.pointing import Pointing, PointingLoss, pointing_targets, reference, tokens_in_regions


def test_a_cell_selects_the_tokens_whose_centres_it_holds():
    assert tokens_in_regions([cell_box(0, 0)], 3, 3) == [0]  # 84 px: one token per cell
    assert tokens_in_regions([cell_box(2, 1)], 3, 3) == [7]
    assert tokens_in_regions([cell_box(1, 1)], 4, 4) == [5, 6, 9, 10]  # 112 px: the middle cell spans 2 x 2 tokens
    assert tokens_in_regions([cell_box(0, 2)], 4, 4) == [3]
    assert tokens_in_regions([cell_box(0, 0), cell_box(2, 2)], 3, 3) == [0, 8]
    assert tokens_in_regions([], 3, 3) == []


def _scene(*cells):
    objects = tuple(Obj(shape=s, color=c, size="large", row=r, col=k)
                    for (r, k), s, c in zip(cells, ("circle", "square", "star"), ("red", "blue", "green")))
    return Scene(objects=objects, background=Background("plain", ("charcoal",)))


def test_each_question_marks_the_cells_its_answer_is_read_from():
    questions = {q.turn.question: q.turn.regions for q in scene_questions(_scene((0, 0), (2, 1)))}
    assert questions["What color is the object at the top left?"] == (cell_box(0, 0),)
    assert questions["Where is the blue square?"] == (cell_box(2, 1),)
    assert questions["What shape is the red object?"] == (cell_box(0, 0),)
    assert questions["Is there an object at the top right?"] == (cell_box(0, 2),)  # empty, and still the place asked
    assert questions["Is the red circle above the blue square?"] == (cell_box(0, 0), cell_box(2, 1))  # as named
    assert questions["Is the blue square below the red circle?"] == (cell_box(2, 1), cell_box(0, 0))
    assert set(questions["How many objects are there?"]) == {cell_box(0, 0), cell_box(2, 1)}
    assert questions["How many yellow objects are there?"] == ()  # nothing to point at
    assert questions["Is there a green star?"] == ()


def test_questions_point_with_the_head_of_how_they_name_their_subject():
    pointing = Pointing(place_head=0, object_head=3, count_head=-1)
    assert reference("Is there an object at the top left?") == "place" and pointing.head("What size is the object "
                                                                                         "in the center?") == 0
    assert reference("Is the red circle above the blue square?") == "object"
    assert pointing.head("What color is the square?") == 3 and pointing.head("Where is the small red circle?") == 3
    assert reference("How many red objects are there?") == "count" and pointing.head("How many objects are there?") == -1


def test_a_second_head_points_at_the_second_object_of_a_relation():
    relation = Turn("Is the red circle above the blue square?", "yes", (cell_box(0, 0), cell_box(2, 1)))
    assert Pointing().pointers(relation) == [(1, relation.regions)]  # default: the object head at both
    split = Pointing(second_head=3)
    assert split.pointers(relation) == [(1, (cell_box(0, 0),)), (3, (cell_box(2, 1),))]
    count = Turn("How many objects are there?", "two", (cell_box(0, 0), cell_box(2, 1)))
    assert split.pointers(count) == [(2, count.regions)]  # two regions, but a count: one head
    assert Pointing(count_head=-1).pointers(count) == [] and Pointing().pointers(Turn("Is there a red star?", "no")) == []


def test_regions_are_not_part_of_a_turns_identity():
    assert Turn("q", "a", (cell_box(0, 0),)) == Turn("q", "a")


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    cfg = ModelConfig(backbone=str(tiny_checkpoint), quantization="none", dtype="fp32", device="cpu", n_compress=0,
                      max_pixels=12544, min_pixels=3136, attn_implementation="eager", cpu_threads=1)
    return load_backbone(cfg, train_adapter=None, train_compression=False)


def _dialogues(data_root, n=3):
    rng = np.random.default_rng(0)
    images = sorted((data_root / "images").rglob("*.png"))[:n]
    out = []
    for path in images:
        q = next(q for q in scene_questions(sample_scene(rng)) if q.turn.regions)
        out.append(Dialogue(turns=(q.turn,), image=str(path)))
    return out


def test_the_target_is_the_position_before_the_answer_and_the_image_tokens_in_the_region(eager, data_root):
    dialogue = Dialogue(turns=(Turn("What color is the object at the top left?", "red", (cell_box(0, 0),)),),
                        image=str(sorted((data_root / "images").rglob("*.png"))[0]))
    example = dialogue_example(eager.processor, dialogue, prompt="", text_prompt="", with_compression=False)
    [(head, at, tokens)] = pointing_targets(example, dialogue.turns, eager.processor.image_pad_id, 2,
                                            Pointing().pointers)
    assert head == 0
    assert example.roles[at] != ANSWER and example.roles[at + 1] == ANSWER
    pads = [i for i, t in enumerate(example.input_ids) if t == eager.processor.image_pad_id]
    assert tokens == [pads[0]]  # 112 px: the top-left cell holds one token's centre
    unmarked = Dialogue(turns=(Turn("What color is the object at the top left?", "red"),), image=dialogue.image)
    bare = dialogue_example(eager.processor, unmarked, prompt="", text_prompt="", with_compression=False)
    assert pointing_targets(bare, unmarked.turns, eager.processor.image_pad_id, 2, Pointing().pointers) == []


def test_the_loss_trains_the_head_it_names_and_only_the_layers_up_to_it(eager, data_root):
    from comalite.objective import lm_loss

    dialogues = _dialogues(data_root)
    examples = [dialogue_example(eager.processor, d, prompt="", text_prompt="", with_compression=False)
                for d in dialogues]
    pointing = PointingLoss(eager, Pointing(layer=0, place_head=1, object_head=1, count_head=1, weight=2.0))
    try:
        eager.hf.requires_grad_(True)
        eager.hf.zero_grad()
        batch = collate(examples, eager.processor.tokenizer.pad_token_id)
        lm_loss(eager, batch, compression_mask=False)
        loss = pointing(dialogues, examples)
        assert loss.item() > 0
        loss.backward()
        layers = eager.hf.model.language_model.layers
        per_head = layers[0].self_attn.q_proj.weight.grad.abs().reshape(4, -1).sum(1)  # 4 query heads' rows
        assert per_head[1] > 0 and per_head[[0, 2, 3]].sum() == 0  # only the named head's query moves
        assert layers[1].self_attn.q_proj.weight.grad is None or layers[1].self_attn.q_proj.weight.grad.abs().sum() == 0
        with pytest.raises(RuntimeError, match="eager"):  # one forward pass, one loss: a second call has no weights
            pointing(dialogues, examples)
        with torch.no_grad():  # under the compression mask the answers cannot see the image: an error, not a 0
            lm_loss(eager, batch, compression_mask=True)
        with pytest.raises(RuntimeError, match="compression_mask=False"):
            pointing(dialogues, examples)
        silent = PointingLoss(eager, Pointing(layer=0, place_head=-1, object_head=-1, count_head=-1))
        lm_loss(eager, batch, compression_mask=False)
        assert silent(dialogues, examples).item() == 0  # no head points: nothing to learn, and no error
        silent.close()
    finally:
        pointing.close()
        eager.hf.zero_grad()
        eager.hf.requires_grad_(False)


def test_the_loss_asks_for_eager_attention(tiny_checkpoint, data_root):
    from comalite.objective import lm_loss

    cfg = ModelConfig(backbone=str(tiny_checkpoint), quantization="none", dtype="fp32", device="cpu", n_compress=0,
                      max_pixels=12544, min_pixels=3136, attn_implementation="sdpa", cpu_threads=1)
    sdpa = load_backbone(cfg, train_adapter=None, train_compression=False)
    dialogues = _dialogues(data_root, 1)
    examples = [dialogue_example(sdpa.processor, dialogues[0], prompt="", text_prompt="", with_compression=False)]
    pointing = PointingLoss(sdpa, Pointing())
    with torch.no_grad():
        lm_loss(sdpa, collate(examples, sdpa.processor.tokenizer.pad_token_id), compression_mask=False)
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        pointing(dialogues, examples)


def test_the_shipped_tiny_vlm_was_grounded_and_picks_out_the_object_at_a_place():
    """A guard on what ships: the report of ``data/tiny-vlm`` (what its build measured on held-out scenes) says
    it was built with the grounding loss and packed turns on balanced questions and answers place lookups, and
    whole dialogues, far above blind."""
    import json
    from pathlib import Path

    report = json.loads((Path(__file__).resolve().parent.parent / "data/tiny-vlm/tiny_report.json").read_text())
    assert report["config"]["pointing"]["weight"] > 0 and report["language"] == 2 and report["config"]["pack_turns"]
    # Packed turns put answers at the positions of a stage-1 dialogue: whole dialogues read far above blind too.
    assert report["heldout_answer_accuracy"] > report["heldout_blind_accuracy"] + 0.3
    by_type = report["heldout_by_question_type"]
    for template in ("Is there an object {place}?", "What color is the object {place}?", "Where is the {object}?"):
        assert by_type[template]["accuracy"] > by_type[template]["blind"] + 0.25, template
