"""Stage 1, compression pre-training: QLoRA next-token training through the compression mask.

``run_stage1(cfg)`` loads the backbone (4-bit base, fresh LoRA ``stage1``, trainable compression rows),
trains on QA dialogues with ``comalite.mask`` switched on, measures answer accuracy *through the
compression tokens* on held-out dialogues before and after, and writes a result folder for stage 2.
The ablations are config switches: ``stage1.mask``, ``model.n_compress``, ``stage1.supervise``,
``stage1.multi_turn``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np

from .backbone import Backbone, load_backbone
from .config import Config, Stage1Config, TrainConfig
from .objective import answer_accuracy, lm_loss
from .records import Dialogue
from .sequence import Example, collate, dialogue_example
from .trainer import Trainer, seed_everything

log = logging.getLogger(__name__)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The items of optimizer step ``step``: consecutive slices of a fresh seeded permutation per epoch.
    Depends only on its arguments, which is what makes resumed runs exact."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        out.append(int(_epoch_order(seed, epoch, n)[offset]))
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def dialogue_examples(processor, dialogues: list[Dialogue], s1: Stage1Config, *,
                      with_compression: bool = True) -> list[Example]:
    return [dialogue_example(processor, d, prompt=s1.prompt, text_prompt=s1.text_prompt,
                             multi_turn=s1.multi_turn, with_compression=with_compression) for d in dialogues]


def train_lm(backbone: Backbone, dialogues: list[Dialogue], train: TrainConfig, out_dir: Path, *,
             compression_mask: bool, supervise: str, with_compression: bool, stage1_cfg: Stage1Config,
             desc: str = "stage 1", stop_at: int | None = None) -> list[dict]:
    """Next-token training on dialogues (stage 0 and stage 1 both call this); returns the loss history."""
    seed_everything(train.seed)
    pad_id = backbone.processor.tokenizer.pad_token_id
    micro = max(1, train.grad_accum)
    if train.batch_size % micro:
        raise ValueError(f"batch_size {train.batch_size} is not divisible by grad_accum {micro}")

    def step_fn(step: int) -> float:
        backbone.train()
        idx = batch_indices(step, train.batch_size, len(dialogues), train.seed)
        total = 0.0
        for chunk in np.array_split(np.array(idx), micro):
            examples = dialogue_examples(backbone.processor, [dialogues[i] for i in chunk], stage1_cfg,
                                         with_compression=with_compression)
            loss = lm_loss(backbone, collate(examples, pad_id), compression_mask=compression_mask,
                           supervise=supervise) / micro
            loss.backward()
            total += loss.item()
        return total

    trainer = Trainer(backbone.trainable_parameters(), train, out_dir, step_fn, desc=desc)
    return trainer.run(stop_at=stop_at)


def load_stage1_backbone(cfg: Config) -> Backbone:
    """The backbone stage 1 trains: a fresh LoRA named ``stage1`` and fresh compression rows."""
    return load_backbone(cfg.model, train_adapter="stage1", seed=cfg.stage1.train.seed)


def run_stage1(cfg: Config, *, stop_at: int | None = None) -> Path:
    """Train stage 1 and write ``<run_dir>/stage1`` (a result folder); resumes if a checkpoint exists."""
    from .datasets import stage1_dialogues
    from .result import write_result

    s1 = cfg.stage1
    out = cfg.run_dir() / "stage1"
    dialogues = stage1_dialogues(cfg)
    if len(dialogues) <= s1.heldout:
        raise ValueError(f"stage 1 needs more than stage1.heldout={s1.heldout} dialogues, got {len(dialogues)}")
    train, heldout = dialogues[:-s1.heldout], dialogues[-s1.heldout:]
    backbone = load_stage1_backbone(cfg)
    heldout_examples = dialogue_examples(backbone.processor, heldout, s1)
    before = answer_accuracy(backbone, heldout_examples, compression_mask=s1.mask)
    history = train_lm(backbone, train, s1.train, out, compression_mask=s1.mask, supervise=s1.supervise,
                       with_compression=True, stage1_cfg=s1, stop_at=stop_at)
    if stop_at is not None and stop_at < s1.train.steps:
        return out
    after = answer_accuracy(backbone, heldout_examples, compression_mask=s1.mask)
    metrics = {"answer_accuracy_before": before["accuracy"], "answer_accuracy_after": after["accuracy"],
               "answer_loss_before": before["loss"], "answer_loss_after": after["loss"],
               "heldout_answers": after["answers"], "first_loss": history[0]["loss"],
               "last_loss": history[-1]["loss"], "steps": len(history), "summary": backbone.summary()}
    log.info("stage 1 done: %s", metrics)
    return write_result(out, backbone, stage="stage1", settings=dataclasses.asdict(s1), metrics=metrics)
