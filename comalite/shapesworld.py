"""ShapesWorld: a deterministic procedural image world laid out like MMEB.

A scene holds 1-4 objects (shape, color, size) in distinct cells of a 3x3 grid over a plain, gradient or
noisy background. Its exact content is known, so descriptions, questions and answers are exact, and the
world can hold things out for out-of-distribution (OOD) evaluation:

- held-out attribute combinations (``HELDOUT_COMBOS``, e.g. a purple triangle): never in a stage-1 or
  training image; the ``*-Heldout`` eval sets are built around them (compositional generalisation);
- a held-out style (``outline``: shapes drawn as outlines, training images are ``flat``-filled).

``build_shapesworld`` writes the stage-1 dialogues, MMEB-train-schema subsets and MMEB-eval-schema
datasets (four meta-tasks, IND and OOD), read back by ``comalite.mmeb_data`` exactly like the real files.
Counting, spatial relations and attribute binding (hard negatives that swap two objects' colors) keep one
global image feature from solving it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from comalite.mmeb_data import write_dialogues, write_eval_dataset, write_train_subset
from comalite.records import IMAGE_PLACEHOLDER, DatasetInfo, Dialogue, Turn

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds"}
COLORS = {"red": (214, 45, 40), "green": (60, 175, 75), "blue": (55, 105, 225), "yellow": (245, 210, 50),
          "purple": (155, 75, 195), "orange": (245, 140, 35), "white": (240, 240, 240)}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
MAX_OBJECTS = 4
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
STYLES = ("flat", "outline")  # "flat" is the training (IND) style; "outline" is held out for OOD eval
HELDOUT_COMBOS = (("purple", "triangle"), ("orange", "star"), ("green", "cross"), ("blue", "diamond"))
# Dark or muted, so every object color (white and yellow included) stands out.
BACKGROUND_COLORS = {"charcoal": (40, 42, 48), "slate": (70, 82, 100), "olive": (80, 80, 40),
                     "maroon": (82, 34, 42), "teal": (28, 78, 82), "gray": (112, 112, 116)}
BACKGROUND_KINDS = ("plain", "gradient", "noise")


def _position_name(row: int, col: int) -> str:
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


POSITIONS = tuple(_position_name(r, c) for r in range(3) for c in range(3))


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Obj:
    """One object: attributes, grid cell (row, col in 0..2) and an offset inside the cell (-1..1 of the room)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def position(self) -> str:
        """The cell's name, e.g. "top left" or "center"."""
        return _position_name(self.row, self.col)

    @property
    def where(self) -> str:
        """The cell as a phrase: "at the top left", "in the center"."""
        return "in the center" if self.position == "center" else f"at the {self.position}"

    @property
    def label(self) -> str:
        """Color and shape, e.g. "red circle" (the class label of a one-object scene)."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    """A plain color, a two-color gradient (``vertical`` or not) or a color with light pixel noise."""

    kind: str
    colors: tuple[str, ...]
    vertical: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """Objects in reading order (top to bottom, left to right), a background and a drawing style."""

    objects: tuple[Obj, ...]
    background: Background
    style: str = "flat"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample_object(rng, row: int, col: int, allow_heldout: bool) -> Obj:
    while True:
        shape, color = _pick(rng, SHAPES), _pick(rng, tuple(COLORS))
        if allow_heldout or (color, shape) not in HELDOUT_COMBOS:
            break
    dx, dy = (round(float(v), 3) for v in rng.uniform(-1, 1, size=2))
    return Obj(shape, color, _pick(rng, SIZES), row, col, dx, dy)


def _sample_background(rng) -> Background:
    kind = _pick(rng, BACKGROUND_KINDS)
    names = tuple(BACKGROUND_COLORS)
    if kind == "gradient":
        first, second = rng.choice(len(names), size=2, replace=False)
        return Background(kind, (names[first], names[second]), vertical=bool(rng.integers(2)))
    return Background(kind, (_pick(rng, names),), seed=int(rng.integers(2**31)) if kind == "noise" else 0)


def sample_scene(rng: np.random.Generator, *, n_objects: int | None = None, style: str = "flat",
                 allow_heldout: bool = False) -> Scene:
    """Draw a random scene with ``n_objects`` (default: 1 to 4, uniform) in distinct cells.

    Objects are never one of ``HELDOUT_COMBOS`` unless ``allow_heldout``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n}")
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    objects = tuple(_sample_object(rng, c // 3, c % 3, allow_heldout) for c in cells)
    return Scene(objects, _sample_background(rng), style)


def _with_heldout(scene: Scene, rng) -> tuple[Scene, int]:
    """The scene with one random object recolored/reshaped into a held-out combination, and its index."""
    k = int(rng.integers(len(scene.objects)))
    color, shape = _pick(rng, HELDOUT_COMBOS)
    objects = list(scene.objects)
    objects[k] = replace(objects[k], color=color, shape=shape)
    return replace(scene, objects=tuple(objects)), k


def _is_heldout(obj: Obj) -> bool:
    return (obj.color, obj.shape) in HELDOUT_COMBOS


# ----------------------------------------------------------------------------- rendering


def _background(bg: Background, size: int) -> Image.Image:
    if bg.kind == "plain":
        return Image.new("RGB", (size, size), BACKGROUND_COLORS[bg.colors[0]])
    first = np.array(BACKGROUND_COLORS[bg.colors[0]], dtype=np.float32)
    if bg.kind == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        t = t[:, None, None] if bg.vertical else t[None, :, None]
        second = np.array(BACKGROUND_COLORS[bg.colors[1]], dtype=np.float32)
        pixels = first + t * (second - first) + np.zeros((size, size, 1), np.float32)
    else:
        # Brightness grain of 2 px: per-pixel color noise costs 5x more to store and encode as PNG.
        grain = np.random.default_rng(bg.seed).integers(-14, 15, size=((size + 1) // 2, (size + 1) // 2, 1))
        pixels = first + grain.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def object_geometry(obj: Obj, size: int) -> tuple[float, float, float]:
    """Center and radius in pixels; the object always stays inside its cell (crops rely on it)."""
    cell = size / 3
    radius = cell * (0.22 if obj.size == "small" else 0.40)
    room = cell / 2 - radius - cell * 0.05
    cx = (obj.col + 0.5) * cell + obj.dx * room
    cy = (obj.row + 0.5) * cell + obj.dy * room
    return cx, cy, radius


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(radii, start_deg):
        angles = np.deg2rad(start_deg + np.arange(len(radii)) * 360 / len(radii))
        return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for rad, a in zip(radii, angles)]

    if shape == "square":
        return ring([r * 1.15] * 4, 45)  # corner radius r*1.15 gives a side of about 1.6r
    if shape == "triangle":
        return ring([r * 1.1] * 3, -90)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        return ring([r * 1.1, r * 0.45] * 5, -90)
    if shape == "cross":
        a, b = 0.33 * r, r
        offsets = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                   (-b, -a), (-a, -a)]
        return [(cx + x, cy + y) for x, y in offsets]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 112) -> Image.Image:
    """Draw the scene as a ``size`` x ``size`` RGB image (112 px = 16 tokens for the tiny Qwen2-VL)."""
    if size < 24:
        raise ValueError(f"size must be at least 24 pixels, got {size}")
    image = _background(scene.background, size)
    draw = ImageDraw.Draw(image)
    line = max(2, round(size / 40))
    for obj in scene.objects:
        cx, cy, r = object_geometry(obj, size)
        color = COLORS[obj.color]
        style = {"fill": color} if scene.style == "flat" else {"outline": color, "width": line}
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], **style)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), **style)
    return image


