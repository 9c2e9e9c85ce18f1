"""Which questions a dialogue asks, and in which order: the question languages (``data.language``).

Language 1 picks a question type, then a question of it, as the shipped tiny VLM was built. Language 2 balances
each type's answers (yes/no 50/50, counts spread, present and absent objects alike: ``_pick_balanced``) and
never asks what earlier text of the same dialogue gives away (``dialogue_leaks`` checks a dialogue): a stage-1
answer then has to come from the image, through the compression tokens.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

from comalite.records import Turn

from .language import (RELATIONS, ANSWERS, CLASSIFY, COUNT, COUNT_LABELS, CROP_TARGET, DESCRIBE, GROUND, I2T,
                       IMAGE_TARGET, OBJECT_LABELS, T2I, VQA, Question, absent_heldout_questions, scene_questions,
                       check_language, describe)
from .scene import COLORS, NUMBER_WORDS, PLURALS, POSITIONS, SHAPES, SIZES, STYLES, Scene, pick, sample_scene


# Language 2's counts ("How many {color} objects", "How many {shapes}"): among the counts this scene can
# answer, count c is chosen with weight _COUNT_WEIGHTS[c], then kept with probability _COUNT_KEEP[c] (else the
# type is not asked this time). 2, 3 and 4 of one colour/shape are rare in 1-4-object scenes, so they are
# taken whenever possible and zero/one are thinned: over random scenes ~32 % zero, ~32 % one, ~32 % two, ~3 %
# three (language 1: ~78 % zero for colours). Tuned by simulation over 20,000 scenes.
_COUNT_WEIGHTS = (1.0, 1.0, 8.0, 60.0, 600.0)
_COUNT_KEEP = (0.6, 0.6, 1.0, 1.0, 1.0)


def _pick_balanced(rng, questions: list[Question], *, strict: bool = True) -> Question | None:
    """Language 2: one of ``questions`` (all of one type), chosen so that answers are balanced over scenes.

    - yes/no types: a fair coin picks the answer, then a question with that answer (an occupied or an empty
      cell, a present or an absent colour/shape combination, a true or a false relation). If none has it:
      None when ``strict`` (the type is not asked now), else a question with the other answer;
    - colour/shape counts: see ``_COUNT_WEIGHTS``; None when the drawn count is not kept;
    - every other type: a question uniformly, as language 1 does.
    """
    if not questions:
        return None
    kind = questions[0].kind
    if questions[0].answers == "yesno":
        answer = "yes" if rng.random() < 0.5 else "no"
        same = [q for q in questions if q.turn.answer == answer]
        if not same:
            if strict:
                return None
            same = questions
        return pick(rng, same)
    if kind in ("count color", "count shape"):
        counts = sorted({NUMBER_WORDS.index(q.turn.answer) for q in questions})
        weights = np.array([_COUNT_WEIGHTS[c] for c in counts])
        count = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
        if rng.random() >= _COUNT_KEEP[count]:
            return None
        return pick(rng, [q for q in questions if q.turn.answer == NUMBER_WORDS[count]])
    return pick(rng, questions)


def pick_question(rng, questions: list[Question], language: int = 1) -> Question:
    """A question type first, then a question of it: otherwise the many yes/no variants would dominate.
    Language 2 picks within the type with ``_pick_balanced`` (a type it declines is drawn again)."""
    kinds = sorted({q.kind for q in questions})
    if language == 1:
        kind = pick(rng, kinds)
        return pick(rng, [q for q in questions if q.kind == kind])
    while True:
        kind = pick(rng, kinds)
        # not strict: an image may offer a type with one answer only (VQA must still ask it something)
        q = _pick_balanced(rng, [q for q in questions if q.kind == kind], strict=False)
        if q is not None:
            return q


GIVEN_AWAY = ("count", "count color", "count shape")
"""Question kinds language 2's held-out VQA leaves out: whichever object they ask about, the held-out one present
makes the count at least one (mostly exactly one), so a query-blind embedder could answer them by the prior."""


def heldout_vqa_questions(scene: Scene, k: int, language: int = 1) -> list[Question]:
    """What held-out VQA may ask of ``scene``, built around its held-out object ``k``: questions whose answer
    depends on that object. Language 2 also drops those the object gives away (``GIVEN_AWAY``) and balances its
    existence question ("yes" every time) with absent held-out combinations (``absent_heldout_questions``);
    language 1 keeps its questions as built."""
    questions = [q for q in scene_questions(scene) if k in q.about]
    if language == 1:
        return [q for q in questions if q.kind != "count"]
    return [q for q in questions if q.kind not in GIVEN_AWAY] + absent_heldout_questions(scene)


# ---- leaks: answers that earlier text of the same dialogue gives away (language 2 avoids them) ----

_OBJ = r"(?:(small|large) )?(" + "|".join(COLORS) + ") (" + "|".join(SHAPES) + ")"
_PLACE = r"(in the center|at the (?:" + "|".join(p for p in POSITIONS if p != "center") + "))"
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
_PARSE = [(name, re.compile(pattern)) for name, pattern in (
    ("describe", re.escape("Describe the image in detail.")),
    ("attribute at", r"What (color|shape|size) is the object " + _PLACE + r"\?"),
    ("where", r"Where is the " + _OBJ + r"\?"),
    ("occupied", r"Is there an object " + _PLACE + r"\?"),
    ("count", r"How many objects are there\?"),
    ("count color", r"How many (" + "|".join(COLORS) + r") objects are there\?"),
    ("shape of", r"What shape is the (" + "|".join(COLORS) + r") object\?"),
    ("count shape", r"How many (" + "|".join(PLURALS.values()) + r") are there\?"),
    ("color of", r"What color is the (" + "|".join(SHAPES) + r")\?"),
    ("relation", r"Is the " + _OBJ + " (?:" + "|".join(RELATIONS) + ") the " + _OBJ + r"\?"),
    ("exists", r"Is there an? (" + "|".join(COLORS) + ") (" + "|".join(SHAPES) + r")\?"),
)]


def _cell(place: str) -> str:
    return "center" if place == "in the center" else place.removeprefix("at the ")


def _parse(question: str) -> tuple[str, tuple]:
    for name, pattern in _PARSE:
        m = pattern.fullmatch(question)
        if m:
            return name, m.groups()
    raise ValueError(f"not a ShapesWorld question: {question!r}")


class _Known:
    """What earlier turns of a dialogue say about the scene: objects (partial: colour, shape, size, cell;
    merged by cell), empty cells, absent combinations, exact counts. Questions presuppose what they name
    ("Where is the red circle?": a red circle exists; "What color is the circle?": exactly one circle)."""

    def __init__(self):
        self.objects: list[dict] = []
        self.empty: set[str] = set()
        self.absent: set[tuple[str, str]] = set()
        self.count_color: dict[str, int] = {}
        self.count_shape: dict[str, int] = {}
        self.total: int | None = None
        self.described = False

    def add_object(self, **attrs) -> None:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        for o in self.objects:
            if "cell" in attrs and o.get("cell") == attrs["cell"]:
                o.update(attrs)
                return
        self.objects.append(attrs)

    def learn(self, turn: Turn) -> None:
        kind, g = _parse(turn.question)
        a = turn.answer
        if kind == "describe":
            self.described = True
        elif kind == "attribute at":
            self.add_object(**{g[0]: a, "cell": _cell(g[1])})
        elif kind == "where":
            self.add_object(size=g[0], color=g[1], shape=g[2], cell=a)
        elif kind == "occupied":
            if a == "yes":
                self.add_object(cell=_cell(g[0]))
            else:
                self.empty.add(_cell(g[0]))
        elif kind == "count":
            self.total = NUMBER_WORDS.index(a)
        elif kind == "count color":
            self.count_color[g[0]] = NUMBER_WORDS.index(a)
        elif kind == "shape of":
            self.add_object(color=g[0], shape=a)
            self.count_color[g[0]] = 1
        elif kind == "count shape":
            self.count_shape[_SINGULAR[g[0]]] = NUMBER_WORDS.index(a)
        elif kind == "color of":
            self.add_object(color=a, shape=g[0])
            self.count_shape[g[0]] = 1
        elif kind == "relation":
            self.add_object(size=g[0], color=g[1], shape=g[2])
            self.add_object(size=g[3], color=g[4], shape=g[5])
        elif kind == "exists":
            if a == "yes":
                self.add_object(color=g[0], shape=g[1])
            else:
                self.absent.add((g[0], g[1]))

    def _distinct_objects(self) -> bool:
        """Whether two known objects are certainly different (a cell, colour, shape or size tells them apart)."""
        for i, a in enumerate(self.objects):
            for b in self.objects[i + 1:]:
                if any(k in a and k in b and a[k] != b[k] for k in ("cell", "color", "shape", "size")):
                    return True
        return False

    def leak(self, question: str) -> str | None:
        """Why earlier text gives ``question``'s answer away (or narrows a count), or None."""
        if self.described:
            return "a description came before it"
        kind, g = _parse(question)
        if kind == "exists":
            color, shape = g
            if any(o.get("color") == color and o.get("shape") == shape for o in self.objects):
                return f"a {color} {shape} was named"
            if (color, shape) in self.absent or self.count_color.get(color) == 0 or self.count_shape.get(shape) == 0:
                return f"no {color} {shape} follows from an earlier count"
        elif kind == "count color":
            if g[0] in self.count_color or any(o.get("color") == g[0] for o in self.objects):
                return f"a {g[0]} object was named"
        elif kind == "count shape":
            shape = _SINGULAR[g[0]]
            if shape in self.count_shape or any(o.get("shape") == shape for o in self.objects):
                return f"a {shape} was named"
        elif kind == "count":
            if self.total is not None or self._distinct_objects():
                return "two different objects were named"
        elif kind == "occupied":
            cell = _cell(g[0])
            if cell in self.empty or any(o.get("cell") == cell for o in self.objects):
                return f"the {cell} was named"
            cells = {o["cell"] for o in self.objects if "cell" in o}
            if self.total is not None and len(cells) == self.total:
                return "every object's cell is known"
        elif kind == "attribute at":
            if any(o.get("cell") == _cell(g[1]) and g[0] in o for o in self.objects):
                return f"the {g[0]} of the object {g[1]} was named"
        elif kind == "where":
            if self._find(*g, "cell"):
                return "its cell was named"
        elif kind == "shape of":
            if any(o.get("color") == g[0] and "shape" in o for o in self.objects):
                return f"the {g[0]} object's shape was named"
        elif kind == "color of":
            if any(o.get("shape") == g[0] and "color" in o for o in self.objects):
                return f"the {g[0]}'s colour was named"
        elif kind == "relation":
            if self._find(*g[:3], "cell") and self._find(*g[3:], "cell"):
                return "both cells were named"
        return None

    def _find(self, size, color, shape, attribute) -> bool:
        """Whether a known object referred to as ``[size] color shape`` has ``attribute`` known."""
        return any(o.get("color") == color and o.get("shape") == shape and o.get("size", size) == size
                   and attribute in o for o in self.objects)


