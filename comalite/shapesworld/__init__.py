"""ShapesWorld: a deterministic procedural image world laid out like MMEB.

A scene holds 1-4 objects (shape, color, size) in distinct cells of a 3x3 grid over a plain, gradient or
noisy background. Its exact content is known, so descriptions, questions and answers are exact, and the
world can hold things out for out-of-distribution (OOD) evaluation:

- held-out attribute combinations (``HELDOUT_COMBOS``, e.g. a purple triangle): never in a stage-1 or
  training image; the ``*-Heldout`` eval sets are built around them (compositional generalisation);
- a held-out style (``outline``: shapes drawn as outlines, training images are ``flat``-filled).

``build_shapesworld`` writes the stage-1 dialogues, MMEB-train-schema subsets and MMEB-eval-schema
datasets (four meta-tasks, IND and OOD), read back by ``comalite.data.io`` exactly like the real files.
Counting, spatial relations and attribute binding (hard negatives that swap two objects' colors) keep one
global image feature from solving it.

The modules, each importing only those above it:

- ``scene``: the vocabulary (shapes, colors, sizes, grid positions, styles, backgrounds, held-out
  combinations), ``Obj``, ``Background`` and ``Scene``, sampling and the held-out and hard-negative edits;
- ``render``: drawing a scene or one object's crop (``render``, ``object_geometry``);
- ``language``: descriptions, referring expressions, every question with its exact answer
  (``question_template``), the MMEB-style instructions;
- ``asking``: which questions a dialogue asks (``qa_dialogue``) and the tokenizer's ``text_corpus``, in two
  question languages (``data.language``: 1 as the shipped tiny VLM was built, 2 balanced answers and leak-free
  dialogues, checked by ``dialogue_leaks``);
- ``build``: the dataset registry (``SHAPESWORLD_DATASETS``, ``TRAIN_SUBSETS``), the image writer, one
  example builder per task, and ``build_shapesworld``;
- ``source``: ``ShapesWorldSource``, ShapesWorld as ``data.source: shapesworld`` (``comalite.data.sources``).
"""
from .build import SHAPESWORLD_DATASETS, TRAIN_SUBSETS, build_shapesworld
from .asking import dialogue_leaks, qa_dialogue, text_corpus
from .language import DESCRIBE, LANGUAGES, describe, question_template
from .render import object_geometry, render
from .scene import (COLORS, HELDOUT_COMBOS, POSITIONS, SHAPES, SIZES, STYLES, Background, Obj, Scene,
                    sample_scene)
from .source import ShapesWorldSource

__all__ = [
    "COLORS", "DESCRIBE", "HELDOUT_COMBOS", "LANGUAGES", "POSITIONS", "SHAPES", "SHAPESWORLD_DATASETS", "SIZES",
    "STYLES", "TRAIN_SUBSETS", "Background", "Obj", "Scene", "ShapesWorldSource", "build_shapesworld", "describe",
    "dialogue_leaks", "object_geometry", "qa_dialogue", "question_template", "render", "sample_scene", "text_corpus",
]