def _render_crop(scene: Scene, index: int, size: int) -> Image.Image:
    """The grid cell of one object, cut from the rendered scene and scaled back to ``size`` (grounding)."""
    obj = scene.objects[index]
    cell = size / 3
    box = tuple(round(v) for v in (obj.col * cell, obj.row * cell, (obj.col + 1) * cell, (obj.row + 1) * cell))
    return render(scene, size).crop(box).resize((size, size), Image.BICUBIC)


# ----------------------------------------------------------------------------- language


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe(scene: Scene) -> str:
    """A full description, e.g. "two objects: a large red circle at the top left and a small blue square
    at the bottom right." (the style and background are nuisance, so they are not mentioned)."""
    n = len(scene.objects)
    phrases = [f"a {o.size} {o.color} {o.shape} {o.where}" for o in scene.objects]
    return f"{NUMBER_WORDS[n]} object{'s' if n > 1 else ''}: {_join(phrases)}."


def _refer(scene: Scene, obj: Obj) -> str | None:
    """"the red circle", or "the small red circle" where that is needed to pick out ``obj`` alone; None
    for a twin (naming its cell would give away "where" and relation answers). Color and shape are always
    named, so a held-out combination has to be bound to be found."""
    same = [o for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)]
    if len(same) == 1:
        return f"the {obj.label}"
    if sum(o.size == obj.size for o in same) == 1:
        return f"the {obj.size} {obj.label}"
    return None


