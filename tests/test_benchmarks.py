"""Smoke tests: each benchmark script runs end to end at toy sizes and writes the JSON it promises.

They call each script's ``main(argv)`` in this process in smoke mode, on the session's tiny model and small
ShapesWorld (``conftest.py``). The memory and speed benchmarks run every configuration in a fresh process forked from
a preloaded server; the first of them pays for that server's imports once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent



def _data_args(data_root: Path) -> list[str]:
    """Smoke mode on the session's ShapesWorld (same parameters: it is reused, not rebuilt)."""
    return ["--preset", "tiny-smoke", "--set", f"data.root={data_root}"]


def _read(path: Path) -> dict:
    assert path.is_file()
    return json.loads(path.read_text())


def test_bench_tiny_build(bench, tmp_path, data_root):
    data_before = os.environ.get("COMALITE_DATA")
    out = tmp_path / "tiny_build.json"
    report = bench("bench_tiny_build").main(["--steps", "2", "--batch-size", "4", "--vision-steps", "2",
                                             "--home", str(tmp_path / "home"), "--smoke", "--set", f"data.root={data_root}",
                                             "--out", str(out)])
    assert os.environ.get("COMALITE_DATA") == data_before  # the session's data folder is restored
    saved = _read(out)
    assert saved == json.loads(json.dumps(report))
    for key in ("build_seconds", "data_seconds", "stage0_seconds", "stage0_steps", "stage0_steps_per_s",
                "heldout_answer_accuracy", "heldout_blind_accuracy", "accuracy_over_blind", "torch_threads",
                "parameters", "peak_rss_mb", "vision_token_accuracy", "heldout_turn_accuracy",
                "heldout_by_question_type"):
        assert key in saved, key
    assert saved["stage0_steps"] == 2 and saved["stage0_batch_size"] == 4 and saved["smoke"]
    assert saved["build_seconds"] >= saved["stage0_seconds"] > 0
    assert 0 <= saved["heldout_answer_accuracy"] <= 1 and 0 < saved["heldout_blind_accuracy"] < 1
    by_type = saved["heldout_by_question_type"]
    assert "How many objects are there?" in by_type
    n_turns = sum(row["answers"] for row in by_type.values())
    assert saved["heldout_turn_accuracy"] == pytest.approx(
        sum(row["accuracy"] * row["answers"] for row in by_type.values()) / n_turns)
    short = {k: row for k, row in by_type.items() if k != "Describe the image in detail."}
    assert saved["heldout_short_accuracy"] == pytest.approx(
        sum(row["accuracy"] * row["answers"] for row in short.values()) / sum(row["answers"] for row in short.values()))
    assert saved["torch_threads"] >= 1
    assert (tmp_path / "home" / "tiny-vlm-smoke" / "tiny_report.json").is_file()  # --home is kept
    assert not (tmp_path / "home" / "shapesworld-smoke").exists()  # the session's data was reused


def test_bench_tiny_build_packs_turns_on_a_reused_vit(bench, tmp_path, data_root, tiny_checkpoint):
    """A stage-0 study: ``--vision-from`` reuses a checkpoint's pre-trained ViT (and its measured probe), ``--tiny``
    sets a recipe field (here turns packed under the separate-turns mask); the report scores the description."""
    out = tmp_path / "tiny_build.json"
    saved = bench("bench_tiny_build").main(["--steps", "2", "--batch-size", "4", "--smoke", "--tiny", "pack_turns=True",
                                            "--vision-from", str(tiny_checkpoint), "--home", str(tmp_path / "home"),
                                            "--set", f"data.root={data_root}", "--out", str(out)])
    source = json.loads((tiny_checkpoint / "tiny_report.json").read_text())
    assert saved["vision_token_accuracy"] == source["vision_token_accuracy"]
    assert saved["tiny_config"]["pack_turns"] is True and saved["vision_from"] == str(tiny_checkpoint)
    built = json.loads((tmp_path / "home" / "tiny-vlm-smoke" / "tiny_report.json").read_text())
    from comalite.config import load_config
    from comalite.data.sources import stage1_dialogues

    cfg = load_config("tiny-smoke", [f"data.root={data_root}"])
    assert built["stage0_sequences"] == len(stage1_dialogues(cfg)) - cfg.stage1.heldout  # one sequence a dialogue
    description = built["heldout_description"]
    assert description["descriptions"] == saved["heldout_by_question_type"]["Describe the image in detail."]["answers"]
    assert set(description) == {"descriptions", "count", "size", "color", "shape", "position"}
    with pytest.raises(SystemExit, match="plain TinyConfig field"):
        bench("bench_tiny_build").main(["--tiny", "stage0=3", "--out", str(tmp_path / "x.json")])


