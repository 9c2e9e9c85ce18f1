"""Exact language about a scene: descriptions, referring expressions, every question with its answer, question
templates and the MMEB-style instructions. Which questions a dialogue asks is ``comalite.shapesworld.asking``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from comalite.config import LANGUAGES
from comalite.records import IMAGE_PLACEHOLDER, Turn

from .scene import COLORS, HELDOUT_COMBOS, NUMBER_WORDS, PLURALS, POSITIONS, SHAPES, SIZES, Obj, Scene, position_name


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe(scene: Scene) -> str:
    """A full description, e.g. "two objects: a large red circle at the top left and a small blue square
    at the bottom right." (the style and background are nuisance, so they are not mentioned)."""
    n = len(scene.objects)
    phrases = [f"a {o.size} {o.color} {o.shape} {o.where}" for o in scene.objects]
    return f"{NUMBER_WORDS[n]} object{'s' if n > 1 else ''}: {_join(phrases)}."


DESCRIPTION_FIELDS = ("size", "color", "shape", "position")
_PHRASE = re.compile(r"\ban? (" + "|".join(SIZES) + ") (" + "|".join(COLORS) + ") (" + "|".join(SHAPES) + r") "
                     r"(?:in the (center)|at the (" + "|".join(p for p in POSITIONS if p != "center") + "))")


def read_description(text: str) -> tuple[str | None, list[dict[str, str]]]:
    """What a description (``describe``'s form) states: its number word (None if it opens with none) and one
    ``{size, color, shape, position}`` per object phrase it contains, in order. Anything else is ignored, so a
    model's imperfect description is read as far as it goes."""
    count = next((w for w in NUMBER_WORDS if text.startswith(w + " object")), None)
    objects = [dict(zip(DESCRIPTION_FIELDS, (m[1], m[2], m[3], m[4] or m[5]))) for m in _PHRASE.finditer(text)]
    return count, objects


def description_hits(said: str, truth: str) -> dict[str, tuple[int, int]]:
    """(right, asked) per thing a description states, ``said`` against the true description ``truth``: the
    object count, and each true object's size, colour, shape and position compared with the object phrase said
    in the same place (both list objects in reading order; a missing phrase gets every field wrong)."""
    said_count, said_objects = read_description(said)
    true_count, true_objects = read_description(truth)
    hits = {"count": (int(said_count == true_count), 1)}
    for field in DESCRIPTION_FIELDS:
        right = sum(i < len(said_objects) and said_objects[i][field] == o[field] for i, o in enumerate(true_objects))
        hits[field] = (right, len(true_objects))
    return hits


def refer(scene: Scene, obj: Obj) -> str | None:
    """"the red circle", or "the small red circle" where that is needed to pick out ``obj`` alone; None
    for a twin (naming its cell would give away "where" and relation answers). Color and shape are always
    named, so a held-out combination has to be bound to be found."""
    same = [o for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)]
    if len(same) == 1:
        return f"the {obj.label}"
    if sum(o.size == obj.size for o in same) == 1:
        return f"the {obj.size} {obj.label}"
    return None


def cell_box(row: int, col: int) -> tuple[float, float, float, float]:
    """The box of a grid cell in fractions of the image, (x0, y0, x1, y1): a question's region (``Turn.regions``)."""
    return (col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)


RELATIONS = {"left of": lambda a, b: a.col < b.col, "right of": lambda a, b: a.col > b.col,
              "above": lambda a, b: a.row < b.row, "below": lambda a, b: a.row > b.row}

# The answer set of each answer kind: VQA candidates are drawn from the question's own kind.
ANSWERS = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "count": NUMBER_WORDS,
           "yesno": ("yes", "no"), "position": POSITIONS}


@dataclass(frozen=True)
class Question:
    kind: str  # question type, for variety within a dialogue
    answers: str  # key of ANSWERS
    turn: Turn
    about: frozenset[int]  # indices of the objects the answer depends on