_RELATIONS = {"left of": lambda a, b: a.col < b.col, "right of": lambda a, b: a.col > b.col,
              "above": lambda a, b: a.row < b.row, "below": lambda a, b: a.row > b.row}

# The answer set of each answer kind: VQA candidates are drawn from the question's own kind.
ANSWERS = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "count": NUMBER_WORDS,
           "yesno": ("yes", "no"), "position": POSITIONS}


@dataclass(frozen=True)
class _Question:
    kind: str  # question type, for variety within a dialogue
    answers: str  # key of ANSWERS
    turn: Turn
    about: frozenset[int]  # indices of the objects the answer depends on


def _questions(scene: Scene) -> list[_Question]:
    """Every question ShapesWorld asks about the scene, with its exact answer."""
    objs = scene.objects
    yes = {True: "yes", False: "no"}
    out = []

    def add(kind, answers, question, answer, about=()):
        out.append(_Question(kind, answers, Turn(question, answer), frozenset(about)))

    for i, o in enumerate(objs):
        for attribute in ("color", "shape", "size"):
            add(f"{attribute} at", attribute, f"What {attribute} is the object {o.where}?", getattr(o, attribute), [i])
        if _refer(scene, o):
            add("where", "position", f"Where is {_refer(scene, o)}?", o.position, [i])
    occupied = {(o.row, o.col) for o in objs}
    for r in range(3):
        for c in range(3):
            where = "in the center" if (r, c) == (1, 1) else f"at the {_position_name(r, c)}"
            add("occupied", "yesno", f"Is there an object {where}?", yes[(r, c) in occupied])
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
            if i != j and _refer(scene, a) and _refer(scene, b):
                for name, holds in _RELATIONS.items():
                    add("relation", "yesno", f"Is {_refer(scene, a)} {name} {_refer(scene, b)}?",
                        yes[holds(a, b)], [i, j])
    present = {(o.color, o.shape) for o in objs}
    for color in COLORS:
        for shape in SHAPES:
            # Absent held-out combinations are never named, so training text never mentions them.
            if (color, shape) in present or (color, shape) not in HELDOUT_COMBOS:
                about = [i for i, o in enumerate(objs) if (o.color, o.shape) == (color, shape)]
                article = "an" if color[0] in "aeiou" else "a"
                add("exists", "yesno", f"Is there {article} {color} {shape}?", yes[bool(about)], about)
    return out


_TEMPLATE_RULES = (
    (re.compile(r"\b(" + "|".join(PLURALS.values()) + r")\b"), "{shapes}"),
    (re.compile(r"\b(?:(?:small|large) )?(?:" + "|".join(COLORS) + ") (?:" + "|".join(SHAPES) + r")\b"), "{object}"),
    (re.compile(r"\b(?:an?) \{object\}"), "a {object}"),
    (re.compile(r"\b(" + "|".join(COLORS) + r")\b"), "{color}"),
    (re.compile(r"\b(" + "|".join(SHAPES) + r")\b"), "{shape}"),
    (re.compile(r"in the center|at the (?:" + "|".join(p for p in POSITIONS if p != "center") + ")"), "{place}"),
    (re.compile(r"\b(?:" + "|".join(_RELATIONS) + r")\b"), "{relation}"),
)


