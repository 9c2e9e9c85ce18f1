"""``benchmarks/bench_stage0_lookup.py`` runs end to end on a few scenes and reports per question type."""
from __future__ import annotations

import json

import pytest

from repo_scripts import load_script


def _bench():
    return load_script("benchmarks/bench_stage0_lookup.py")


@pytest.mark.parametrize("mode", [[], ["--text"], ["--oracle"], ["--grid-captions", "6"], ["--pretrain-text", "2"],
                                  ["--curriculum", "2", "--probe"], ["--point", "1"]],
                         ids=["image", "text", "oracle", "grid_captions", "pretrain_text", "curriculum", "point"])
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
    assert report["settings"]["point"] == (1 if "--point" in mode else None)
    if "--grid-captions" in mode:  # the captions train, they are not scored
        assert report["train_sequences"] > report["test_answers"] and report["settings"]["grid_captions"] == 6
    if "--curriculum" in mode:
        one = report["curriculum"]
        assert one["steps"] == 2 and len(one["loss_every_50"]) == 1 and set(one["by_type"]) <= set(bench.FAMILIES["place"])
        probe = report["probe"]  # one held-out accuracy per layer of the LM for each thing probed
        assert probe["turns"] > 0 and all(len(probe[k]) == 4 and all(0 <= a <= 1 for a in probe[k])
                                          for k in ("asked place", "object's place", "answer"))
    if "--pretrain-text" in mode:  # the text stage scores each question type once after its description
        text = report["text_pretraining"]
        assert text["steps"] == 2 and len(text["loss_every_50"]) == 1
        assert text["by_type"] and all(0 <= r["accuracy"] <= 1 and r["answers"] > 0 for r in text["by_type"].values())


def test_grid_captions_name_each_object_place_first_in_reading_order():
    from comalite.shapesworld import Background, Obj, Scene

    bench = _bench()
    scene = Scene(objects=(Obj("circle", "blue", "large", 0, 2), Obj("square", "green", "small", 1, 1),
                           Obj("star", "red", "small", 2, 1)), background=Background("plain", ("charcoal",)))
    assert bench.grid_caption(scene) == ("top right: a large blue circle. center: a small green square. "
                                         "bottom center: a small red star.")


@pytest.mark.parametrize("flags", [["--copy"], ["--probe"], ["--text", "--curriculum", "2"]])
def test_levers_that_need_another_are_refused(tiny_checkpoint, flags):
    with pytest.raises(SystemExit):
        _bench().main(["--vision-from", str(tiny_checkpoint), "--tag", "t", *flags])


def test_family_turns_keep_one_turn_per_sequence_of_the_family():
    bench = _bench()
    scenes = bench.text_scenes(20, 0)
    turns = bench.family_turns(scenes, "object")
    from comalite.shapesworld import question_template

    assert turns and all(len(d.turns) == 1 and question_template(d.turns[0].question) in bench.FAMILIES["object"]
                         and d.text for d in turns)


def test_bag_of_objects_names_the_only_object_right_and_shares_ties(monkeypatch):
    import comalite.shapesworld as sw
    from comalite.shapesworld import Background, Obj, Scene

    bench = _bench()
    one = Scene(objects=(Obj("star", "red", "small", 0, 0),), background=Background("plain", ("gray",)))
    monkeypatch.setattr(sw, "sample_scene", lambda rng, **kw: one)
    bag = bench.bag_of_objects(200, 0)
    assert bag["What color is the object {place}?"] == bag["What shape is the object {place}?"] == 1.0
    two = Scene(objects=(Obj("star", "red", "small", 0, 0), Obj("circle", "blue", "large", 2, 2)),
                background=Background("plain", ("gray",)))
    monkeypatch.setattr(sw, "sample_scene", lambda rng, **kw: two)
    bag = bench.bag_of_objects(200, 0)
    assert bag["What color is the object {place}?"] == bag["What shape is the object {place}?"] == 0.5  # a tie
    assert 0.5 <= bag["Is there an object {place}?"] <= 1.0


def test_point_heads_take_three_heads(capsys):
    bench = _bench()
    assert bench.point_heads("0,1,-1") == [0, 1, -1]
    with pytest.raises(SystemExit):
        bench.main(["--vision-from", "x", "--tag", "t", "--point", "1", "--point-heads", "0,1"])
    assert "give three heads as P,O,C" in capsys.readouterr().err


def test_the_relation_family_points_a_second_head_at_the_second_object(tiny_checkpoint, tmp_path):
    bench = _bench()
    report = bench.main(["--vision-from", str(tiny_checkpoint), "--steps", "2", "--batch-size", "4", "--scenes", "60",
                         "--family", "relation", "--point", "1", "--second-head", "3", "--tag", "t",
                         "--out", str(tmp_path / "run.json")])
    assert set(report["by_type"]) == set(bench.FAMILIES["relation"]) and report["settings"]["second_head"] == 3
    assert "bag_of_objects" not in report  # a place-family baseline
