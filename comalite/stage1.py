"""Stage 1, compression pre-training: QLoRA next-token training through the compression mask.

``run_stage1(cfg)`` loads the backbone (4-bit base, fresh LoRA ``stage1``, trainable compression rows),
trains on QA dialogues with ``comalite.mask`` switched on, measures answer accuracy *through the
compression tokens* on held-out dialogues before and after, and writes a result folder for stage 2.
The ablations are config switches: ``stage1.mask``, ``model.n_compress``, ``stage1.supervise``,
``stage1.multi_turn``. The run folder records what made it (``comalite.runs``): rerunning with the same
settings and inputs resumes or reuses it, with others is refused unless ``overwrite``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .backbone import Backbone, load_backbone
from .config import Config
from .data.sources import stage1_dialogues
from .distributed import barrier, is_writer, world_size
from .errors import ConfigError
from .objective import LMObjective, answer_accuracy, train_lm
from .prefetch import resolve_workers
from .result import write_result
from .runs import open_run, stage_record
from .sequence import dialogue_examples

log = logging.getLogger(__name__)


def load_stage1_backbone(cfg: Config) -> Backbone:
    """The backbone stage 1 trains: a fresh LoRA named ``stage1`` and fresh compression rows."""
    return load_backbone(cfg.model, train_adapter="stage1", seed=cfg.stage1.train.seed)


def run_stage1(cfg: Config, *, overwrite: bool = False, stop_at: int | None = None) -> Path:
    """Train stage 1 into ``<run_dir>/stage1`` (a result folder) and return it.

    Resumes from a checkpoint of the same run; returns at once if that run already finished; refuses a
    folder made from other settings or inputs unless ``overwrite``. ``stop_at`` stops after that many
    steps, as an interruption would (for tests).
    """
    s1 = cfg.stage1
    out = cfg.run_dir() / "stage1"
    dialogues = stage1_dialogues(cfg)
    if len(dialogues) <= s1.heldout:
        raise ConfigError(f"stage 1 needs more than stage1.heldout={s1.heldout} dialogues; "
                          f"{len(dialogues)} were found. Lower stage1.heldout or add dialogues.")
    if s1.train.grad_accum % world_size():
        raise ConfigError(f"stage1.train.grad_accum={s1.train.grad_accum} must be a multiple of the {world_size()} "
                          "processes: each one takes whole micro-batches")
    record = stage_record(cfg, "stage1")
    with open_run(out, record, overwrite=overwrite) as todo:
        if not todo:
            return out
        train, heldout = dialogues[:-s1.heldout], dialogues[-s1.heldout:]
        backbone = load_stage1_backbone(cfg)
        heldout_examples = dialogue_examples(backbone.processor, heldout, s1)
        before = answer_accuracy(backbone, heldout_examples, compression_mask=s1.mask)
        history = train_lm(backbone, train, s1.train, out, LMObjective.for_stage1(s1),
                           fingerprint=record["fingerprint"], stop_at=stop_at,
                           workers=resolve_workers(cfg.data.workers, backbone.device))
        if stop_at is not None and stop_at < s1.train.steps:
            return out
        after = answer_accuracy(backbone, heldout_examples, compression_mask=s1.mask)
        metrics = {"answer_accuracy_before": before["accuracy"], "answer_accuracy_after": after["accuracy"],
                   "answer_loss_before": before["loss"], "answer_loss_after": after["loss"],
                   "heldout_answers": after["answers"], "first_loss": history[0]["loss"],
                   "last_loss": history[-1]["loss"], "steps": len(history),
                   "train_seconds": sum(h["seconds"] for h in history), "summary": backbone.summary()}
        log.info("stage 1 done: %s", metrics)
        if is_writer():
            write_result(out, backbone, stage="stage1", settings=dataclasses.asdict(s1), metrics=metrics, run=record)
        barrier()
        return out