def question_template(question: str) -> str:
    """A question's type: its colours, shapes, objects, places and relations replaced by placeholders,
    e.g. "What color is the object at the top left?" -> "What color is the object {place}?"."""
    for pattern, placeholder in _TEMPLATE_RULES:
        question = pattern.sub(placeholder, question)
    return question


def _pick_question(rng, questions: list[_Question]) -> _Question:
    """A question type first, then a question of it: otherwise the many yes/no variants would dominate."""
    kinds = sorted({q.kind for q in questions})
    kind = _pick(rng, kinds)
    return _pick(rng, [q for q in questions if q.kind == kind])


def qa_dialogue(scene: Scene, rng: np.random.Generator, n_turns: int) -> tuple[Turn, ...]:
    """``n_turns`` distinct questions with exact one- or two-word answers, of as many types as possible."""
    by_kind: dict[str, list[Turn]] = {}
    for q in _questions(scene):
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
                turns.append(_pick(rng, unused))
    return tuple(turns)


# ----------------------------------------------------------------------------- the datasets

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


def _info(name, meta_task, split, instruction, query, target) -> DatasetInfo:
    return DatasetInfo(name, meta_task, split, instruction, query, target, source="shapesworld")


SHAPESWORLD_DATASETS: tuple[DatasetInfo, ...] = (
    _info("SW-Count", "classification", "IND", COUNT, "image", "text"),
    _info("SW-Object", "classification", "IND", CLASSIFY, "image", "text"),
    _info("SW-Count-Outline", "classification", "OOD", COUNT, "image", "text"),
    _info("SW-Object-Heldout", "classification", "OOD", CLASSIFY, "image", "text"),
    _info("SW-VQA", "vqa", "IND", VQA, "image+text", "text"),
    _info("SW-VQA-Heldout", "vqa", "OOD", VQA, "image+text", "text"),
    _info("SW-T2I", "retrieval", "IND", T2I, "text", "image"),
    _info("SW-I2T", "retrieval", "IND", I2T, "image", "text"),
    _info("SW-T2I-Outline", "retrieval", "OOD", T2I, "text", "image"),
    _info("SW-Ground", "grounding", "IND", GROUND, "image+text", "image"),
    _info("SW-Ground-Heldout", "grounding", "OOD", GROUND, "image+text", "image"),
)
# name -> (task, style, built around a held-out combination). Training subsets: the IND datasets.
_VARIANTS = {
    "SW-Count": ("count", "flat", False), "SW-Object": ("object", "flat", False),
    "SW-Count-Outline": ("count", "outline", False), "SW-Object-Heldout": ("object", "flat", True),
    "SW-VQA": ("vqa", "flat", False), "SW-VQA-Heldout": ("vqa", "flat", True),
    "SW-T2I": ("t2i", "flat", False), "SW-I2T": ("i2t", "flat", False), "SW-T2I-Outline": ("t2i", "outline", False),
    "SW-Ground": ("ground", "flat", False), "SW-Ground-Heldout": ("ground", "flat", True),
}
TRAIN_SUBSETS = tuple(d.name for d in SHAPESWORLD_DATASETS if d.split == "IND")


@dataclass
class _Example:
    """One query, its positive and its negatives (hardest first) as (text, image path) pairs."""

    query: tuple[str, str]
    positive: tuple[str, str]
    negatives: list[tuple[str, str]]
    full_label_set: bool = False  # classification: every label is a candidate, as in MMEB


class _Writer:
    """Samples scenes that are new to the whole build, renders and saves them, and indexes every image."""

    def __init__(self, images_dir: Path, size: int):
        self.images_dir, self.size = images_dir, size
        self.seen: set[Scene] = set()
        self.index: list[dict] = []
        self._folders: set[Path] = set()

    def new_scene(self, rng, **kwargs) -> Scene:
        # Stage-1, train and eval images must be different scenes; a repeat is redrawn.
        while True:
            scene = sample_scene(rng, **kwargs)
            if scene not in self.seen:
                self.seen.add(scene)
                return scene

    def save(self, scene: Scene, rel: str, part: str, obj: int | None = None) -> str:
        """Write the scene (or the crop of its object ``obj``) to ``images/rel``; returns ``rel``."""
        path = self.images_dir / rel
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        image = render(scene, self.size) if obj is None else _render_crop(scene, obj, self.size)
        image.save(path, format="PNG", compress_level=1)  # fast; PNG stores no timestamp, so bytes repeat
        self.index.append({"image": rel, "part": part, "object": obj, "scene": _scene_dict(scene)})
        return rel