_ANSWER_SETS = {"attribute at": None, "where": "position", "occupied": "yesno", "count": "count",
                "count color": "count", "shape of": "shape", "count shape": "count", "color of": "color",
                "relation": "yesno", "exists": "yesno"}


def answer_set(question: str) -> tuple[str, ...]:
    """The answers ``question`` can have (``ANSWERS``: yes/no, the colours, the counts "zero".."four"...); ()
    for a description or a question ShapesWorld does not ask (no finite answer set)."""
    try:
        kind, groups = _parse(question)
    except ValueError:
        return ()
    if kind == "describe":
        return ()
    return ANSWERS[groups[0] if kind == "attribute at" else _ANSWER_SETS[kind]]


def dialogue_leaks(turns) -> list[str]:
    """Every turn of a dialogue whose answer earlier text of the same dialogue gives away: a turn after the
    description, an "exists" question about a combination named (or counted to zero) before, a colour/shape
    count after an object of that colour/shape was named, "How many objects" after two different objects
    were named, "Is there an object {place}" after that place was named (or every object's place is known).
    Empty for a leak-free dialogue (language 2's stage-1 dialogues)."""
    known, out = _Known(), []
    for i, turn in enumerate(turns):
        why = known.leak(turn.question)
        if why:
            out.append(f"turn {i} {turn.question!r}: {why}")
        known.learn(turn)
    return out


