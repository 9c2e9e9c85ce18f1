"""The miniature experiment's bookkeeping: which cells run, how seeds are paired, how the interval is made."""
from __future__ import annotations

import json

import pytest
from scipy import stats

from comalite.errors import ComaliteError
from comalite.experiment import Cell, cell_config, equal_compute_differences, grid
from comalite.experiment_design import ABLATIONS, ARMS, PAIR_CAPS
from comalite.experiment_report import format_report, load_report
from comalite.experiment_stats import (
    difference_in_words,
    holm,
    paired_difference,
    primary_comparisons,
    summarize,
    transfer_groups,
)


def test_the_paired_difference_is_a_t_interval_over_seeds():
    a, b = [0.50, 0.60, 0.70], [0.40, 0.45, 0.65]
    d = paired_difference(a, b)  # differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05
    assert d["mean"] == pytest.approx(0.10) and d["std"] == pytest.approx(0.05) and d["seeds"] == 3
    half = stats.t.ppf(0.975, 2) * 0.05 / 3 ** 0.5  # 4.303 * 0.0289 = 0.124
    assert d["ci95"] == pytest.approx([0.10 - half, 0.10 + half])
    assert d["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)  # the paired t-test's two-sided p
    assert d["differences"] == pytest.approx([0.10, 0.15, 0.05])


def test_holm_multiplies_the_ith_smallest_p_by_the_tests_left_and_keeps_them_monotone():
    # sorted 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1 = 0.04, 0.06, 0.08, 0.30
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.01, 0.011]) == pytest.approx([0.02, 0.02])  # 0.011 x 1 < 0.02: raised to stay monotone
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.01, float("nan"), 0.03])  # NaN is not a test: two are counted
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.03) and adjusted[1] != adjusted[1]


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


def _row(arm, seed, overall, steps=40, variant="", split="all", pairs=0):
    return {**Cell(arm, steps, seed, variant, split, pairs).__dict__,
            "scores": {"SW-Count": overall, "SW-T2I": overall / 2}, "aggregates": {"overall": overall, "IND": overall},
            "train_seconds": 10.0, "train_pairs": 100 * pairs or 5000}


def test_the_pairs_part_runs_every_arm_at_each_pair_count_and_equal_compute_at_each():
    cells = grid(("pairs", "compute"), seeds=[0, 1], budgets=[40], full=40, equal_steps=75)
    assert {(c.arm, c.pairs) for c in cells if not c.variant} == {(a, cap) for a in ARMS for cap in PAIR_CAPS}
    assert all(c.steps == 40 for c in cells if not c.variant)
    longer = [c for c in cells if c.variant == "equal_compute"]
    assert {(c.arm, c.steps, c.pairs, c.seed) for c in longer} == {
        ("contrastive_only", 75, cap, seed) for cap in PAIR_CAPS for seed in (0, 1)}
    assert not grid(("compute",), seeds=[0], budgets=[40], full=40)  # no counted steps, no equal-compute cell
    only_all = grid(("budget", "compute"), seeds=[0], budgets=[40], full=40, equal_steps=75)
    assert [c.pairs for c in only_all if c.variant == "equal_compute"] == [0]


def test_a_cell_with_fewer_pairs_caps_each_subset_in_a_folder_of_its_own(tmp_path):
    capped = cell_config("tiny-smoke", (), Cell("coma", 12, 3, pairs=40), tmp_path)
    plain = cell_config("tiny-smoke", (), Cell("coma", 12, 3), tmp_path)
    assert capped.stage2.per_subset_cap == 40 and plain.stage2.per_subset_cap == 0
    assert capped.run_dir() == tmp_path / "coma" / "pairs40-steps12-seed3"
    assert plain.run_dir() == tmp_path / "coma" / "steps12-seed3"  # the folders of earlier grids keep their names