def _scene_dict(scene: Scene) -> dict:
    """The scene as plain JSON data (``dataclasses.asdict`` is ~10x slower on thousands of scenes)."""
    return {"objects": [vars(o).copy() for o in scene.objects], "style": scene.style,
            "background": {**vars(scene.background), "colors": list(scene.background.colors)}}


def _perturb(scene: Scene, rng, allow_heldout: bool) -> Scene:
    """A hard negative: the same scene with one change (a color, a shape, a size, a move, or two objects
    swapping colors, which only attribute binding can tell apart); its description always differs."""
    objs = list(scene.objects)
    while True:
        k = int(rng.integers(len(objs)))
        change = _pick(rng, ("color", "shape", "size", "move", "swap"))
        new = list(objs)
        if change == "color":
            new[k] = replace(objs[k], color=_pick(rng, [c for c in COLORS if c != objs[k].color]))
        elif change == "shape":
            new[k] = replace(objs[k], shape=_pick(rng, [s for s in SHAPES if s != objs[k].shape]))
        elif change == "size":
            new[k] = replace(objs[k], size="large" if objs[k].size == "small" else "small")
        elif change == "move":
            free = [c for c in range(9) if all((o.row, o.col) != divmod(c, 3) for o in objs)]
            row, col = divmod(_pick(rng, free), 3)
            new[k] = replace(objs[k], row=row, col=col)
        else:
            others = [j for j, o in enumerate(objs) if o.color != objs[k].color]
            if not others:
                continue
            j = _pick(rng, others)
            new[k], new[j] = replace(objs[k], color=objs[j].color), replace(objs[j], color=objs[k].color)
        if allow_heldout or not any(_is_heldout(o) for o in new):
            new.sort(key=lambda o: (o.row, o.col))
            return replace(scene, objects=tuple(new))


def _scene_for(w: _Writer, rng, style: str, heldout: bool, n_objects=None) -> tuple[Scene, int]:
    """A fresh scene and the index of its target object (a held-out combination when ``heldout``)."""
    while True:
        scene = w.new_scene(rng, n_objects=n_objects, style=style)
        if not heldout:
            return scene, int(rng.integers(len(scene.objects)))
        scene, k = _with_heldout(scene, rng)
        if scene not in w.seen:
            w.seen.add(scene)
            return scene, k


def _classify_examples(w: _Writer, rng, task, pool, part, n, style, heldout) -> list[_Example]:
    """Count the objects (labels "one".."four") or name a lone object ("red circle"); every label is a
    candidate, as in MMEB classification. Negatives are ordered hardest first (for the training row)."""
    examples = []
    for i in range(n):
        if task == "count":
            scene, _ = _scene_for(w, rng, style, heldout, n_objects=i % MAX_OBJECTS + 1)  # balanced classes
            count = len(scene.objects)
            label = NUMBER_WORDS[count]
            others = sorted((l for l in COUNT_LABELS if l != label),
                            key=lambda l: (abs(NUMBER_WORDS.index(l) - count), rng.random()))
            instruction = COUNT
        else:
            scene, _ = _scene_for(w, rng, style, heldout, n_objects=1)
            obj = scene.objects[0]
            label = obj.label
            # Training never names a held-out combination, not even as a negative.
            labels = [l for l in OBJECT_LABELS if l != label and
                      (part == "eval" or tuple(l.split()) not in HELDOUT_COMBOS)]
            others = sorted(labels, key=lambda l: (obj.color not in l.split() and obj.shape not in l.split(),
                                                   rng.random()))
            instruction = CLASSIFY
        image = w.save(scene, f"{pool}/{i:05d}.png", part)
        examples.append(_Example((instruction, image), (label, ""), [(l, "") for l in others], full_label_set=True))
    return examples