def test_bench_gradcache_memory(bench, tmp_path, tiny_checkpoint, data_root):
    out = tmp_path / "gradcache.json"
    report = bench("bench_gradcache_memory").main(
        ["--sizes", "4,8", "--chunk", "4", "--device", "cpu", "--threads", "1", "--checkpoint", str(tiny_checkpoint),
         *_data_args(data_root), "--out", str(out)])
    saved = _read(out)
    assert saved["sizes"] == [4, 8] and saved["chunk"] == 4 and saved["memory"] == "peak_rss"
    rows = saved["rows"]
    expected = [(4, "gradcache"), (4, "full"), (8, "gradcache"), (8, "full")]
    assert [(r["batch_size"], r["mode"]) for r in rows] == expected
    for r in rows:
        assert "error" not in r, r.get("traceback", r)
        for key in ("peak_mb", "delta_mb", "baseline_mb", "step_seconds", "loss", "params_with_grad"):
            assert key in r, key
        assert r["peak_mb"] >= r["baseline_mb"] > 0
        assert r["delta_mb"] == pytest.approx(r["peak_mb"] - r["baseline_mb"])
        assert r["params_with_grad"] > 0 and r["grad_norm"] > 0
        assert r["torch_threads"] == 1 and not r["pairs_repeated"]
        assert r["backbone"] == str(tiny_checkpoint)
    for size in (4, 8):  # both modes score the same batch: GradCache returns the one-pass loss
        losses = [r["loss"] for r in rows if r["batch_size"] == size]
        assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    assert set(saved["growth"]) == {"gradcache", "full"}
    assert isinstance(saved["gradcache_flatter_than_full"], bool)
    assert report["rows"] == rows


def test_bench_step_speed(bench, tmp_path, tiny_checkpoint, data_root):
    out = tmp_path / "steps.json"
    bench("bench_step_speed").main(
        ["--configs", "stage1,stage2-before,stage2", "--steps", "2", "--warmup", "1", "--warm-epochs", "0",
         "--images", "3", "--device", "cpu", "--threads", "1", "--checkpoint", str(tiny_checkpoint),
         *_data_args(data_root), "--set", "stage1.train.batch_size=4", "--set", "stage2.train.batch_size=16",
         "--set", "stage2.sub_batch_size=8", "--out", str(out)])
    saved = _read(out)
    rows = {r["config"]: r for r in saved["rows"]}
    assert set(rows) == {"stage1", "stage2-before", "stage2"}
    for r in rows.values():
        assert "error" not in r, r.get("traceback", r)
        assert r["measured_steps"] == 2 and r["torch_threads"] == 1
        assert 0 < r["min_s_per_step"] <= r["median_s_per_step"] <= r["max_s_per_step"]
    assert rows["stage1"]["batch_size"] == 4 and rows["stage2"]["batch_size"] == 16
    assert (rows["stage2-before"]["chunk_size"], rows["stage2-before"]["vision_cache_mb"]) == (16, 0)
    assert rows["stage2"]["vision_cache_mb"] > 0
    images = saved["image_path"]
    assert images["images"] == 3 and images["llm_tokens_per_image"] <= images["max_pixels"] // 28 ** 2
    assert images["s_per_image"] > 0 and images["s_per_image_threads"] > 0


def test_bench_input_pipeline(bench, tmp_path, capsys):
    out = tmp_path / "input.json"
    report = bench("bench_input_pipeline").main(["--images", "4", "--workers", "0,1", "--size", "320x240",
                                                  "--compute-ms", "1", "--out", str(out)])
    assert _read(out) == json.loads(json.dumps(report))
    assert [r["workers"] for r in report["rows"]] == [0, 1] and report["rows"][0]["speedup"] == 1
    assert all(r["images_per_s"] > 0 and 0 <= r["wait_fraction"] <= 1 for r in report["rows"])
    assert 0 < report["llm_tokens_per_image"] <= report["max_pixels"] // 28 ** 2
    assert "data wait" in capsys.readouterr().out


def test_estimate_memory(bench, tmp_path):
    """The image-budget estimate: the terms the docstring states, by hand for one case, growing with the budget."""
    estimate_memory = bench("estimate_memory")
    out = tmp_path / "memory.json"
    result = estimate_memory.main(["--image-tokens", "256,1024", "--out", str(out)])
    assert _read(out) == json.loads(json.dumps(result)) and result["estimate"] is True
    low, high = result["rows"]
    # Stage 1 of the 2B preset at 256 tokens: 8 sequences of 256 + 2 + (12 + 150) + 16 = 436 tokens.
    s1 = low["stage1"]
    assert s1["tokens_per_sequence"] == 436
    assert s1["checkpoints"] == pytest.approx(2 * 28 * 8 * 436 * 1536 / 2 ** 30)        # 0.279 GiB
    assert s1["logits"] == pytest.approx(10 * 8 * 100 * 151936 / 2 ** 30)              # 1.132 GiB
    assert s1["total"] == pytest.approx(sum(v for k, v in s1.items()
                                            if k not in ("total", "with_slack", "tokens_per_sequence")))
    for stage in ("stage1", "stage2", "eval"):
        assert high[stage]["with_slack"] > low[stage]["with_slack"]
    assert low["eval"]["checkpoints"] == 0 and low["eval"]["trainable"] == 0  # no gradients in evaluation



