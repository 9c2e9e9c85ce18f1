"""The world's vocabulary and its scenes: what a scene holds, how one is sampled, held-out combinations."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

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


def position_name(row: int, col: int) -> str:
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


POSITIONS = tuple(position_name(r, c) for r in range(3) for c in range(3))


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
        return position_name(self.row, self.col)

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


def pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample_object(rng, row: int, col: int, allow_heldout: bool) -> Obj:
    while True:
        shape, color = pick(rng, SHAPES), pick(rng, tuple(COLORS))
        if allow_heldout or (color, shape) not in HELDOUT_COMBOS:
            break
    dx, dy = (round(float(v), 3) for v in rng.uniform(-1, 1, size=2))
    return Obj(shape, color, pick(rng, SIZES), row, col, dx, dy)


def _sample_background(rng) -> Background:
    kind = pick(rng, BACKGROUND_KINDS)
    names = tuple(BACKGROUND_COLORS)
    if kind == "gradient":
        first, second = rng.choice(len(names), size=2, replace=False)
        return Background(kind, (names[first], names[second]), vertical=bool(rng.integers(2)))
    return Background(kind, (pick(rng, names),), seed=int(rng.integers(2**31)) if kind == "noise" else 0)


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


def with_heldout(scene: Scene, rng) -> tuple[Scene, int]:
    """The scene with one random object recolored/reshaped into a held-out combination, and its index."""
    k = int(rng.integers(len(scene.objects)))
    color, shape = pick(rng, HELDOUT_COMBOS)
    objects = list(scene.objects)
    objects[k] = replace(objects[k], color=color, shape=shape)
    return replace(scene, objects=tuple(objects)), k


def _is_heldout(obj: Obj) -> bool:
    return (obj.color, obj.shape) in HELDOUT_COMBOS


def perturb(scene: Scene, rng, allow_heldout: bool) -> Scene:
    """A hard negative: the same scene with one change (a color, a shape, a size, a move, or two objects
    swapping colors, which only attribute binding can tell apart); its description always differs."""
    objs = list(scene.objects)
    while True:
        k = int(rng.integers(len(objs)))
        change = pick(rng, ("color", "shape", "size", "move", "swap"))
        new = list(objs)
        if change == "color":
            new[k] = replace(objs[k], color=pick(rng, [c for c in COLORS if c != objs[k].color]))
        elif change == "shape":
            new[k] = replace(objs[k], shape=pick(rng, [s for s in SHAPES if s != objs[k].shape]))
        elif change == "size":
            new[k] = replace(objs[k], size="large" if objs[k].size == "small" else "small")
        elif change == "move":
            free = [c for c in range(9) if all((o.row, o.col) != divmod(c, 3) for o in objs)]
            row, col = divmod(pick(rng, free), 3)
            new[k] = replace(objs[k], row=row, col=col)
        else:
            others = [j for j, o in enumerate(objs) if o.color != objs[k].color]
            if not others:
                continue
            j = pick(rng, others)
            new[k], new[j] = replace(objs[k], color=objs[j].color), replace(objs[j], color=objs[k].color)
        if allow_heldout or not any(_is_heldout(o) for o in new):
            new.sort(key=lambda o: (o.row, o.col))
            return replace(scene, objects=tuple(new))
