"""The miniature experiment's bookkeeping: which cells run, how seeds are paired, how the interval is made."""
from __future__ import annotations

import pytest
from scipy import stats

from comalite.errors import ComaliteError
from comalite.experiment import Cell, grid
from comalite.experiment_design import ABLATIONS, ARMS
from comalite.experiment_report import load_report
from comalite.experiment_stats import difference_in_words, paired_difference, summarize, transfer_groups


def test_the_paired_difference_is_a_t_interval_over_seeds():
    a, b = [0.50, 0.60, 0.70], [0.40, 0.45, 0.65]
    d = paired_difference(a, b)  # differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05
    assert d["mean"] == pytest.approx(0.10) and d["std"] == pytest.approx(0.05) and d["seeds"] == 3
    half = stats.t.ppf(0.975, 2) * 0.05 / 3 ** 0.5  # 4.303 * 0.0289 = 0.124
    assert d["ci95"] == pytest.approx([0.10 - half, 0.10 + half])


def test_the_grid_changes_one_thing_at_a_time():
    cells = grid(("budget", "transfer", "ablations"), seeds=[0, 1], budgets=[10, 40], full=40)
    assert len(cells) == len(set(cells))
    budget = [c for c in cells if c.split == "all" and not c.variant]
    assert {(c.arm, c.steps) for c in budget} == {(arm, s) for arm in ARMS for s in (10, 40)}
    assert {c.arm for c in cells if c.split == "transfer"} == {"contrastive_only", "coma"}
    for variant, ablation in ABLATIONS.items():  # K changes both stages' embedding: its baseline runs with the same K
        arms = {c.arm for c in cells if c.variant == variant}
        assert arms == ({"contrastive_only", "coma"} if ablation.changes_baseline else {"coma"})
    assert all(c.steps == 40 for c in cells if c.variant or c.split == "transfer")


def _row(arm, seed, overall, steps=40, variant="", split="all"):
    return {**Cell(arm, steps, seed, variant, split).__dict__, "scores": {"SW-Count": overall, "SW-T2I": overall / 2},
            "aggregates": {"overall": overall, "IND": overall}, "train_seconds": 10.0}


def test_summaries_pair_each_arm_with_contrastive_only_of_the_same_seed():
    rows = [_row("contrastive_only", s, v) for s, v in enumerate([0.30, 0.40, 0.50])]
    rows += [_row("coma", s, v) for s, v in enumerate([0.35, 0.40, 0.60])]
    rows += [_row("coma", 0, 0.9, variant="supervise_all")]  # an ablation: paired with the plain baseline
    rows += [_row(arm, 0, v, variant="k4") for arm, v in (("contrastive_only", 0.2), ("coma", 0.5))]  # with its own
    by = {(e["arm"], e["variant"]): e for e in summarize(rows)}
    coma = by[("coma", "")]
    assert coma["mean"]["overall"] == pytest.approx(0.45)
    assert coma["minus_contrastive_only"]["overall"]["mean"] == pytest.approx(0.05)
    assert by[("coma", "supervise_all")]["minus_contrastive_only"]["overall"]["mean"] == pytest.approx(0.6)
    assert by[("coma", "k4")]["minus_contrastive_only"]["overall"]["mean"] == pytest.approx(0.3)
    assert "minus_contrastive_only" not in by[("contrastive_only", "")]


def test_transfer_groups_split_seen_and_unseen_task_families():
    groups = transfer_groups({"SW-Count": 0.8, "SW-VQA": 0.4, "SW-T2I": 0.1, "SW-Ground": 0.3})
    assert groups == pytest.approx({"seen tasks": 0.6, "unseen tasks": 0.2})


def test_a_difference_in_words_says_whether_the_interval_leaves_zero_out():
    better = paired_difference([0.50, 0.60, 0.70], [0.40, 0.45, 0.65])  # +10 points, interval +- 12.4
    assert difference_in_words(better) == ("CoMa minus contrastive-only: +10.0 points (95 % interval -2.4 to +22.4, "
                                           "3 seeds); the interval holds zero: no difference the seeds can tell apart")
    clear = paired_difference([0.50, 0.61, 0.72], [0.40, 0.50, 0.60])  # differences 0.10, 0.11, 0.12
    assert difference_in_words(clear).endswith("CoMa is better: the interval leaves zero out")
    worse = paired_difference([0.40, 0.50, 0.60], [0.50, 0.61, 0.72])
    assert difference_in_words(worse, "QA without the mask").endswith("QA without the mask is worse: the interval leaves zero out")
    assert difference_in_words(paired_difference([0.5], [0.4])).endswith("one seed: no interval, so no verdict")


def test_a_missing_report_says_how_to_make_it(tmp_path):
    with pytest.raises(ComaliteError, match="run `comalite experiment --out"):
        load_report(tmp_path)


def test_no_report_outside_a_checkout_and_an_evaluations_results_are_named(tmp_path):
    with pytest.raises(ComaliteError, match="no committed experiment report outside a checkout"):
        load_report(None)                                   # what committed_report() gives in an installed copy
    (tmp_path / "results.json").write_text('{"models": [], "scores": {}}')
    with pytest.raises(ComaliteError, match="is not an experiment report"):
        load_report(tmp_path)