def test_the_readmes_image_budget_table_is_the_committed_estimate():
    """README's "The image budget" rows are what benchmarks/results/memory_estimate.json holds."""
    estimate = _read(REPO / "benchmarks" / "results" / "memory_estimate.json")
    section = (REPO / "README.md").read_text().split("### The image budget", 1)[1]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "GiB" in line]
    assert len(rows) == len(estimate["rows"]) == 3
    for cells, row in zip(rows, estimate["rows"]):
        cells = [c.strip() for c in cells]
        assert (int(cells[0]), int(cells[1])) == (row["image_tokens"], row["max_pixels"])
        assert cells[2:5] == [f"~{row[s]['with_slack']:.1f} GiB" for s in ("stage1", "stage2", "eval")]
        assert cells[5] == f"~{row['stage1']['tokens_per_sequence']:,}"


def test_bench_search(bench, tmp_path):
    out = tmp_path / "search.json"
    result = bench("bench_search").main(["--n", "3000", "--dims", "16,32", "--faiss-dims", "16", "--queries", "10",
                                         "--clusters", "30", "--out", str(out)])
    assert _read(out) == json.loads(json.dumps(result))
    small, large = result["rows"]
    assert (small["n"], small["dim"], large["dim"]) == (3000, 16, 32) and "hnsw_recall_at_k" not in large
    assert 0 < small["exact_ms_per_query"] and 0 < small["hnsw_build_seconds"] and 0 < small["hnsw_ms_per_query"]
    assert 0.5 <= small["hnsw_recall_at_k"] <= 1   # a graph over 3,000 points finds most of the exact top 5


def test_stage1_by_type_splits_the_runs_own_held_out_accuracy(bench, tiny_config):
    """``stage1_by_type.py`` scores the same held-out answers the stage-1 run measured: its total is the run's
    ``answer_accuracy_after``, its groups add up to every answer."""
    from comalite.result import read_result
    from comalite.stage1 import run_stage1

    folder = run_stage1(tiny_config("stage1.train.steps=2", "stage1.train.batch_size=4"))
    scores = bench("stage1_by_type").score_by_type(folder, "tiny-smoke", compression_mask=True)
    metrics = read_result(folder)["metrics"]
    assert scores["answers"] == metrics["heldout_answers"]
    assert scores["accuracy"] == pytest.approx(metrics["answer_accuracy_after"])
    for name in ("by_question_type", "by_turn"):
        groups = scores[name].values()
        assert sum(g["answers"] for g in groups) == scores["answers"]
        assert sum(g["answers"] * g["accuracy"] for g in groups) == pytest.approx(scores["answers"] * scores["accuracy"])
    assert list(scores["by_turn"])[:2] == ["1", "2"]


def test_stage1_by_type_scores_the_vlm_itself_as_its_build_report_did(bench, tiny_checkpoint):
    """``--vlm``: the preset's VLM on the held-out dialogues without compression tokens, image in view: the whole-
    dialogue accuracy its build report measured; hiding the other turns changes the verdicts of later turns only."""
    report = json.loads((tiny_checkpoint / "tiny_report.json").read_text())
    script = bench("stage1_by_type")
    plain = script.score_by_type(None, "tiny-smoke", compression_mask=False)
    assert plain["answers"] == report["heldout_answers"]
    # The build scored its full-precision model; here it loads in nf4, as every stage does: an answer or two flips.
    assert plain["accuracy"] == pytest.approx(report["heldout_answer_accuracy"], abs=0.02)
    hidden = script.score_by_type(None, "tiny-smoke", compression_mask=False, separate_turns=True)
    assert hidden["by_turn"]["1"] == plain["by_turn"]["1"]  # the first turn has no other turn before it



def test_vqa_by_type_splits_each_dataset_by_question_template(bench, tiny_home, tmp_path):
    from comalite.config import load_config
    from comalite.data.sources import eval_datasets

    out = tmp_path / "vqa.json"
    result = bench("vqa_by_type").main(["--preset", "tiny-smoke", "--models", "base", "--cache", str(tmp_path / "c"),
                                        "--out", str(out)])
    sizes = {d.name: len(d.queries) for d in eval_datasets(load_config("tiny-smoke"))}
    for name in ("SW-VQA", "SW-VQA-Heldout"):
        rows = result["datasets"][name]
        assert sum(row["queries"] for row in rows.values()) == sizes[name]
        assert all(0 <= row["base"]["precision_at_1"] <= 1 and row["chance"] < 1 for row in rows.values())
    assert not [t for t in result["datasets"]["SW-VQA-Heldout"] if t.startswith("How many")]
    cosines = result["answer_cosines"]["base"]
    assert {"size", "yesno", "position"} <= set(cosines)
    assert all(-1 <= c["mean"] <= c["max"] <= 1 + 1e-6 for c in cosines.values())
    assert cosines["size"]["mean"] == pytest.approx(cosines["size"]["max"])  # two answers: one cosine
    assert json.loads(out.read_text()) == result
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| What")
            or line.startswith("| Is") or line.startswith("| Where") or line.startswith("| How")]
    assert len(rows) == sum(len(r) for r in result["datasets"].values())
