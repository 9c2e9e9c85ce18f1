"""Counted compute (comalite.compute): tokens per step of each stage, measured on the training items, and the
stage-2 steps that give contrastive-only CoMa's compute."""
from __future__ import annotations

import numpy as np
import pytest

from comalite import compute
from comalite.backbone import Backbone
from comalite.data.sources import stage1_dialogues, train_pairs
from comalite.sequence import dialogue_examples, embed_example
from comalite.stage2 import split_heldout


def test_tokens_per_step_are_the_mean_training_item_times_the_batch(tiny_config, monkeypatch):
    monkeypatch.setattr(Backbone, "__init__", lambda *a, **k: pytest.fail("counting tokens must not load a model"))
    cfg = tiny_config()
    processor = compute._processor(cfg)
    dialogues = stage1_dialogues(cfg)[:-cfg.stage1.heldout]  # fewer than SAMPLE: every training dialogue
    assert len(dialogues) < compute.SAMPLE
    lengths = [len(ex.input_ids) for ex in dialogue_examples(processor, dialogues, cfg.stage1)]
    assert compute.stage1_tokens_per_step(cfg) == pytest.approx(np.mean(lengths) * cfg.stage1.train.batch_size)

    train, _ = split_heldout(train_pairs(cfg))
    sample = compute._sample(train)  # more pairs than SAMPLE here
    pair = [len(embed_example(processor, p.query).input_ids) + len(embed_example(processor, p.positive).input_ids)
            for p in sample]
    assert compute.stage2_tokens_per_step(cfg) == pytest.approx(np.mean(pair) * cfg.stage2.train.batch_size)
    negatives = tiny_config("stage2.hard_negatives=true")
    assert compute.stage2_tokens_per_step(negatives) > compute.stage2_tokens_per_step(cfg)  # a third side a pair


def test_counts_do_not_depend_on_the_training_seed(tiny_config):
    """An experiment sizes every seed's equal-compute arm from one count: a seed must not move it."""
    assert compute.stage2_tokens_per_step(tiny_config("stage2.train.seed=3")) == \
        compute.stage2_tokens_per_step(tiny_config("stage2.train.seed=0"))


def test_equal_compute_adds_stage_one_tokens_as_stage_two_steps(tiny_config, monkeypatch):
    monkeypatch.setattr(compute, "stage1_tokens_per_step", lambda cfg: 1000.0)
    monkeypatch.setattr(compute, "stage2_tokens_per_step", lambda cfg: 400.0)
    cfg = tiny_config("stage1.train.steps=30", "stage2.train.steps=12")
    assert compute.equal_compute_steps(cfg) == {"stage1_tokens": 30000.0, "stage2_tokens_per_step": 400.0,
                                                "contrastive_only_steps": 12 + 75}


def test_a_large_training_set_is_measured_on_a_seeded_sample():
    items = list(range(5 * compute.SAMPLE))
    first = compute._sample(items, seed=3)
    assert len(first) == compute.SAMPLE and first == sorted(first) and first == compute._sample(items, seed=3)
    assert first != compute._sample(items, seed=4)
    assert compute._sample(items[:10], seed=3) == items[:10]
