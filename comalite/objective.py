"""The next-token objective of stages 0 and 1, and what it lets us measure: answers through the mask.

``lm_loss`` computes the LM head only at supervised positions: on the real model the vocabulary has
151,936 entries, and full-sequence logits would be the largest activation of the whole step.

``lm_step`` is one optimizer step's forward and backward of stages 0 and 1; ``train_lm`` runs it in the loop.

``answer_accuracy`` scores teacher-forced exact match (``answers_right``: answer by answer): an answer counts
as right when the argmax at each of its tokens (its closing ``<|im_end|>`` included) is the true token. That is
exactly "greedy decoding would produce this answer", without running a decoding loop.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .batching import batch_indices
from .config import Stage1Config, TrainConfig
from .distributed import local_share, seed_chunk
from .mask import attention_allowed
from .prefetch import ImagePrefetcher, images_of
from .records import Dialogue
from .sequence import ANSWER, Example, collate, dialogue_examples, supervised_positions
from .trainer import Trainer, seed_everything


def _forward(backbone: Backbone, batch: dict, compression_mask: bool, separate_turns: bool = False) -> torch.Tensor:
    allowed = attention_allowed(batch["roles"], batch["attention_mask"], compression_mask=compression_mask,
                                separate_turns=separate_turns)
    return backbone.hidden_states(batch, allowed)


def lm_loss(backbone: Backbone, batch: dict, *, compression_mask: bool = True,
            supervise: str = "answers", separate_turns: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised tokens of a collated batch (``separate_turns``:
    each question/answer turn sees the image part and itself only, ``comalite.mask``)."""
    hidden = _forward(backbone, batch, compression_mask, separate_turns)
    targets = supervised_positions(batch["roles"], supervise)[:, 1:].to(hidden.device)
    if not targets.any():
        raise ValueError("no supervised token in this batch: check the dialogues have answers")
    logits = backbone.lm_head(hidden[:, :-1][targets]).float()
    return F.cross_entropy(logits, batch["input_ids"][:, 1:].to(hidden.device)[targets])


@torch.no_grad()
def _scored_answers(backbone: Backbone, examples: list[Example], compression_mask: bool,
                    batch_size: int, separate_turns: bool = False) -> Iterator[tuple[list[bool], float]]:
    """Per example, in order: whether each of its answers is reproduced exactly (teacher forced), and the summed
    cross-entropy of its answer tokens."""
    was_training = backbone.training
    backbone.eval()
    pad_id = backbone.processor.tokenizer.pad_token_id
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        hidden = _forward(backbone, batch, compression_mask, separate_turns)
        is_answer = (batch["roles"] == ANSWER)[:, 1:].to(hidden.device)
        truth = batch["input_ids"][:, 1:].to(hidden.device)
        logits = backbone.lm_head(hidden[:, :-1][is_answer]).float()  # the batch's answer tokens, row by row
        per_row = is_answer.sum(dim=1).tolist()
        right = (logits.argmax(-1) == truth[is_answer]).split(per_row)
        losses = F.cross_entropy(logits, truth[is_answer], reduction="none").split(per_row)
        for b, (ok, loss) in enumerate(zip(right, losses)):
            # One answer = one contiguous run of answer tokens; right if every token in it is right.
            runs = torch.diff(is_answer[b].int(), prepend=torch.zeros(1, dtype=torch.int, device=truth.device))
            run_id = torch.cumsum(runs == 1, 0)[is_answer[b]]
            yield [bool(ok[run_id == r].all()) for r in run_id.unique()], float(loss.sum())
    backbone.train(was_training)


def answers_right(backbone: Backbone, examples: list[Example], *, compression_mask: bool = True,
                  batch_size: int = 32, separate_turns: bool = False) -> list[list[bool]]:
    """Per example, whether each of its answers (in order: one per question/answer turn) is reproduced exactly
    under teacher forcing (= greedy decoding): what ``answer_accuracy`` counts, answer by answer.
    ``separate_turns``: each turn sees the image part and itself only (``comalite.mask``)."""
    return [right for right, _ in _scored_answers(backbone, examples, compression_mask, batch_size, separate_turns)]


def answer_accuracy(backbone: Backbone, examples: list[Example], *, compression_mask: bool = True,
                    batch_size: int = 32) -> dict:
    """Fraction of answers reproduced exactly under teacher forcing (= greedy decoding), and the loss."""
    scored = list(_scored_answers(backbone, examples, compression_mask, batch_size))
    right = sum(sum(r) for r, _ in scored)
    total = sum(len(r) for r, _ in scored)
    n_tokens = sum(ex.roles.count(ANSWER) for ex in examples)
    return {"accuracy": right / max(1, total), "answers": total,
            "loss": sum(loss for _, loss in scored) / max(1, n_tokens)}


def without_last_answer(example: Example) -> tuple[Example, list[int]]:
    """``(example cut before its last answer, that answer's token ids)``: a prompt for ``generate_answer``."""
    end = len(example.roles)
    while end and example.roles[end - 1] == ANSWER:
        end -= 1
    prompt = dataclasses.replace(example, input_ids=example.input_ids[:end], roles=example.roles[:end])
    return prompt, example.input_ids[end:]


