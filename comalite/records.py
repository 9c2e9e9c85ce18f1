"""The plain data records every stage passes around.

They mirror the MMEB files one to one, so ShapesWorld and the real benchmark flow through the same code:

- ``EmbedInput``: one thing to embed (instruction/text and/or an image), a query or a candidate.
- ``TrainPair``: one MMEB-train row (``qry``/``pos_*``/``neg_*``).
- ``EvalQuery`` and ``EvalDataset``: MMEB-eval rows (candidate 0 is the ground truth).
- ``Dialogue``: one stage-1 sample, an image (or a text) and the QA turns about it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

IMAGE_PLACEHOLDER = "<|image_1|>"
"""Where MMEB puts the image inside a query text. It becomes the vision span when tokenised."""


@dataclass(frozen=True)
class EmbedInput:
    """One input to embed: ``text`` (may hold ``<|image_1|>``) and an optional image file path.

    ``origin`` says where a reader found it ("file, row i, field 'f'"), for error messages only: it takes
    no part in equality, hashing or ``key()``. ``image`` may also be an in-memory PIL image
    (``EmbeddingModel.encode`` takes them): it embeds, but has no file identity, so such an input cannot
    be hashed, keyed or cached (evaluation reads files)."""

    text: str = ""
    image: str | Image.Image | None = None
    origin: str = field(default="", compare=False, hash=False)

    def key(self) -> tuple[str, str]:
        """Identity used to encode each distinct input once (e.g. a class label shared by all queries)."""
        return (self.text, self.image or "")


@dataclass(frozen=True)
class TrainPair:
    """A stage-2 training pair from an MMEB-train-schema file; ``subset`` names the file it came from."""

    query: EmbedInput
    positive: EmbedInput
    negative: EmbedInput | None = None
    subset: str = ""


@dataclass(frozen=True)
class EvalQuery:
    """A query and its own candidate list; the ground truth is ``candidates[0]`` (MMEB convention).

    ``n_hard``: how many candidates right after the truth (``candidates[1 : 1 + n_hard]``) are near-copies of
    it: the same scene with one detail changed (a perturbed scene, its description, another object's crop of
    the same image). 0 when the file does not say (real MMEB data): the negatives are then just "others".
    With near-copies, the evaluation also scores 'finds the scene' and 'reads the detail' apart
    (``comalite.eval.metric.structure_credit``)."""

    query: EmbedInput
    candidates: tuple[EmbedInput, ...]
    n_hard: int = 0


@dataclass
class EvalDataset:
    """One MMEB-eval-schema dataset as read from ``source``."""

    name: str
    queries: list[EvalQuery]
    source: Path | None = None


@dataclass(frozen=True)
class Turn:
    """One question and its answer in a stage-1 dialogue. ``regions``: where in the image the answer is read, as
    boxes ``(x0, y0, x1, y1)`` in fractions of the image's width and height, in the order the question names them
    (grounding, as real VLM data marks it with boxes). ShapesWorld knows them; files do not carry them (empty), and only the tiny VLM's stage 0 uses
    them (``comalite.tiny.pointing``). Not part of equality."""

    question: str
    answer: str
    regions: tuple[tuple[float, float, float, float], ...] = field(default=(), compare=False, hash=False)


@dataclass(frozen=True)
class Dialogue:
    """A stage-1 (and stage-0) sample: an image path and/or a text to compress, then QA turns about it.
    ``origin`` ("file, line n") is where a reader found it, for error messages only, like ``meta`` not
    compared."""

    turns: tuple[Turn, ...]
    image: str | None = None
    text: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    origin: str = field(default="", compare=False, hash=False)


META_TASKS = ("classification", "vqa", "retrieval", "grounding")


@dataclass(frozen=True)
class DatasetInfo:
    """What the evaluator needs to know of one evaluation dataset (MMEB's or ShapesWorld's).

    ``meta_task`` is one of ``META_TASKS``; ``split`` is ``"IND"`` (has training data) or ``"OOD"``;
    ``query``/``target`` say what the inputs hold (``"image"``, ``"text"`` or ``"image+text"``).
    """

    name: str
    meta_task: str
    split: str
    instruction: str
    query: str
    target: str
    source: str = "mmeb"
