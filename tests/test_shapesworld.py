"""ShapesWorld: exact language for a hand-built scene, rendering, held-out splits, and the built files."""
import hashlib
import json
import re
import time

import numpy as np
import pytest

from comalite.data.io import read_dialogues, read_eval_dataset, read_train_subset
from comalite.records import IMAGE_PLACEHOLDER, META_TASKS
from comalite.shapesworld import (
    COLORS,
    HELDOUT_COMBOS,
    SHAPESWORLD_DATASETS,
    TRAIN_SUBSETS,
    Background,
    Obj,
    Scene,
    build_shapesworld,
    describe,
    qa_dialogue,
    question_template,
    render,
    sample_scene,
    text_corpus,
)
from comalite.shapesworld.build import FORMAT
from comalite.shapesworld.language import scene_questions

SMALL = dict(seed=0, n_stage1_images=16, n_train_per_subset=8, n_eval_queries=8, n_candidates=5, image_size=56)

# A large red circle top left, a small red star in the center, a small blue square bottom right.
SCENE = Scene(
    objects=(Obj("circle", "red", "large", 0, 0), Obj("star", "red", "small", 1, 1),
             Obj("square", "blue", "small", 2, 2)),
    background=Background("plain", ("gray",)),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw") / "world"
    start = time.perf_counter()
    manifest = build_shapesworld(out, **SMALL)
    print(f"\nShapesWorld build at test sizes: {time.perf_counter() - start:.2f} s")
    return out, manifest


def _scene(d: dict) -> Scene:
    bg = d["background"]
    return Scene(tuple(Obj(**o) for o in d["objects"]),
                 Background(bg["kind"], tuple(bg["colors"]), bg["vertical"], bg["seed"]), d["style"])


def _index(out) -> dict[str, dict]:
    """images/<rel> -> {"part", "object", "scene": Scene} from scenes.jsonl."""
    index = {}
    for line in (out / "scenes.jsonl").read_text().splitlines():
        e = json.loads(line)
        index[str(out / "images" / e["image"])] = {**e, "scene": _scene(e["scene"])}
    return index


def _digests(out) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- language


def test_describe_hand_built_scene():
    assert describe(SCENE) == ("three objects: a large red circle at the top left, a small red star in the "
                               "center and a small blue square at the bottom right.")
    one = Scene((Obj("diamond", "orange", "small", 1, 0),), Background("plain", ("teal",)))
    assert describe(one) == "one object: a small orange diamond at the middle left."


def test_questions_have_exact_answers():
    qa = {q.turn.question: q.turn.answer for q in scene_questions(SCENE)}
    expected = {
        "How many objects are there?": "three",
        "How many red objects are there?": "two",
        "How many green objects are there?": "zero",
        "How many squares are there?": "one",
        "What color is the object at the top left?": "red",
        "What shape is the object in the center?": "star",
        "What size is the object at the bottom right?": "small",
        "What shape is the blue object?": "square",
        "What color is the star?": "red",
        "Where is the red star?": "center",
        "Where is the blue square?": "bottom right",
        "Is there an object at the top right?": "no",
        "Is there an object in the center?": "yes",
        "Is the red circle left of the blue square?": "yes",
        "Is the red circle right of the red star?": "no",
        "Is the blue square above the red star?": "no",
        "Is the blue square below the red circle?": "yes",
        "Is there a red star?": "yes",
        "Is there an orange circle?": "no",
    }
    for question, answer in expected.items():
        assert qa[question] == answer, question
    # Two red objects: "the red object" is ambiguous, so it is never asked about.
    assert "What shape is the red object?" not in qa
    # An absent held-out combination is never named (training text must not mention it).
    assert "Is there a purple triangle?" not in qa


def test_twins_are_named_by_size_or_not_at_all():
    bg = Background("noise", ("slate",), seed=3)
    by_size = Scene((Obj("circle", "red", "large", 0, 0), Obj("circle", "red", "small", 0, 2)), bg)
    qa = {q.turn.question: q.turn.answer for q in scene_questions(by_size)}
    assert qa["Where is the small red circle?"] == "top right"
    assert qa["Is the large red circle left of the small red circle?"] == "yes"
    assert qa["How many circles are there?"] == "two"
    twins = Scene((Obj("circle", "red", "small", 0, 0), Obj("circle", "red", "small", 2, 0)), bg)
    questions = [q.turn.question for q in scene_questions(twins)]
    # Naming a twin by its cell would give the answer away, so no "where" or relation question is asked.
    assert not any(q.startswith("Where is") or " of " in q or "above" in q or "below" in q for q in questions)
    assert {q.turn.question: q.turn.answer for q in scene_questions(twins)}["How many red objects are there?"] == "two"


def test_qa_dialogue_distinct_varied_and_bounded():
    known = {q.turn for q in scene_questions(SCENE)}
    turns = qa_dialogue(SCENE, np.random.default_rng(0), 5)
    assert len(turns) == 5 and len(set(turns)) == 5 and set(turns) <= known
    assert qa_dialogue(SCENE, np.random.default_rng(0), 5) == turns  # seeded
    with pytest.raises(ValueError):
        qa_dialogue(SCENE, np.random.default_rng(0), len(known) + 1)


# ----------------------------------------------------------------------------- scenes and rendering


def test_render_size_colors_and_styles():
    image = render(SCENE, 112)
    assert image.size == (112, 112) and image.mode == "RGB"
    cell = 112 / 3
    assert image.getpixel((int(cell / 2), int(cell / 2))) == COLORS["red"]  # filled circle center
    assert image.getpixel((int(2.5 * cell), int(2.5 * cell))) == COLORS["blue"]
    assert image.getpixel((int(2.5 * cell), int(0.5 * cell))) == (112, 112, 116)  # empty cell: background
    outline = render(Scene(SCENE.objects, SCENE.background, "outline"), 112)
    assert outline.getpixel((int(cell / 2), int(cell / 2))) == (112, 112, 116)  # hollow in the held-out style
    assert render(SCENE, 56).size == (56, 56)
    with pytest.raises(ValueError):
        render(SCENE, 10)


def test_sample_scene_rules():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        cells = [(o.row, o.col) for o in scene.objects]
        assert 1 <= len(cells) <= 4 and len(set(cells)) == len(cells) and cells == sorted(cells)
        assert not any((o.color, o.shape) in HELDOUT_COMBOS for o in scene.objects)
    assert len(sample_scene(rng, n_objects=3).objects) == 3
    with pytest.raises(ValueError):
        sample_scene(rng, n_objects=5)
    with pytest.raises(ValueError):
        sample_scene(rng, style="watercolor")
    assert any((o.color, o.shape) in HELDOUT_COMBOS
               for _ in range(300) for o in sample_scene(rng, allow_heldout=True).objects)


# ----------------------------------------------------------------------------- the built world


def test_same_seed_same_bytes_and_idempotent(world, tmp_path):
    out, manifest = world
    start = time.perf_counter()
    again = build_shapesworld(tmp_path / "again", **SMALL)
    print(f"\nsecond build: {time.perf_counter() - start:.2f} s")
    assert again == manifest
    assert _digests(tmp_path / "again") == _digests(out)  # parquet, jsonl, png and manifest alike
    other = build_shapesworld(tmp_path / "other", **{**SMALL, "seed": 1})
    assert _digests(tmp_path / "other") != _digests(out)
    assert other["params"]["seed"] == 1
    # Same parameters: returned as is, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")}
    assert build_shapesworld(tmp_path / "again", **SMALL) == manifest
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")} == before
    # Other parameters: rebuilt in place, stale images gone.
    smaller = build_shapesworld(tmp_path / "again", **{**SMALL, "n_stage1_images": 4})
    assert smaller["counts"]["stage1_dialogues"] == 4
    assert len(list((tmp_path / "again" / "images" / "stage1").iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build leftovers


def test_a_folder_of_an_older_format_is_rebuilt_not_misread(world, tmp_path):
    # Same parameters, but written before eval rows said which candidates are near-copies (format 1).
    out, manifest = world
    folder = tmp_path / "old"
    build_shapesworld(folder, **SMALL)
    old = {**manifest, "format": 1}
    (folder / "manifest.json").write_text(json.dumps(old))
    assert build_shapesworld(folder, **SMALL) == manifest
    assert json.loads((folder / "manifest.json").read_text())["format"] == FORMAT == 4


def test_build_refuses_foreign_folder_and_bad_params(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_shapesworld(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="multiple of 28"):
        build_shapesworld(tmp_path / "x", **{**SMALL, "image_size": 50})
    with pytest.raises(ValueError, match="n_eval_queries"):
        build_shapesworld(tmp_path / "x", **{**SMALL, "n_eval_queries": 3})


def test_manifest_and_layout(world):
    out, manifest = world
    assert manifest["params"]["n_turns"] == [3, 5]
    assert [d["name"] for d in manifest["datasets"]] == [d.name for d in SHAPESWORLD_DATASETS]
    assert set(manifest["train"]) == set(TRAIN_SUBSETS)
    for rel in [manifest["stage1"], *manifest["train"].values(), *manifest["eval"].values(), "scenes.jsonl"]:
        assert (out / rel).stat().st_size == manifest["bytes"][rel]
    n_png = sum(1 for _ in (out / "images").rglob("*.png"))
    assert n_png == sum(manifest["counts"]["images"].values()) == len(_index(out))
    assert manifest["counts"]["train_rows"] == {name: SMALL["n_train_per_subset"] for name in TRAIN_SUBSETS}


def test_dataset_table():
    names = [d.name for d in SHAPESWORLD_DATASETS]
    assert len(set(names)) == len(names) and 8 <= len(names) <= 12
    assert {d.meta_task for d in SHAPESWORLD_DATASETS} == set(META_TASKS)
    for task in META_TASKS:
        splits = {d.split for d in SHAPESWORLD_DATASETS if d.meta_task == task}
        assert splits == {"IND", "OOD"}, task
    assert set(TRAIN_SUBSETS) == {d.name for d in SHAPESWORLD_DATASETS if d.split == "IND"}
    assert all(d.source == "shapesworld" for d in SHAPESWORLD_DATASETS)


def test_heldout_combos_and_style_stay_out_of_training(world):
    out, _ = world
    index = _index(out)
    for e in index.values():
        objects = e["scene"].objects
        if e["part"] in ("stage1", "train"):
            assert not any((o.color, o.shape) in HELDOUT_COMBOS for o in objects), e["image"]
            assert e["scene"].style == "flat"
    texts = [line for line in (out / "stage1" / "dialogues.jsonl").read_text().splitlines()]
    for name in TRAIN_SUBSETS:
        for pair in read_train_subset(out / "train" / name, out / "images"):
            texts += [pair.query.text, pair.positive.text, pair.negative.text if pair.negative else ""]
    for color, shape in HELDOUT_COMBOS:
        assert not any(f"{color} {shape}" in t for t in texts), (color, shape)


def test_stage1_train_eval_scenes_are_disjoint(world):
    out, _ = world
    index = _index(out)
    parts = {part: {e["scene"] for e in index.values() if e["part"] == part} for part in ("stage1", "train", "eval")}
    assert not parts["stage1"] & parts["train"]
    assert not parts["stage1"] & parts["eval"]
    assert not parts["train"] & parts["eval"]
    for e in index.values():
        assert e["image"].startswith(e["part"] + "/")


def test_stage1_dialogues(world):
    out, _ = world
    dialogues = read_dialogues(out / "stage1" / "dialogues.jsonl", out / "images")
    index = _index(out)
    assert len(dialogues) == SMALL["n_stage1_images"]
    for d in dialogues:
        assert 3 <= len(d.turns) <= 5 and index[d.image]["part"] == "stage1"
        qa = {q.turn.question: q.turn.answer for q in scene_questions(index[d.image]["scene"])}
        for k, turn in enumerate(d.turns):
            if turn.question == "Describe the image in detail.":
                assert k == 0 and turn.answer == describe(index[d.image]["scene"])
            else:
                assert qa[turn.question] == turn.answer


def test_eval_sets_read_back_with_truth_first(world):
    out, manifest = world
    index = _index(out)
    for info in SHAPESWORLD_DATASETS:
        ds = read_eval_dataset(out / "eval", info.name, image_root=out / "images")
        assert len(ds.queries) == SMALL["n_eval_queries"], info.name
        if info.meta_task in ("classification", "vqa"):
            assert {q.n_hard for q in ds.queries} == {0}, info.name  # no near-copies: label or answer sets
        for q in ds.queries:
            truth, others = q.candidates[0], q.candidates[1:]
            hard, rest = others[: q.n_hard], others[q.n_hard:]
            assert truth not in others
            assert (q.query.image is not None) == info.query.startswith("image")
            assert (truth.image is not None) == (info.target == "image")
            if q.query.image:
                assert q.query.text.startswith(IMAGE_PLACEHOLDER + "\n") and q.query.text.startswith(info.instruction)
                scene = index[q.query.image]["scene"]
                assert scene.style == ("outline" if info.name.endswith("Outline") else "flat")
                if info.name.endswith("Heldout"):
                    assert any((o.color, o.shape) in HELDOUT_COMBOS for o in scene.objects)
            if info.meta_task == "classification":
                if "Count" in info.name:
                    expected, labels = ["zero", "one", "two", "three", "four"][len(scene.objects)], 4
                else:
                    expected, labels = f"{scene.objects[0].color} {scene.objects[0].shape}", len(COLORS) * 6
                assert truth.text == expected and len(q.candidates) == labels
            elif info.meta_task == "vqa":
                question = q.query.text[len(info.instruction):]
                qa = {x.turn.question: x.turn.answer for x in scene_questions(scene)}
                assert truth.text == qa[question] and truth.text not in [c.text for c in others]
            elif info.name.startswith("SW-T2I"):
                caption = q.query.text[len(info.instruction):]
                assert describe(index[truth.image]["scene"]) == caption
                assert all(describe(index[c.image]["scene"]) != caption for c in others)
                assert len(q.candidates) == SMALL["n_candidates"]
                # The near-copies come right after the truth: its scene with one change, drawn for this query
                # only; the rest are other queries' scenes.
                assert q.n_hard == (SMALL["n_candidates"] - 1) // 2
                truth_scene = index[truth.image]["scene"]
                for c in hard:
                    near = index[c.image]["scene"]
                    assert "_neg" in c.image and near.background == truth_scene.background
                    assert len(near.objects) == len(truth_scene.objects)
                assert not any("_neg" in c.image for c in rest)
            elif info.name == "SW-I2T":
                assert truth.text == describe(scene) and describe(scene) not in [c.text for c in others]
                assert q.n_hard == (SMALL["n_candidates"] - 1) // 2
                truths = {describe(index[other.query.image]["scene"]) for other in ds.queries}
                assert not any(c.text in truths for c in hard) and all(c.text in truths for c in rest)
            else:  # grounding: the truth is the crop of the named object, from the query's own image
                crop = index[truth.image]
                assert crop["scene"] == scene and crop["object"] is not None
                target = scene.objects[crop["object"]]
                assert re.search(f'"the ({target.size} )?{target.color} {target.shape}', q.query.text)
                for c in others:
                    e = index[c.image]
                    o = e["scene"].objects[e["object"]]
                    assert e["scene"] != scene or e["object"] != crop["object"]
                    assert (o.color, o.shape, o.size) != (target.color, target.shape, target.size)
                # Near-copies: the crops of the image's other objects (same scene, same background), first.
                assert q.n_hard == min(len(scene.objects) - 1, SMALL["n_candidates"] - 1) >= 1
                assert all(index[c.image]["scene"] == scene for c in hard)
                assert all(index[c.image]["scene"] != scene for c in rest)


def test_train_subsets_read_back(world):
    out, _ = world
    index = _index(out)
    for name in TRAIN_SUBSETS:
        pairs = read_train_subset(out / "train" / name, out / "images")
        assert len(pairs) == SMALL["n_train_per_subset"] and {p.subset for p in pairs} == {name}
        for p in pairs:
            assert p.negative is not None and p.negative != p.positive  # a hard negative in every row
            for item in (p.query, p.positive, p.negative):
                if item.image:
                    assert index[item.image]["part"] == "train"
        if name == "SW-Count":
            for p in pairs:
                n = len(index[p.query.image]["scene"].objects)
                assert p.positive.text == ["zero", "one", "two", "three", "four"][n]
                assert abs(["zero", "one", "two", "three", "four"].index(p.negative.text) - n) == 1


def test_text_corpus_covers_every_word(world):
    out, _ = world
    corpus = text_corpus(seed=0, n=300)
    assert len(corpus) == 300 and corpus == text_corpus(seed=0, n=300)
    vocab = set(re.findall(r"[a-z]+", " ".join(corpus).lower()))
    dialogues = read_dialogues(out / "stage1" / "dialogues.jsonl", out / "images")
    used = set(re.findall(r"[a-z]+", " ".join(t.question + " " + t.answer for d in dialogues for t in d.turns).lower()))
    for info in SHAPESWORLD_DATASETS:
        for q in read_eval_dataset(out / "eval", info.name, image_root=out / "images").queries:
            for item in (q.query, *q.candidates):
                used |= set(re.findall(r"[a-z]+", item.text.lower()))
    assert used <= vocab, used - vocab


def test_question_template_names_the_question_type():
    assert question_template("What color is the object at the top left?") == "What color is the object {place}?"
    assert question_template("Is there an object in the center?") == "Is there an object {place}?"
    assert question_template("Is there an orange star?") == question_template("Is there a red circle?")
    assert question_template("Is the small red circle left of the blue star?") == \
        "Is the {object} {relation} the {object}?"
    assert question_template("How many triangles are there?") == "How many {shapes} are there?"
    assert question_template("What shape is the green object?") == "What shape is the {color} object?"
    assert question_template("Describe the image in detail.") == "Describe the image in detail."


def test_retrieval_rows_never_hold_two_candidates_with_one_description(tmp_path, monkeypatch):
    """Other scenes can share a description ("one object: a small white star at the bottom center."): an
    image -> text row once held such a negative twice (SW-I2T row 36 of the tiny build)."""
    from comalite.shapesworld import build

    # A pool of 24 scenes but only 4 descriptions (the same object, jittered in its cell), so repeats are certain.
    pool = [Scene((Obj("star", "white", "small", 2, 1 + k % 2, dx=0.1 * (k // 4) - 0.3),) if k % 4 < 2 else
                  (Obj("circle", "red", "large", 0, k % 2),), Background("plain", ("gray",))) for k in range(24)]
    draws = iter(pool)
    monkeypatch.setattr(build, "_scene_for", lambda w, rng, style, heldout: (next(draws), 0))
    writer = build._Writer(tmp_path / "images", 32)
    examples = build._retrieval_examples(writer, np.random.default_rng(0), "i2t", "i2t", "eval", 24, "flat",
                                         False, n_candidates=4)
    for e in examples:
        texts = [e.positive[0]] + [t for t, _ in e.negatives]
        assert len(set(texts)) == len(texts), texts