@torch.no_grad()
def generate_answer(backbone: Backbone, example: Example, *, compression_mask: bool = True,
                    max_new_tokens: int = 12) -> str:
    """Greedy answer to the example's last question, generated under the same mask as training.

    ``example`` must end with a question (drop the last answer before calling). No KV cache: the mask
    changes the attention pattern, and answers are a few tokens long.
    """
    backbone.eval()
    processor = backbone.processor
    ids, roles = list(example.input_ids), list(example.roles)
    new: list[int] = []
    for _ in range(max_new_tokens):
        ex = dataclasses.replace(example, input_ids=ids + new, roles=roles + [ANSWER] * len(new))
        batch = collate([ex], processor.tokenizer.pad_token_id)
        hidden = _forward(backbone, batch, compression_mask)
        token = int(backbone.lm_head(hidden[0, -1]).argmax())
        if token == processor.im_end_id:
            break
        new.append(token)
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


@dataclass(frozen=True)
class LMObjective:
    """What a next-token stage learns from: how a dialogue becomes a sequence (``layout``: the prompts and
    the maximum length of ``Stage1Config``), whether the compression tokens are in it and the compression
    mask is on, which tokens are supervised, whether the turns of a dialogue are hidden from each other
    (``separate_turns``: independent questions about one image packed into one sequence), and ``auxiliary``
    losses added to the next-token loss after each forward pass, each called as ``aux(dialogues, examples)``
    (the tiny VLM's ``tiny.pointing.PointingLoss``). Stage 1 is ``for_stage1``; the tiny VLM's stage 0 is
    next-token training with no compression tokens."""

    layout: Stage1Config
    compression_mask: bool = True
    with_compression: bool = True
    supervise: str = "answers"
    separate_turns: bool = False
    auxiliary: tuple[Callable[[list[Dialogue], list[Example]], torch.Tensor], ...] = ()

    @classmethod
    def for_stage1(cls, s1: Stage1Config) -> "LMObjective":
        return cls(layout=s1, compression_mask=s1.mask, with_compression=True, supervise=s1.supervise)


def lm_step(backbone: Backbone, dialogues: list[Dialogue], train: TrainConfig,
            objective: LMObjective, workers: int = 0) -> Callable[[int], float]:
    """``step_fn(step) -> loss``: the forward and backward passes of one optimizer step of next-token training.

    Each step takes ``train.batch_size`` dialogues (``batching.batch_indices``), in ``train.grad_accum``
    micro-batches whose losses are averaged; under ``torch.distributed`` each process takes its share of the
    micro-batches (``grad_accum`` must be a multiple of the processes). Dropout is seeded per micro-batch, so
    any number of processes computes the same update. ``workers`` threads prepare the images of the next
    micro-batches and steps ahead (``comalite.prefetch``; 0: each micro-batch reads its own in turn).
    """
    pad_id = backbone.processor.tokenizer.pad_token_id
    micro = max(1, train.grad_accum)
    if train.batch_size % micro:
        raise ValueError(f"batch_size {train.batch_size} is not divisible by grad_accum {micro}")
    mine = local_share(list(range(micro)), "grad_accum (micro-batches per step)")
    images = ImagePrefetcher(backbone.processor, workers)

    def micro_batches(step: int) -> list[list[Dialogue]]:
        """This process's micro-batches of step ``step``."""
        indices = np.array_split(np.array(batch_indices(step, train.batch_size, len(dialogues), train.seed)), micro)
        return [[dialogues[i] for i in indices[k]] for k in mine]

    def plan_from(step: int) -> Iterator[tuple[str, str]]:
        for later in itertools.count(step):
            for batch in micro_batches(later):
                yield from images_of(batch)

    def step_fn(step: int) -> float:
        backbone.train()
        images.at_step(step, plan_from)
        total = 0.0
        for k, batch in zip(mine, micro_batches(step)):
            seed_chunk(train.seed, step, k)
            examples = dialogue_examples(backbone.processor, batch, objective.layout,
                                         with_compression=objective.with_compression, images=images)
            loss = lm_loss(backbone, collate(examples, pad_id), compression_mask=objective.compression_mask,
                           supervise=objective.supervise, separate_turns=objective.separate_turns)
            loss = (loss + sum(aux(batch, examples) for aux in objective.auxiliary)) / len(mine)
            loss.backward()
            total += loss.item()
        return total

    return step_fn


def train_lm(backbone: Backbone, dialogues: list[Dialogue], train: TrainConfig, out_dir: Path,
             objective: LMObjective, *, desc: str = "stage 1", fingerprint: str = "",
             stop_at: int | None = None, workers: int = 0) -> list[dict]:
    """Next-token training on dialogues (stage 0 and stage 1 both call this): ``lm_step`` in the shared
    ``Trainer``; returns the loss history. ``fingerprint`` identifies the run in its checkpoints; ``workers``
    threads prepare images ahead."""
    seed_everything(train.seed)
    step_fn = lm_step(backbone, dialogues, train, objective, workers)
    trainer = Trainer(backbone.trainable_parameters(), train, out_dir, step_fn, desc=desc, fingerprint=fingerprint)
    return trainer.run(stop_at=stop_at)