def scene_questions(scene: Scene) -> list[Question]:
    """Every question ShapesWorld asks about the scene, with its exact answer."""
    objs = scene.objects
    yes = {True: "yes", False: "no"}
    out = []

    def add(kind, answers, question, answer, about=(), cells=None):
        cells = [(objs[i].row, objs[i].col) for i in about] if cells is None else cells  # in the order named
        regions = tuple(cell_box(*rc) for rc in cells)  # where the answer is read: the grounding
        out.append(Question(kind, answers, Turn(question, answer, regions), frozenset(about)))

    for i, o in enumerate(objs):
        for attribute in ("color", "shape", "size"):
            add(f"{attribute} at", attribute, f"What {attribute} is the object {o.where}?", getattr(o, attribute), [i])
        if refer(scene, o):
            add("where", "position", f"Where is {refer(scene, o)}?", o.position, [i])
    occupied = {(o.row, o.col) for o in objs}
    for r in range(3):
        for c in range(3):
            where = "in the center" if (r, c) == (1, 1) else f"at the {position_name(r, c)}"
            add("occupied", "yesno", f"Is there an object {where}?", yes[(r, c) in occupied], cells=[(r, c)])
    add("count", "count", "How many objects are there?", NUMBER_WORDS[len(objs)], range(len(objs)))
    for color in COLORS:
        about = [i for i, o in enumerate(objs) if o.color == color]
        add("count color", "count", f"How many {color} objects are there?", NUMBER_WORDS[len(about)], about)
        if len(about) == 1:
            add("shape of", "shape", f"What shape is the {color} object?", objs[about[0]].shape, about)
    for shape in SHAPES:
        about = [i for i, o in enumerate(objs) if o.shape == shape]
        add("count shape", "count", f"How many {PLURALS[shape]} are there?", NUMBER_WORDS[len(about)], about)
        if len(about) == 1:
            add("color of", "color", f"What color is the {shape}?", objs[about[0]].color, about)
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i != j and refer(scene, a) and refer(scene, b):
                for name, holds in RELATIONS.items():
                    add("relation", "yesno", f"Is {refer(scene, a)} {name} {refer(scene, b)}?",
                        yes[holds(a, b)], [i, j])
    present = {(o.color, o.shape) for o in objs}
    for color in COLORS:
        for shape in SHAPES:
            # Absent held-out combinations are never named, so training text never mentions them.
            if (color, shape) in present or (color, shape) not in HELDOUT_COMBOS:
                about = [i for i, o in enumerate(objs) if (o.color, o.shape) == (color, shape)]
                add("exists", "yesno", _exists(color, shape), yes[bool(about)], about)
    return out


def _exists(color: str, shape: str) -> str:
    return f"Is there {'an' if color[0] in 'aeiou' else 'a'} {color} {shape}?"


def absent_heldout_questions(scene: Scene) -> list[Question]:
    """"Is there a purple triangle?" (answer no) for each held-out combination the scene lacks: for the held-out
    evaluation only (``scene_questions`` never names an absent one, so training text never does), where they
    balance the "yes" of the held-out object's own existence question."""
    present = {(o.color, o.shape) for o in scene.objects}
    return [Question("exists", "yesno", Turn(_exists(color, shape), "no"), frozenset())
            for color, shape in HELDOUT_COMBOS if (color, shape) not in present]


_TEMPLATE_RULES = (
    (re.compile(r"\b(" + "|".join(PLURALS.values()) + r")\b"), "{shapes}"),
    (re.compile(r"\b(?:(?:small|large) )?(?:" + "|".join(COLORS) + ") (?:" + "|".join(SHAPES) + r")\b"), "{object}"),
    (re.compile(r"\b(?:an?) \{object\}"), "a {object}"),
    (re.compile(r"\b(" + "|".join(COLORS) + r")\b"), "{color}"),
    (re.compile(r"\b(" + "|".join(SHAPES) + r")\b"), "{shape}"),
    (re.compile(r"in the center|at the (?:" + "|".join(p for p in POSITIONS if p != "center") + ")"), "{place}"),
    (re.compile(r"\b(?:" + "|".join(RELATIONS) + r")\b"), "{relation}"),
)


def question_template(question: str) -> str:
    """A question's type: its colours, shapes, objects, places and relations replaced by placeholders,
    e.g. "What color is the object at the top left?" -> "What color is the object {place}?"."""
    for pattern, placeholder in _TEMPLATE_RULES:
        question = pattern.sub(placeholder, question)
    return question


def check_language(language: int) -> int:
    """``language`` if it is one of ``LANGUAGES`` (``comalite.config``: the setting ``data.language``)."""
    if language not in LANGUAGES:
        raise ValueError(f"ShapesWorld language must be one of {LANGUAGES}, got {language!r}")
    return language


_IMAGE = f"{IMAGE_PLACEHOLDER}\n"  # MMEB writes the placeholder then a newline before the instruction
CLASSIFY = f"{_IMAGE}Represent the given image for classification"
COUNT = f"{_IMAGE}Identify the number of objects shown in the image"
VQA = f"{_IMAGE}Represent the given image with the following question: "
T2I = "Find me an image that matches the given caption: "
I2T = f"{_IMAGE}Find an image caption describing the given image."
GROUND = f"{_IMAGE}Select the portion of the image that isolates the object labeled as"
IMAGE_TARGET = f"{_IMAGE}Represent the given image."
CROP_TARGET = f"{_IMAGE}Represent the given cropped image of the object"
DESCRIBE = "Describe the image in detail."

COUNT_LABELS = NUMBER_WORDS[1:]
OBJECT_LABELS = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