def test_primary_comparisons_are_coma_minus_contrastive_only_per_pair_count_holm_corrected():
    rows = []
    for cap, gain in ((10, [0.10, 0.12, 0.08]), (40, [0.02, -0.01, 0.03]), (0, [0.0, 0.01, -0.01])):
        rows += [_row("contrastive_only", s, 0.3, pairs=cap) for s in range(3)]
        rows += [_row("coma", s, 0.3 + g, pairs=cap) for s, g in enumerate(gain)]
    rows += [_row("coma", s, 0.9, steps=10) for s in range(3)]  # another budget: not a primary comparison
    primary = primary_comparisons(summarize(rows), full_steps=40)
    assert [p["pairs"] for p in primary] == [10, 40, 0]  # scarcest first, all pairs last
    assert [p["mean"] for p in primary] == pytest.approx([0.10, 0.04 / 3, 0.0])
    assert [p["p_holm"] for p in primary] == pytest.approx(holm([p["p"] for p in primary]))
    assert primary[0]["train_pairs"] == 1000 and primary[0]["group"] == "overall"
    assert not primary_comparisons(summarize([r for r in rows if r["pairs"] == 0]), full_steps=40)  # no curve


def test_the_report_puts_the_primary_comparisons_first_and_reads_equal_compute_per_pair_count():
    rows = []
    for cap in (10, 0):
        rows += [_row("contrastive_only", s, 0.30 + 0.01 * s, pairs=cap) for s in range(3)]
        rows += [_row("coma", s, 0.35 + 0.02 * s, pairs=cap) for s in range(3)]
        rows += [_row("contrastive_only", s, 0.33, steps=75, variant="equal_compute", pairs=cap) for s in range(3)]
    summary = summarize(rows)
    groups = {"overall": 0.2, "IND": 0.2}
    meta = {"preset": "tiny", "seeds": [0, 1, 2], "n_queries": [1000], "base": groups, "chance": groups,
            "floor": groups, "primary": primary_comparisons(summary, 40),
            "equal_compute": {"stage1_tokens": 121845.0, "stage2_tokens_per_step": 1949.4, "contrastive_only_steps": 75,
                              "coma_minus_longer_contrastive_only": equal_compute_differences(rows, 40)}}
    text = format_report(summary, meta)
    assert text.index("## Primary comparisons (pre-registered)") < text.index("## Split: all")
    assert "| 10 | 1,000 | +6.0 [" in text and "| all | 5,000 | +6.0 [" in text
    assert "Holm-adjusted for the 2 comparisons" in text and "exploratory" in text
    assert "121,845 tokens" in text and "runs 75. CoMa minus that run" in text
    assert "| 10 | +4.0 [-1.0, +9.0] | +4.0 [-1.0, +9.0] |\n| all | +4.0 [" in text  # mean 0.37 - 0.33, scarcest first


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


def test_a_pairs_experiment_writes_its_primary_comparisons_curve_and_forest_plot(tmp_path, monkeypatch):
    """The whole report path, with each cell's training and evaluation replaced by made-up scores (CoMa gains
    most where pairs are scarce): what runs, what is paired, what is written."""
    import comalite.experiment as experiment

    groups = {"overall": 0.2, "IND": 0.2, "OOD": 0.2}
    monkeypatch.setattr(experiment, "evaluate_models", lambda cfg, models: {
        "aggregates": {"base": groups}, "chance_aggregates": groups, "floor_aggregates": {"base": groups}})
    monkeypatch.setattr(experiment, "equal_compute_steps", lambda cfg: {
        "stage1_tokens": 9000.0, "stage2_tokens_per_step": 900.0, "contrastive_only_steps": cfg.stage2.train.steps + 10})
    ran = []

    def fake_cell(preset, overrides, cell, root):
        ran.append(cell)
        gain = {10: 0.08, 40: 0.04, 200: 0.02, 0: 0.0}[cell.pairs] if cell.arm == "coma" else 0.0
        score = 0.3 + gain + 0.01 * cell.seed + (0.01 if cell.variant == "equal_compute" else 0.0)
        return {**cell.__dict__, "scores": {"SW-Count": score}, "aggregates": {g: score for g in groups},
                "train_seconds": 1.0, "train_pairs": 6 * (cell.pairs or 950), "n_queries": {"SW-Count": 24}}

    monkeypatch.setattr(experiment, "run_cell", fake_cell)
    out = tmp_path / "report"
    experiment.run_experiment("tiny-smoke", (f"out_dir={tmp_path / 'runs'}",), out, parts=("pairs", "compute"),
                              seeds=[0, 1, 2], budgets=[])
    assert len(ran) == 3 * (len(PAIR_CAPS) * len(ARMS) + len(PAIR_CAPS))  # every arm and equal compute per count
    assert {c.steps for c in ran if c.variant == "equal_compute"} == {12 + 10}  # tiny-smoke: 12 stage-2 steps
    report = json.loads((out / "results.json").read_text())
    primary = report["meta"]["primary"]
    assert [p["pairs"] for p in primary] == [10, 40, 200, 0]
    assert [round(100 * p["mean"], 6) for p in primary] == [8.0, 4.0, 2.0, 0.0]
    assert list(report["meta"]["equal_compute"]["coma_minus_longer_contrastive_only"]) == ["10", "40", "200", "0"]
    for name in ("results.md", "pairs_curve.png", "forest.png"):
        assert (out / name).is_file(), name
    assert not (out / "budget_curve.png").exists()  # one budget: no curve
    assert (out / "results.md").read_text().index("Primary comparisons") < (out / "results.md").read_text().index(
        "## Split: all")