def _vqa_examples(w: _Writer, rng, pool, part, n, style, heldout) -> list[_Example]:
    """One question per image; the candidates are the other answers of the same kind (colors, counts...)."""
    examples = []
    for i in range(n):
        scene, k = _scene_for(w, rng, style, heldout)
        questions = _questions(scene)
        if heldout:  # only questions whose answer depends on the held-out object ("how many objects" does not)
            questions = [q for q in questions if k in q.about and q.kind != "count"]
        q = _pick_question(rng, questions)
        others = [a for a in ANSWERS[q.answers] if a != q.turn.answer]
        others = [others[int(j)] for j in rng.permutation(len(others))]
        image = w.save(scene, f"{pool}/{i:05d}.png", part)
        examples.append(_Example((VQA + q.turn.question, image), (q.turn.answer, ""), [(a, "") for a in others]))
    return examples


def _retrieval_examples(w: _Writer, rng, task, pool, part, n, style, heldout, n_candidates) -> list[_Example]:
    """Description -> image (``t2i``) or image -> description (``i2t``). Negatives: perturbed copies of the
    scene (one change each, hard), then other scenes of the pool (eval only)."""
    scenes = [_scene_for(w, rng, style, heldout)[0] for _ in range(n)]
    images = [w.save(s, f"{pool}/{i:05d}.png", part) for i, s in enumerate(scenes)]
    texts = [describe(s) for s in scenes]
    n_hard = 1 if part == "train" else (n_candidates - 1) // 2
    examples = []
    for i, scene in enumerate(scenes):
        hard: list[Scene] = []
        while len(hard) < n_hard:
            other = _perturb(scene, rng, allow_heldout=heldout)
            if other not in w.seen and describe(other) not in {describe(h) for h in hard}:
                w.seen.add(other)
                hard.append(other)
        easy = []
        if part == "eval":
            easy = [int(j) for j in rng.permutation(n) if texts[j] != texts[i]][: n_candidates - 1 - n_hard]
        if task == "t2i":
            negs = [(IMAGE_TARGET, w.save(h, f"{pool}/{i:05d}_neg{m}.png", part)) for m, h in enumerate(hard)]
            negs += [(IMAGE_TARGET, images[j]) for j in easy]
            examples.append(_Example((T2I + texts[i], ""), (IMAGE_TARGET, images[i]), negs))
        else:
            negs = [(describe(h), "") for h in hard] + [(texts[j], "") for j in easy]
            examples.append(_Example((I2T, images[i]), (texts[i], ""), negs))
    return examples


def _ground_examples(w: _Writer, rng, pool, part, n, style, heldout, n_candidates) -> list[_Example]:
    """Image + referring expression -> the crop of that object. Negatives: crops of the image's other
    objects, then (eval only) crops of other images' objects that do not look like the target."""
    picks = []
    while len(picks) < n:
        scene, k = _scene_for(w, rng, style, heldout, n_objects=int(rng.integers(2, MAX_OBJECTS + 1)))
        look = (scene.objects[k].color, scene.objects[k].shape, scene.objects[k].size)
        # A twin in the same image would give two indistinguishable crops (and no name): draw again.
        if sum((o.color, o.shape, o.size) == look for o in scene.objects) == 1:
            picks.append((scene, k))
    images = [w.save(s, f"{pool}/{i:05d}.png", part) for i, (s, _) in enumerate(picks)]
    crops: dict[tuple[int, int], str] = {}

    def crop(i: int, m: int) -> tuple[str, str]:
        if (i, m) not in crops:
            crops[i, m] = w.save(picks[i][0], f"{pool}/{i:05d}_obj{m}.png", part, obj=m)
        return CROP_TARGET, crops[i, m]

    examples = []
    for i, (scene, k) in enumerate(picks):
        target = scene.objects[k]
        same = [int(m) for m in rng.permutation(len(scene.objects)) if m != k]
        negs = [crop(i, m) for m in (same[:1] if part == "train" else same)]
        if part == "eval":
            for j in rng.permutation(n):
                if len(negs) >= n_candidates - 1:
                    break
                m = int(rng.integers(len(picks[j][0].objects)))
                o = picks[j][0].objects[m]
                if j != i and (o.color, o.shape, o.size) != (target.color, target.shape, target.size):
                    negs.append(crop(int(j), m))
        query = (f'{GROUND} "{_refer(scene, target)}"', images[i])
        examples.append(_Example(query, crop(i, k), negs))
    return examples


