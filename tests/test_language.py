"""ShapesWorld's question languages (``data.language``): 1 stays byte-identical to the data the shipped tiny VLM
was built on; 2 balances answers per question type and writes stage-1 dialogues whose answers cannot be read
off earlier text. And the honest image-blind baseline (per template, never below a uniform guess)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from comalite.config import load_config
from comalite.data.io import read_dialogues
from comalite.records import Dialogue, Turn
from comalite.shapesworld import build_shapesworld, qa_dialogue, question_template, sample_scene, text_corpus
from comalite.shapesworld.asking import pick_question, answer_set, dialogue_leaks
from comalite.shapesworld.language import ANSWERS, DESCRIBE, scene_questions, describe
from comalite.shapesworld.scene import HELDOUT_COMBOS
from comalite.tiny.build import blind_baseline, blind_by_template, stage0_dialogues

YESNO = ("Is there an object {place}?", "Is there a {object}?", "Is the {object} {relation} the {object}?")
COUNTS = ("How many {color} objects are there?", "How many {shapes} are there?")


def _digest(turns) -> str:
    return hashlib.sha256("".join(f"{t.question}|{t.answer}\n" for t in turns).encode()).hexdigest()


# ---- language 1: unchanged (hashes computed before language 2 existed) ----

def test_language_1_is_byte_identical_to_the_shipped_language(tmp_path):
    rng = np.random.default_rng(123)
    turns = [t for _ in range(300) for t in qa_dialogue(sample_scene(rng), rng, 4)]
    assert _digest(turns) == "daa68588b9ea51800cbd448146f2ec7a37174d25d013f65f5518fdd31e6ad33f"
    corpus = hashlib.sha256("\n".join(text_corpus(seed=0, n=600)).encode()).hexdigest()
    assert corpus == "a1525d0ad95e681ebbe14ff3b95b2bb518b7f58429d04300fa11044d337c7c36"

    manifest = build_shapesworld(tmp_path / "sw", seed=3, n_stage1_images=40, n_train_per_subset=8,
                                 n_eval_queries=10, n_candidates=5, image_size=56)
    assert "language" not in manifest["params"]  # a folder built before the setting existed is language 1
    root = tmp_path / "sw"
    h = hashlib.sha256((root / "stage1/dialogues.jsonl").read_bytes())
    for f in ("train/SW-VQA/original.parquet", "eval/SW-VQA/test.parquet", "eval/SW-VQA-Heldout/test.parquet"):
        rows = [{k: v for k, v in row.items() if k != "n_hard"} for row in pq.read_table(root / f).to_pylist()]
        h.update(json.dumps(rows, sort_keys=True).encode())  # n_hard (format 2) says how candidates are built
    assert h.hexdigest() == "745f869ac03ef7a0663a7a3d19b1a03a268d58f4bd0d55e086c5514e7c154876"

    dialogues = stage0_dialogues(tmp_path / "s0", 30, 0, 56, 5)
    assert _digest([t for d in dialogues for t in d.turns]) == \
        "bbdb3f5309da6b68d326948f3c8c95be0955018ab9ec3fa3c2d3c2924ddedf9c"


def test_the_setting_defaults_to_2_and_keys_the_data_folder(tmp_path):
    assert load_config("tiny").data.language == 2 and load_config("tiny-smoke").data.language == 2
    assert load_config("tiny-smoke", ["data.language=1"]).data.language == 1
    small = dict(seed=1, n_stage1_images=12, n_train_per_subset=4, n_eval_queries=8, n_candidates=4, image_size=56)
    first = build_shapesworld(tmp_path / "sw", **small)  # build_shapesworld's own default stays language 1
    lines1 = (tmp_path / "sw/stage1/dialogues.jsonl").read_text()
    second = build_shapesworld(tmp_path / "sw", **small, language=2)  # a switch rebuilds, never reuses
    assert second["params"]["language"] == 2 and first["params"] != second["params"]
    lines2 = (tmp_path / "sw/stage1/dialogues.jsonl").read_text()
    assert lines2 != lines1
    dialogues = read_dialogues(tmp_path / "sw/stage1/dialogues.jsonl", tmp_path / "sw/images")
    assert len(dialogues) == 12 and not any(dialogue_leaks(d.turns) for d in dialogues)
    assert all(t.question != DESCRIBE for d in dialogues for t in d.turns[:-1])
    build_shapesworld(tmp_path / "sw", **small)  # and back
    assert (tmp_path / "sw/stage1/dialogues.jsonl").read_text() == lines1
    with pytest.raises(ValueError, match="language"):
        build_shapesworld(tmp_path / "other", **small, language=3)


# ---- language 2: balanced answers ----

def _distributions(language: int, n: int = 2000) -> tuple[dict, dict]:
    """Answer counts per template over ``n`` scenes: stage-1-like dialogues (3-5 turns), one VQA pick each."""
    rng = np.random.default_rng(7)
    dialogues, vqa = defaultdict(Counter), defaultdict(Counter)
    for _ in range(n):
        scene = sample_scene(rng)
        for t in qa_dialogue(scene, rng, int(rng.integers(3, 6)), language):
            dialogues[question_template(t.question)][t.answer] += 1
        questions = scene_questions(scene)
        for _ in range(4):  # as the VQA builders pick (SW-VQA: one question per image)
            q = pick_question(rng, questions, language).turn
            vqa[question_template(q.question)][q.answer] += 1
    return dialogues, vqa


def test_language_2_balances_answers_per_question_type():
    dialogues, vqa = _distributions(2)
    for template in YESNO:
        c = dialogues[template]
        assert 0.45 <= c["yes"] / sum(c.values()) <= 0.55, (template, c)
        c = vqa[template]
        assert 0.45 <= c["yes"] / sum(c.values()) <= 0.55, (template, c)
    for template in COUNTS:
        for c in (dialogues[template], vqa[template]):
            n = sum(c.values())
            assert c.most_common(1)[0][1] / n <= 0.42, (template, c)
            assert all(c[w] / n >= 0.2 for w in ("zero", "one", "two")), (template, c)
    old, _ = _distributions(1, 600)  # what language 1 gives: the prior answers most of these
    assert old["Is there a {object}?"]["no"] / sum(old["Is there a {object}?"].values()) > 0.85
    assert old[COUNTS[0]]["zero"] / sum(old[COUNTS[0]].values()) > 0.6


def test_language_2_asks_about_present_and_absent_combinations_never_an_absent_heldout_one():
    rng = np.random.default_rng(3)
    asked = Counter()
    for _ in range(500):
        scene = sample_scene(rng, allow_heldout=True)
        present = {(o.color, o.shape) for o in scene.objects}
        for t in qa_dialogue(scene, rng, 5, 2):
            if question_template(t.question) == "Is there a {object}?":
                color, shape = t.question.removesuffix("?").split()[-2:]
                assert (t.answer == "yes") == ((color, shape) in present)
                assert t.answer == "yes" or (color, shape) not in {("purple", "triangle"), ("orange", "star"),
                                                                   ("green", "cross"), ("blue", "diamond")}
                asked[t.answer] += 1
    assert 0.4 <= asked["yes"] / sum(asked.values()) <= 0.6


def test_language_2_heldout_vqa_asks_nothing_the_heldout_object_gives_away(tmp_path):
    """Held-out VQA asks about the held-out object; a query-blind embedder must not be able to answer it by the
    answer prior. Language 1 asked its existence ("yes" every time) and counts (mostly "one")."""
    build_shapesworld(tmp_path / "sw", seed=5, n_stage1_images=4, n_train_per_subset=4, n_eval_queries=400,
                      n_candidates=5, image_size=56, language=2)
    rows = pq.read_table(tmp_path / "sw/eval/SW-VQA-Heldout/test.parquet").to_pylist()
    answers = defaultdict(Counter)
    for row in rows:
        answers[question_template(row["qry_text"].split("question: ")[-1])][row["tgt_text"][0]] += 1
    assert not [t for t in answers if t.startswith("How many")], answers.keys()
    for template in ("Is there a {object}?", "What size is the object {place}?"):
        c = answers[template]
        assert sum(c.values()) >= 30 and 0.35 <= c["yes" if "Is" in template else "small"] / sum(c.values()) <= 0.65, c
    named = Counter()  # "no": an absent held-out combination, named here only (never in training text)
    for row in rows:
        q = row["qry_text"].split("question: ")[-1]
        if question_template(q) == "Is there a {object}?":
            named[tuple(q.removesuffix("?").split()[-2:]) in HELDOUT_COMBOS] += 1
    assert named[False] == 0, named


# ---- language 2: leak-free stage-1 dialogues ----

def test_the_leak_checker_flags_what_earlier_text_gives_away():
    desc = Turn(DESCRIBE, "one object: a large red circle at the top left.")
    assert dialogue_leaks([desc, Turn("How many objects are there?", "one")])
    assert not dialogue_leaks([Turn("How many objects are there?", "one"), desc])  # the description last
    named = Turn("Is the red circle left of the blue square?", "yes")
    assert dialogue_leaks([named, Turn("Is there a red circle?", "yes")])
    assert dialogue_leaks([named, Turn("How many red objects are there?", "one")])
    assert dialogue_leaks([named, Turn("How many squares are there?", "one")])
    assert dialogue_leaks([named, Turn("How many objects are there?", "two")])
    assert dialogue_leaks([Turn("How many red objects are there?", "zero"), Turn("Is there a red star?", "no")])
    assert dialogue_leaks([Turn("What color is the circle?", "red"), Turn("Is there a red circle?", "yes")])
    assert dialogue_leaks([Turn("Where is the red circle?", "top left"), Turn("Is there an object at the top left?",
                                                                              "yes")])
    assert dialogue_leaks([Turn("Where is the red circle?", "top left"),
                           Turn("What color is the object at the top left?", "red")])
    assert not dialogue_leaks([Turn("Is there a red circle?", "yes"), Turn("Where is the red circle?", "top left")])
    assert not dialogue_leaks([named, Turn("Is there a green star?", "no"), Turn("How many stars are there?", "zero")])


def test_language_2_stage1_dialogues_are_leak_free_and_language_1_ones_are_not():
    rng = np.random.default_rng(11)
    old = new = 0
    for _ in range(1500):
        scene = sample_scene(rng)
        n = int(rng.integers(3, 6))
        lead = (Turn(DESCRIBE, describe(scene)),) if rng.random() < 0.5 else ()
        turns2 = qa_dialogue(scene, rng, n - len(lead), 2) + lead  # as build_shapesworld writes language 2
        assert not dialogue_leaks(turns2), (turns2, dialogue_leaks(turns2))
        assert all(t.question != DESCRIBE for t in turns2[:-1])
        new += len(turns2) == n
        old += bool(dialogue_leaks(lead + qa_dialogue(scene, rng, n - len(lead), 1)))
    assert new == 1500
    assert old > 0.5 * 1500  # language 1: every description-first dialogue, and more, can be answered by copying


# ---- the honest blind baseline ----

def _dialogues(*pairs) -> list[Dialogue]:
    return [Dialogue(turns=(Turn(q, a),), image="x.png") for q, a in pairs]


def test_blind_baseline_is_the_template_prior_never_below_a_uniform_guess():
    places = ["at the top left", "in the center", "at the bottom right", "at the top right", "at the middle left"]
    # "Is there an object {place}?": 80 % "yes" in training and in the test -> 0.8, whatever the place
    train = _dialogues(*[(f"Is there an object {places[i % 5]}?", "yes" if i % 5 else "no") for i in range(50)])
    test = _dialogues(*[(f"Is there an object {places[(i + 2) % 5]}?", "yes" if i % 5 else "no")
                        for i in range(20)])
    out = blind_by_template(train, test)["Is there an object {place}?"]
    assert out["prior_answer"] == "yes" and out["prior"] == pytest.approx(0.8) and out["blind"] == pytest.approx(0.8)
    # relations: training says "yes", the test holds 30 % "yes": the prior scores 0.3, a coin 0.5 -> 0.5
    train = _dialogues(*[("Is the red circle left of the blue square?", "yes")] * 3,
                       ("Is the red circle above the blue square?", "no"))
    test = _dialogues(*[("Is the green star right of the white cross?", "yes")] * 3,
                      *[("Is the green star below the white cross?", "no")] * 7)
    out = blind_by_template(train, test)["Is the {object} {relation} the {object}?"]
    assert out["prior"] == pytest.approx(0.3) and out["uniform"] == 0.5 and out["blind"] == 0.5
    # colours: never seen in training -> a uniform guess over the 7 colours; a description has no answer set
    test2 = _dialogues(("What color is the object in the center?", "red"), (DESCRIBE, "one object: ..."))
    out = blind_by_template([], test2)
    assert out["What color is the object {place}?"]["blind"] == pytest.approx(1 / 7)
    assert out[DESCRIBE]["blind"] == 0.0
    assert blind_baseline([], test2) == pytest.approx((1 / 7 + 0) / 2)


def test_answer_sets_come_from_the_answer_kinds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for q in scene_questions(sample_scene(rng)):
            assert answer_set(q.turn.question) == ANSWERS[q.answers]
            assert q.turn.answer in answer_set(q.turn.question)
    assert answer_set(DESCRIBE) == () and answer_set("What is in the picture?") == ()


def test_a_description_is_scored_per_thing_it_states():
    from comalite.shapesworld.language import description_hits, read_description

    rng = np.random.default_rng(5)
    for _ in range(50):  # every generated description reads back as its own scene
        scene = sample_scene(rng)
        count, objects = read_description(describe(scene))
        assert count == ("one", "two", "three", "four")[len(scene.objects) - 1]
        assert objects == [{"size": o.size, "color": o.color, "shape": o.shape, "position": o.position}
                           for o in scene.objects]
    truth = "two objects: a large red circle at the top left and a small blue square in the center."
    said = "two objects: a large red circle at the top right and a small blue star in the center."
    assert description_hits(said, truth) == {"count": (1, 1), "size": (2, 2), "color": (2, 2), "shape": (1, 2),
                                             "position": (1, 2)}
    cut_short = "three objects: a large red circle at the top left and a"  # a missing object is wrong in full
    assert description_hits(cut_short, truth) == {"count": (0, 1), "size": (1, 2), "color": (1, 2),
                                                  "shape": (1, 2), "position": (1, 2)}
