"""Grounding for the tiny VLM's stage 0: attention heads learn to point at the image tokens a question is about.

    <|vision_start|> t00 t01 t02 t10 ... t22 <|vision_end|> What color is the object at the top left? ...assistant\\n red
                     ^^^                                                                                 |
                     +-- layer ``layer``, the question's head, at the position that predicts the answer's first token

    loss = weight * -log(attention mass on the image tokens inside the turn's regions)

Why: a language model trained from scratch on answers alone does not learn to look things up. To answer "what colour
is the object at the top left?" it must attend from the answer to the token at the top left; but the attention has
no gradient towards that token until the answer reads what it attends to, and the answer has nothing to read until
the attention is right (``benchmarks/README.md``, "Why the ceiling": every other lever stayed at a bag of objects).
A real VLM learned grounding from pre-training at scale, much of it on data that marks regions with boxes; the tiny
one gets the same signal as this loss on a few heads, and only in stage 0. Stages 1 and 2 never use it.

The regions are ``Turn.regions`` (ShapesWorld sets them); an image token is inside a region when its centre is. A
turn without regions, or a sequence without an image, adds nothing. The heads' weights come from a forward hook on
the layer's attention, so the model must run eager attention (``ModelConfig.attn_implementation="eager"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..records import Dialogue, Turn
from ..sequence import ANSWER, Example
from ..shapesworld import question_template


@dataclass(frozen=True)
class Pointing:
    """Which heads of ``layer`` point, by how a question names what it asks about (``reference``): a place ("the
    object at the top left"), an object ("the red circle", relations) or a count of objects ("how many ...");
    -1: that kind does not point. ``second_head``: for a question naming two objects (a relation), the head that
    points at the second while ``object_head`` points at the first (-1: ``object_head`` points at both).
    ``weight``: the loss's weight against the next-token loss (0: off). One head for every kind conflicts: a place
    with no object in it and the objects of a count want opposite attention."""

    layer: int = 1
    place_head: int = 0
    object_head: int = 1
    count_head: int = 2
    second_head: int = -1
    weight: float = 1.0

    def head(self, question: str) -> int:
        """The head that points for ``question`` (-1: none)."""
        return {"place": self.place_head, "object": self.object_head, "count": self.count_head}[reference(question)]

    def pointers(self, turn: Turn) -> list[tuple[int, tuple]]:
        """``(head, regions it points at)`` for ``turn``: its head at all its regions, or, with ``second_head``
        and two objects named, one head per object."""
        head = self.head(turn.question)
        if head < 0 or not turn.regions:
            return []
        if self.second_head >= 0 and head == self.object_head and len(turn.regions) == 2:
            return [(head, turn.regions[:1]), (self.second_head, turn.regions[1:])]
        return [(head, turn.regions)]


def reference(question: str) -> str:
    """How a ShapesWorld question names what it asks about: "place", "object" or "count"."""
    template = question_template(question)
    return "count" if template.startswith("How many") else "place" if "{place}" in template else "object"


def tokens_in_regions(regions, grid_h: int, grid_w: int) -> list[int]:
    """Indices (row-major) of the ``grid_h`` x ``grid_w`` image tokens whose centres lie inside any of ``regions``
    (boxes in fractions of the image, ``Turn.regions``)."""
    return [i * grid_w + j for i in range(grid_h) for j in range(grid_w)
            if any(x0 <= (j + 0.5) / grid_w < x1 and y0 <= (i + 0.5) / grid_h < y1 for x0, y0, x1, y1 in regions)]


def answer_starts(roles: list[int]) -> list[int]:
    """Where each answer begins in a sequence's roles, in order: one per question/answer turn."""
    return [i for i, r in enumerate(roles) if r == ANSWER and (i == 0 or roles[i - 1] != ANSWER)]


def pointing_targets(example: Example, turns: tuple[Turn, ...], image_pad_id: int, merge: int,
                     pointers) -> list[tuple[int, int, list[int]]]:
    """``(head, position that predicts the answer, sequence positions of the image tokens to point at)`` per
    pointer of each turn of ``example`` (``pointers(turn)``: ``(head, regions)`` pairs, ``Pointing.pointers``).
    ``merge``: the ViT's patch-merge size (the LLM sees a grid of ``h / merge`` x ``w / merge`` tokens per
    image)."""
    if example.image_grid_thw is None:
        return []
    _, h, w = (int(v) for v in example.image_grid_thw)
    pads = [i for i, t in enumerate(example.input_ids) if t == image_pad_id]
    out = []
    for start, turn in zip(answer_starts(example.roles), turns):
        for head, regions in pointers(turn):
            inside = tokens_in_regions(regions, h // merge, w // merge)
            if inside:
                out.append((head, start - 1, [pads[k] for k in inside]))
    return out


class PointingLoss:
    """``Pointing``'s loss on one backbone: ``loss(dialogues, examples)`` after the forward pass of the collated
    ``examples`` (built from ``dialogues``, in order). Hooks the layer's attention from construction to ``close``."""

    def __init__(self, backbone, pointing: Pointing):
        self.pointing = pointing
        self.image_pad_id = backbone.processor.image_pad_id
        self.merge = backbone.visual.config.spatial_merge_size
        attention = backbone.hf.model.language_model.layers[pointing.layer].self_attn
        self._weights: torch.Tensor | None = None
        self._hook = attention.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._weights = output[1]

    def __call__(self, dialogues: list[Dialogue], examples: list[Example]) -> torch.Tensor:
        weights = self._weights
        if weights is None:
            raise RuntimeError("the pointing loss saw no attention weights: load the backbone with "
                               "attn_implementation='eager' (sdpa does not return them)")
        self._weights = None  # one forward pass, one loss
        masses = [weights[b, head, at, tokens].sum()
                  for b, (dialogue, example) in enumerate(zip(dialogues, examples))
                  for head, at, tokens in pointing_targets(example, dialogue.turns, self.image_pad_id, self.merge,
                                                           self.pointing.pointers)]
        if not masses:
            return weights.sum() * 0.0  # keeps the graph: every process of a step backpropagates the same parameters
        masses = torch.stack(masses)
        if not masses.detach().any():
            raise RuntimeError("the pointing loss's answers cannot see the image (no attention reaches it): point "
                               "in an objective without the compression mask (LMObjective(compression_mask=False))")
        return self.pointing.weight * -torch.log(masses + 1e-6).mean()

    def close(self) -> None:
        self._hook.remove()