def _build_task(w: _Writer, rng, name: str, part: str, n: int, n_candidates: int) -> list[_Example]:
    """``n`` examples of the dataset/subset ``name``, images saved under ``<part>/<name>/``."""
    task, style, heldout = _VARIANTS[name]
    pool = f"{part}/{name}"
    if task in ("count", "object"):
        return _classify_examples(w, rng, task, pool, part, n, style, heldout)
    if task == "vqa":
        return _vqa_examples(w, rng, pool, part, n, style, heldout)
    if task in ("t2i", "i2t"):
        return _retrieval_examples(w, rng, task, pool, part, n, style, heldout, n_candidates)
    return _ground_examples(w, rng, pool, part, n, style, heldout, n_candidates)


def _train_row(e: _Example) -> dict:
    neg = e.negatives[0] if e.negatives else ("", "")
    return {"qry": e.query[0], "qry_image_path": e.query[1], "pos_text": e.positive[0],
            "pos_image_path": e.positive[1], "neg_text": neg[0], "neg_image_path": neg[1]}


def _eval_row(e: _Example, rng, n_candidates: int) -> dict:
    negs = e.negatives if e.full_label_set else e.negatives[: n_candidates - 1]
    candidates = [e.positive] + [negs[int(j)] for j in rng.permutation(len(negs))]
    return {"qry_text": e.query[0], "qry_img_path": e.query[1],
            "tgt_text": [t for t, _ in candidates], "tgt_img_path": [p for _, p in candidates]}