def test_a_report_row_names_the_run_behind_it(tmp_path):
    """Each row of results.json carries its stage folder's settings fingerprint and input fingerprints."""
    from comalite.experiment import _record
    from comalite.runs import make_record

    record = make_record({"stage2": {"steps": 500}}, {"backbone": "2d9c", "data": "0993"})
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert _record(tmp_path) == {"fingerprint": record["fingerprint"], "inputs": {"backbone": "2d9c", "data": "0993"}}
    assert _record(tmp_path / "missing") == {"fingerprint": None, "inputs": None}


def test_an_interim_report_trains_nothing_and_names_the_cells_not_finished(tmp_path, monkeypatch):
    """``--finished-only``: only cells whose stage result and evaluation are on disk are reported (another
    process may be training the rest); none finished is an error that says what to run."""
    import comalite.experiment as experiment
    from comalite.errors import ComaliteError

    groups = {"overall": 0.2}
    monkeypatch.setattr(experiment, "evaluate_models", lambda cfg, models: {
        "aggregates": {"base": groups}, "chance_aggregates": groups, "floor_aggregates": {"base": groups}})
    ran = []
    monkeypatch.setattr(experiment, "run_cell", lambda preset, overrides, cell, root: ran.append(cell) or {
        **cell.__dict__, "scores": {"SW-Count": 0.3}, "aggregates": {"overall": 0.3 + 0.01 * cell.seed},
        "train_seconds": 1.0, "train_pairs": 60, "n_queries": {"SW-Count": 24}})
    overrides = (f"out_dir={tmp_path / 'runs'}",)
    root = experiment.load_config("tiny-smoke", list(overrides)).run_dir() / "grid"  # where the grid's cells live
    run = lambda: experiment.run_experiment("tiny-smoke", overrides, tmp_path / "report",  # noqa: E731
                                            parts=("pairs",), seeds=[0, 1], budgets=[], finished_only=True)
    with pytest.raises(ComaliteError, match="no cell of the grid .* is finished yet .*without --finished-only"):
        run()
    cells = experiment.grid(("pairs",), [0, 1], [12], 12)
    done = cells[:3]  # seed 0's three arms at 10 pairs a subset
    for cell in done + cells[3:4]:  # the fourth is trained but not yet evaluated
        folder = experiment.cell_config("tiny-smoke", overrides, cell, root).run_dir()
        (folder / cell.stage.name).mkdir(parents=True)
        (folder / cell.stage.name / "result.json").write_text("{}")
        if cell in done:
            (folder / "eval").mkdir()
            (folder / "eval" / "results.json").write_text("{}")
    report = run()
    assert ran == done
    assert report["meta"]["cells"] == len(cells) == 24 and len(report["meta"]["missing"]) == 21
    assert "contrastive_only/pairs40-steps12-seed0" in report["meta"]["missing"]
    text = (tmp_path / "report" / "results.md").read_text()
    assert "**Interim report:** 3 of 24 cells finished (`--finished-only`); 21 not yet (" in text


def test_an_interim_report_before_any_equal_compute_cell_says_so():
    from comalite.experiment_report import equal_compute_section

    eq = {"stage1_tokens": 6e6, "stage2_tokens_per_step": 1949.0, "contrastive_only_steps": 4625,
          "coma_minus_longer_contrastive_only": {}}
    lines = equal_compute_section(eq, ["overall"])
    assert "(no equal-compute cell finished yet)" in lines and not any(line.startswith("|") for line in lines)