def qa_dialogue(scene: Scene, rng: np.random.Generator, n_turns: int, language: int = 1) -> tuple[Turn, ...]:
    """``n_turns`` distinct questions with exact one- or two-word answers, of as many types as possible.

    Language 2: each question's answer is balanced (``_pick_balanced``) and none is given away by an earlier
    turn (``dialogue_leaks`` is empty)."""
    if check_language(language) == 2:
        return _qa_dialogue_balanced(scene, rng, n_turns)
    by_kind: dict[str, list[Turn]] = {}
    for q in scene_questions(scene):
        by_kind.setdefault(q.kind, []).append(q.turn)
    if n_turns > sum(len(t) for t in by_kind.values()):
        raise ValueError(f"cannot ask {n_turns} distinct questions about this scene")
    names = sorted(by_kind)
    kinds = [names[int(i)] for i in rng.permutation(len(names))]
    turns: list[Turn] = []
    while len(turns) < n_turns:
        for kind in kinds:
            unused = [t for t in by_kind[kind] if t not in turns]
            if unused and len(turns) < n_turns:
                turns.append(pick(rng, unused))
    return tuple(turns)


_INVENTORY = ("count", "count color", "count shape", "exists", "occupied")  # whose answers mentions give away


def _qa_dialogue_balanced(scene: Scene, rng: np.random.Generator, n_turns: int) -> tuple[Turn, ...]:
    """Language 2's ``qa_dialogue``: the types as language 1 chooses them (a random order, round after round),
    asked inventory types first ("Is there...", "How many...", which naming an object would give away), then the
    rest; each a balanced question (``_pick_balanced``) among those earlier turns do not give away. A type
    declined or with none left is replaced by the next in the order, an inventory type only while no other
    has been asked: asked after objects were named, their "yes"/non-zero questions would often be given
    away and dropped, skewing their answers."""
    by_kind: dict[str, list[Question]] = {}
    for q in scene_questions(scene):
        by_kind.setdefault(q.kind, []).append(q)
    names = sorted(by_kind)
    kinds = [names[int(i)] for i in rng.permutation(len(names))]
    slots = [kinds[i % len(kinds)] for i in range(n_turns)]
    slots.sort(key=lambda kind: kind not in _INVENTORY)  # stable: the random order within each group stays
    spare = (kinds[i % len(kinds)] for i in range(n_turns, n_turns + 50 * len(kinds)))
    turns: list[Turn] = []
    known = _Known()
    naming, spares = False, 0  # whether a non-inventory type has been asked; spare types drawn
    while len(turns) < n_turns:
        kind = slots.pop(0) if slots else next(spare, None)
        if kind is None:
            raise ValueError(f"cannot ask {n_turns} distinct leak-free questions about this scene")
        spares += not slots
        if kind in _INVENTORY and naming and spares < 20 * len(kinds):  # unless nothing else is left to ask
            continue
        naming = naming or kind not in _INVENTORY
        free = [q for q in by_kind[kind] if q.turn not in turns and not known.leak(q.turn.question)]
        q = _pick_balanced(rng, free)
        if q is not None:
            turns.append(q.turn)
            known.learn(q.turn)
    return tuple(turns)