def _rng(seed: int, part: str) -> np.random.Generator:
    # One stream per part, so e.g. a bigger stage-1 set does not change the eval sets.
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def build_shapesworld(out_dir, *, seed: int = 0, n_stage1_images: int = 2000, n_train_per_subset: int = 1000,
                      n_eval_queries: int = 100, n_candidates: int = 10, image_size: int = 112,
                      n_turns: tuple[int, int] = (3, 5)) -> dict:
    """Write the ShapesWorld data under ``out_dir`` and return its manifest.

    Layout (every image path in the files is relative to ``out_dir/images``)::

        images/...png                    stage-1, train and eval images: all different scenes
        scenes.jsonl                     what each image shows (scene, and the object for a crop)
        stage1/dialogues.jsonl           one image and 3-5 QA turns per line (half open with a description)
        train/<Subset>/original.parquet  MMEB-train schema, the IND tasks, one hard negative per row
        eval/<Dataset>/test.parquet      MMEB-eval schema, candidate 0 is the truth
        manifest.json                    parameters, counts, file sizes, datasets

    Deterministic in ``seed``. The whole folder is built aside and renamed into place; if ``manifest.json``
    already holds the same parameters, nothing is rebuilt.
    """
    if image_size % 28 or image_size <= 0:
        raise ValueError(f"image_size must be a positive multiple of 28 (Qwen2-VL's merged patch), got {image_size}")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be at least 2, got {n_candidates}")
    if not 1 <= n_turns[0] <= n_turns[1]:
        raise ValueError(f"n_turns must be (low, high) with 1 <= low <= high, got {n_turns}")
    if min(n_stage1_images, n_train_per_subset) < 1 or n_eval_queries < n_candidates:
        raise ValueError("need at least one stage-1 image and training row, and n_eval_queries >= n_candidates "
                         "(retrieval candidates come from the other queries)")
    out_dir = Path(out_dir)
    params = {"seed": seed, "n_stage1_images": n_stage1_images, "n_train_per_subset": n_train_per_subset,
              "n_eval_queries": n_eval_queries, "n_candidates": n_candidates, "image_size": image_size,
              "n_turns": list(n_turns)}
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params:
            return manifest
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and holds no ShapesWorld manifest: not replacing it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _build(tmp, params)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build(root: Path, params: dict) -> dict:
    images_dir = root / "images"
    w = _Writer(images_dir, params["image_size"])
    counts = _write_data(w, root, params)
    with open(root / "scenes.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in w.index)

    files = sorted(p for p in root.rglob("*") if p.is_file() and images_dir not in p.parents)
    counts["images"] = {part: sum(e["part"] == part for e in w.index) for part in ("stage1", "train", "eval")}
    manifest = {
        "format": 1,
        "params": params,
        "heldout_combos": [list(c) for c in HELDOUT_COMBOS],
        "heldout_style": "outline",
        "images": "images",
        "stage1": "stage1/dialogues.jsonl",
        "train": {name: f"train/{name}/original.parquet" for name in TRAIN_SUBSETS},
        "eval": {d.name: f"eval/{d.name}/test.parquet" for d in SHAPESWORLD_DATASETS},
        "datasets": [asdict(d) for d in SHAPESWORLD_DATASETS],
        "counts": counts,
        "bytes": {**{p.relative_to(root).as_posix(): p.stat().st_size for p in files},
                  "images": sum(p.stat().st_size for p in images_dir.rglob("*.png"))},
    }
    # Written last: its presence marks a complete build.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_data(w: _Writer, root: Path, params: dict) -> dict:
    """Sample every scene and write the stage-1, train and eval files; returns the row counts."""
    seed, n_cand = params["seed"], params["n_candidates"]
    images_dir = w.images_dir

    rng = _rng(seed, "stage1")
    dialogues = []
    low, high = params["n_turns"]
    for i in range(params["n_stage1_images"]):
        scene = w.new_scene(rng)
        image = images_dir / w.save(scene, f"stage1/{i:05d}.png", "stage1")
        n = int(rng.integers(low, high + 1))
        lead = (Turn(DESCRIBE, describe(scene)),) if rng.random() < 0.5 else ()
        turns = lead + qa_dialogue(scene, rng, n - len(lead))
        dialogues.append(Dialogue(turns=turns, image=str(image)))
    write_dialogues(dialogues, root / "stage1" / "dialogues.jsonl", images_dir)

    train_rows, eval_queries = {}, {}
    for name in TRAIN_SUBSETS:
        rng = _rng(seed, f"train/{name}")
        examples = _build_task(w, rng, name, "train", params["n_train_per_subset"], n_cand)
        write_train_subset([_train_row(e) for e in examples], root / "train" / name / "original.parquet")
        train_rows[name] = len(examples)
    for info in SHAPESWORLD_DATASETS:
        rng = _rng(seed, f"eval/{info.name}")
        examples = _build_task(w, rng, info.name, "eval", params["n_eval_queries"], n_cand)
        write_eval_dataset([_eval_row(e, rng, n_cand) for e in examples], root / "eval" / info.name / "test.parquet")
        eval_queries[info.name] = len(examples)

    return {"stage1_dialogues": len(dialogues), "train_rows": train_rows, "eval_queries": eval_queries}


def text_corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Texts covering every word ShapesWorld writes (instructions, labels, descriptions, questions and
    answers), to train the tiny model's tokenizer. The fixed coverage texts come first, then random
    scenes' descriptions and QA turns up to ``n`` texts in all."""
    texts = [CLASSIFY, COUNT, VQA, T2I, I2T, GROUND, IMAGE_TARGET, CROP_TARGET, DESCRIBE,
             " ".join(COUNT_LABELS), ", ".join(OBJECT_LABELS), " ".join(SIZES), ", ".join(POSITIONS),
             " ".join(PLURALS.values()), " ".join(NUMBER_WORDS), "yes no"]
    rng = np.random.default_rng([seed, zlib.crc32(b"text_corpus")])
    while len(texts) < n:
        scene = sample_scene(rng, style=_pick(rng, STYLES), allow_heldout=True)
        texts.append(describe(scene))
        by_kind: dict[str, list[Turn]] = {}
        for q in _questions(scene):
            by_kind.setdefault(q.kind, []).append(q.turn)
        for kind in sorted(by_kind):
            turn = _pick(rng, by_kind[kind])
            texts.append(f"{turn.question} {turn.answer}")
    return texts[:n]
