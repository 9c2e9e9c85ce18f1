"""``benchmarks/bench_stage0_lookup.py`` runs end to end on a few scenes and reports per question type."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stage0_lookup.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_stage0_lookup", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", [[], ["--text"], ["--oracle"]], ids=["image", "text", "oracle"])
def test_a_short_run_scores_every_question_of_its_family(tiny_checkpoint, tmp_path, mode):
    bench = _bench()
    out = tmp_path / "run.json"
    report = bench.main(["--vision-from", str(tiny_checkpoint), "--steps", "2",
                         "--batch-size", "4", "--scenes", "30", "--tag", "t", "--out", str(out), *mode])
    assert json.loads(out.read_text()) == report
    assert report["by_type"] and set(report["by_type"]) <= set(bench.FAMILIES["place"])  # only the family's questions
    assert all(0 <= row["accuracy"] <= 1 and row["answers"] > 0 for row in report["by_type"].values())
    assert report["train_sequences"] > 0 and len(report["loss_every_50"]) == 1
    assert ("oracle_probe_accuracy" in report) == ("--oracle" in mode)


def test_copy_needs_text(tiny_checkpoint):
    with pytest.raises(SystemExit):
        _bench().main(["--vision-from", str(tiny_checkpoint), "--tag", "t", "--copy"])


def test_family_turns_keep_one_turn_per_sequence_of_the_family():
    bench = _bench()
    scenes = bench.text_scenes(20, 0)
    turns = bench.family_turns(scenes, "object")
    from comalite.shapesworld import question_template

    assert turns and all(len(d.turns) == 1 and question_template(d.turns[0].question) in bench.FAMILIES["object"]
                         and d.text for d in turns)
