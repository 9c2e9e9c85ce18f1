"""Converged references: shipped from a finished run, found by content, checked, and shown beside a live run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comalite import cli, reference
from comalite.checkpoints import CHECKSUMS
from comalite.errors import ChecksumError, ComaliteError
from comalite.eval.report import format_table
from comalite.result import verify_weights
from conftest import make_config

SHORT = ["stage1.train.steps=2", "stage2.train.steps=2", "eval.max_queries=6"]


@pytest.fixture(scope="module")
def shipped(tiny_home, tmp_path_factory):
    """A smoke run made by the demo command, shipped by the reference command: (run folder, reference folder,
    the demo's printed output)."""
    tmp = tmp_path_factory.mktemp("reference")
    sets = [x for s in SHORT + [f"out_dir={tmp / 'run'}"] for x in ("--set", s)]
    cli.main(["demo", "--preset", "tiny-smoke", *sets])
    cli.main(["reference", "--preset", "tiny-smoke", *sets, "--out", str(tmp / "refs" / "smoke")])
    return tmp / "run", tmp / "refs" / "smoke"


def test_a_reference_keeps_what_loads_and_plots_not_what_resumes(shipped):
    run, ref = shipped
    files = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith("checkpoint.pt") or "/cache/" in f]
    listed = sorted(line.split(maxsplit=1)[1] for line in (ref / CHECKSUMS).read_text().splitlines())
    assert listed == [f for f in files if f != CHECKSUMS]
    for stage in ("stage1", "stage2", "contrastive_only"):
        verify_weights(ref / stage)  # every weight file its result.json names, with its sha256
        assert (ref / stage / "history.json").exists()
    assert reference.load(ref)["models"] == json.loads((run / "eval" / "results.json").read_text())["models"]
    machine = str(Path(make_config().data_root()).parent)
    assert not [f for f in files if machine in (ref / f).read_text(errors="ignore")]  # no absolute machine paths


def test_the_demo_says_why_no_reference_is_shown(shipped):
    run, _ = shipped
    printed = (run / "eval" / "beside_reference.md").read_text()
    assert printed.startswith("No converged reference for these settings (")
    # Any shipped reference was made from the full tiny VLM, not the smoke one.
    assert ("inputs.backbone: " if reference.roots() else "no reference is shipped") in printed


def test_a_run_of_other_lengths_finds_it_and_other_model_settings_do_not(shipped, tmp_path):
    _, ref = shipped
    longer = make_config("stage1.train.steps=40", "stage2.train.steps=30", out=tmp_path / "longer")
    assert reference.find(longer, ref.parent) == (ref, [])
    other = make_config("model.lora_r=4", out=tmp_path / "other")
    folder, why_not = reference.find(other, ref.parent)
    assert folder is None and any(d.startswith("model.lora_r: ") for d in why_not)
    assert reference.find(longer, tmp_path / "empty") == (None, ["no reference is shipped"])


def test_a_live_run_is_printed_beside_the_reference(shipped, tmp_path):
    run, ref = shipped
    live = json.loads((run / "eval" / "results.json").read_text())
    merged = reference.beside(live, reference.load(ref))
    assert merged["models"] == ["stage2", "stage2 (converged)", "contrastive_only", "contrastive_only (converged)"]
    for name in ("stage2", "contrastive_only"):
        assert merged["scores"][name + " (converged)"] == reference.load(ref)["scores"][name]
        assert merged["floors"][name] == live["floors"][name]
    assert "| stage2 | stage2 (converged) | contrastive_only | contrastive_only (converged) |" in format_table(merged)
    text = reference.report(make_config(*SHORT, out=run), live, ref.parent)
    assert text.startswith("# Beside the converged reference: `smoke` (stage 1 2 steps, stage 2 2, "
                           "contrastive-only 2); this run: stage 1 2 steps, stage 2 2")
    resampled = dict(live, sampling={"limit": 5, "seed": 0})
    with pytest.raises(ComaliteError, match="other datasets or queries"):
        reference.beside(resampled, reference.load(ref))


def test_a_damaged_reference_is_refused_and_a_failed_ship_keeps_the_old_one(shipped, tmp_path):
    import shutil

    _, ref = shipped
    copy = shutil.copytree(ref, tmp_path / "copy")
    results = copy / "eval" / "results.json"
    results.write_text(results.read_text().replace('"models"', '"models" ', 1))
    with pytest.raises(ChecksumError, match="results.json.*comalite reference --preset copy"):
        reference.load(copy)
    (tmp_path / "unfinished" / "stage1").mkdir(parents=True)
    with pytest.raises(ComaliteError, match="stage2/result.json"):
        reference.ship(tmp_path / "unfinished", copy)
    assert results.read_text().startswith("{") and (copy / CHECKSUMS).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-built folder left
