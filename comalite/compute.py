"""Training compute, counted rather than timed: tokens through the language model per optimizer step.

Two arms of an experiment get equal compute when they push the same number of tokens through the model.
The clock cannot size that on a shared machine: it measures the neighbours as much as the work (the first
miniature experiment took stage 1 for 47 s where it ran 60 s, because the other arm's steps happened to run
slower). Both stages run a forward and a backward pass over every token of a step, so tokens stand for
FLOPs, up to what differs per token: the LM head (stage 1 computes it at the supervised tokens only, stage 2
not at all) and GradCache's extra no-grad pass when a stage-2 batch spans several chunks (not counted; the
tiny presets' batch fits one chunk).

The counts are expectations: the mean length of a seeded sample of the training items (``SAMPLE``), times
the items a step takes.
"""
from __future__ import annotations

import numpy as np

from .checkpoints import resolve_checkpoint
from .config import Config
from .data.sources import stage1_dialogues, train_pairs
from .processor import VLProcessor
from .sequence import dialogue_examples, embed_example
from .stage2 import split_heldout

SAMPLE = 512
"""Training items whose lengths are measured: enough for a mean within ~1 %, cheap at real sizes."""

SAMPLE_SEED = 0
"""Their sample's seed, fixed: counts must not change with a run's training seed, or an experiment's seeds would
size their equal-compute arms differently."""


def _sample(items: list, seed: int = SAMPLE_SEED) -> list:
    if len(items) <= SAMPLE:
        return items
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), SAMPLE, replace=False))]


def _processor(cfg: Config) -> VLProcessor:
    return VLProcessor.for_model(resolve_checkpoint(cfg.model.backbone), cfg.model)


def stage1_tokens_per_step(cfg: Config) -> float:
    """Mean tokens of one stage-1 optimizer step: ``batch_size`` training dialogues, image and K tokens included."""
    s1 = cfg.stage1
    dialogues = stage1_dialogues(cfg)[:-s1.heldout]
    lengths = [len(ex.input_ids) for ex in dialogue_examples(_processor(cfg), _sample(dialogues), s1)]
    return float(np.mean(lengths)) * s1.train.batch_size


def stage2_tokens_per_step(cfg: Config) -> float:
    """Mean tokens of one stage-2 optimizer step: ``batch_size`` training pairs, each its query and its target
    (and its hard negative, where ``stage2.hard_negatives``)."""
    s2 = cfg.stage2
    processor = _processor(cfg)
    train, _ = split_heldout(train_pairs(cfg))

    def sides(pair):
        return pair.query, pair.positive, *((pair.negative,) if s2.hard_negatives and pair.negative else ())

    per_pair = [sum(len(embed_example(processor, item).input_ids) for item in sides(p))
                for p in _sample(train)]
    return float(np.mean(per_pair)) * s2.train.batch_size


def equal_compute_steps(cfg: Config) -> dict:
    """Stage-2 steps that give contrastive-only CoMa's compute (``cfg``: CoMa's config): its own steps plus
    stage 1's tokens spent at stage 2's tokens per step."""
    stage1 = stage1_tokens_per_step(cfg) * cfg.stage1.train.steps
    per_step = stage2_tokens_per_step(cfg)
    return {"stage1_tokens": stage1, "stage2_tokens_per_step": per_step,
            "contrastive_only_steps": cfg.stage2.train.steps + int(round(stage1 / per_step))}