def text_corpus(seed: int = 0, n: int = 2000, language: int = 1) -> list[str]:
    """Texts covering every word ShapesWorld writes (instructions, labels, descriptions, questions and
    answers), to train the tokenizer. The fixed coverage texts come first, then random scenes'
    descriptions and QA turns up to ``n`` texts in all (language 2: each turn picked by ``_pick_balanced``)."""
    check_language(language)
    texts = [CLASSIFY, COUNT, VQA, T2I, I2T, GROUND, IMAGE_TARGET, CROP_TARGET, DESCRIBE,
             " ".join(COUNT_LABELS), ", ".join(OBJECT_LABELS), " ".join(SIZES), ", ".join(POSITIONS),
             " ".join(PLURALS.values()), " ".join(NUMBER_WORDS), "yes no"]
    rng = np.random.default_rng([seed, zlib.crc32(b"text_corpus")])
    while len(texts) < n:
        scene = sample_scene(rng, style=pick(rng, STYLES), allow_heldout=True)
        texts.append(describe(scene))
        by_kind: dict[str, list[Question]] = {}
        for q in scene_questions(scene):
            by_kind.setdefault(q.kind, []).append(q)
        for kind in sorted(by_kind):
            q = pick(rng, by_kind[kind]) if language == 1 else _pick_balanced(rng, by_kind[kind], strict=False)
            if q is not None:
                texts.append(f"{q.turn.question} {q.turn.answer}")
    return texts[:n]
