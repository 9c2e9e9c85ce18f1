"""No work lost, every output folder guarded.

- ``stage1-data`` puts each dialogue on disk as it is written, resumes after the last complete line (a torn
  one is dropped with a warning), and skips an unreadable image (listed in ``<out>.skipped``, not retried by
  a rerun unless ``--retry-skipped``; ``writer.strict`` makes it an error);
- ``eval`` holds its folder's lock from the start, and merges with (or refuses) the results already there;
- ``experiment`` refuses unknown ``--parts`` and a report folder of other settings (``--overwrite`` replaces);
- SIGTERM stops a run as Ctrl-C does: one message, exit 143, the same command resumes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from cli_checks import cli, cli_error, refuse_model_loads
from comalite.cli import main
from comalite.data.io import read_dialogues
from comalite.data.writers import write_dialogues
from comalite.records import Dialogue, Turn

QUESTION = ("--question", "How many objects are there?")
SHORT = ("--set", "writer.max_answer_tokens=3")  # the tiny-smoke writer, a few tokens per answer: plumbing


def smoke(out: Path, *sets: str) -> list[str]:
    """``--preset tiny-smoke --set out_dir=out --set ...`` as command-line arguments."""
    return ["--preset", "tiny-smoke", "--set", f"out_dir={out}", *(a for s in sets for a in ("--set", s))]


@pytest.fixture
def images(data_root, tmp_path) -> Path:
    """``tmp_path/images``: three of ShapesWorld's stage-1 images, ``a.png``, ``c.png``, ``d.png``, and a 0-byte
    ``b.png`` between them."""
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((data_root / "images" / "stage1").glob("*.png"))[:3]
    for name, source in zip(("a.png", "c.png", "d.png"), sources):
        shutil.copy(source, folder / name)
    (folder / "b.png").write_bytes(b"")
    return folder


def stage1_data(images: Path, out: Path, *extra: str) -> list[str]:
    return ["stage1-data", "--preset", "tiny-smoke", *SHORT, *QUESTION, "--images", str(images), "--out", str(out),
            *extra]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ----------------------------------------------------------------------------- stage1-data: nothing lost


def test_an_unreadable_image_is_skipped_listed_and_not_retried(capsys, images, tmp_path, monkeypatch):
    """Was: one 0-byte image among good ones ended the run with an error and no file at all."""
    out = tmp_path / "stage1.jsonl"
    printed = cli(capsys, *stage1_data(images, out), code=0)[0]
    assert "3 dialogues, 3 new" in printed
    assert f"1 unreadable images skipped now, 0 listed earlier not retried: see {out}.skipped" in printed
    assert [d.image for d in read_dialogues(out, images)] == [str(images / n) for n in ("a.png", "c.png", "d.png")]
    [listed] = lines(Path(f"{out}.skipped"))
    path, reason = listed.split("\t")
    assert path == str(images / "b.png") and reason.startswith("cannot read this image (")
    # The rerun leaves the listed image out: nothing to do, no model loads, nothing changes.
    before = out.read_bytes(), Path(f"{out}.skipped").read_bytes()
    with monkeypatch.context() as patched:
        refuse_model_loads(patched)
        printed = cli(capsys, *stage1_data(images, out), code=0)[0]
    assert "3 dialogues, 0 new" in printed and "0 unreadable images skipped now, 1 listed earlier not retried" in printed
    assert (out.read_bytes(), Path(f"{out}.skipped").read_bytes()) == before
    # --retry-skipped tries it again; still unreadable, it stays listed once.
    printed = cli(capsys, *stage1_data(images, out, "--retry-skipped"), code=0)[0]
    assert "1 unreadable images skipped now" in printed and len(lines(Path(f"{out}.skipped"))) == 1


def test_writer_strict_stops_at_an_unreadable_image_and_keeps_the_dialogues_before_it(capsys, images, tmp_path):
    out = tmp_path / "stage1.jsonl"
    message = cli_error(capsys, *stage1_data(images, out, "--set", "writer.strict=true"))
    assert message.startswith(f"{images / 'b.png'}: cannot read this image (")
    assert f"the 1 dialogue(s) written before it are kept in {out}" in message
    assert [d.image for d in read_dialogues(out, images)] == [str(images / "a.png")]
    assert not Path(f"{out}.skipped").exists()


def test_each_dialogue_is_on_disk_as_soon_as_it_is_written(tiny_home, data_root, tmp_path, monkeypatch):
    """Was: the file was written every 50 images, so a run stopped before that kept nothing."""
    import comalite.stage1_data as dialogues
    from comalite.config import load_config

    folder = data_root / "images" / "stage1"
    out = tmp_path / "stage1.jsonl"
    cfg = load_config("tiny-smoke", ["writer.max_answer_tokens=3"])
    real, calls = dialogues.generate_dialogue, []

    def stopped_at_the_third(backbone, image, writer, **kw):
        calls.append(image)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, or a crash) while the third dialogue is written
        return real(backbone, image, writer, **kw)

    monkeypatch.setattr(dialogues, "generate_dialogue", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        dialogues.build_stage1_data(cfg, images=folder, out=out, limit=4, questions=[QUESTION[1]])
    assert [d.image for d in read_dialogues(out, folder)] == calls[:2]
    calls.clear()
    monkeypatch.setattr(dialogues, "generate_dialogue", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    report = dialogues.build_stage1_data(cfg, images=folder, out=out, limit=4, questions=[QUESTION[1]])
    assert (report.new, report.dialogues, len(calls)) == (2, 4, 2)  # the same command goes on after them
    written = [d.image for d in read_dialogues(out, folder)]
    assert len(set(written)) == 4 and written[2:] == calls


def test_a_torn_last_line_is_dropped_with_a_warning_and_its_image_written_again(tiny_home, images, tmp_path,
                                                                                 monkeypatch, caplog):
    """Was: the half-written line of a killed run made the resume fail with 'not valid JSON'."""
    import comalite.stage1_data as dialogues
    from comalite.config import load_config

    (images / "b.png").unlink()
    out = tmp_path / "stage1.jsonl"
    done = Dialogue((Turn("What is it?", "a shape"),), str(images / "a.png"))
    write_dialogues([done], out, images)
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"image": "c.png", "text": "", "turns": [{"q": "What')  # killed mid-line
    generated = []

    def fake(backbone, image, writer, questions=None):
        generated.append(image)
        return Dialogue((Turn("What is it?", "a shape"),), image, meta={"answers": 1, "answers_cut": 0,
                                                                         "questions_cut": 0})

    monkeypatch.setattr(dialogues, "load_backbone", lambda *a, **k: types.SimpleNamespace(eval=lambda: None))
    monkeypatch.setattr(dialogues, "generate_dialogue", fake)
    with caplog.at_level(logging.WARNING, logger="comalite.stage1_data"):
        report = dialogues.build_stage1_data(load_config("tiny-smoke"), images=images, out=out)
    assert f"{out}: its last line is unfinished" in caplog.text
    assert generated == [str(images / "c.png"), str(images / "d.png")] and report.dialogues == 3
    assert out.read_bytes().startswith(whole)
    assert [d.image for d in read_dialogues(out, images)] == [str(images / n) for n in ("a.png", "c.png", "d.png")]


# ----------------------------------------------------------------------------- eval: locked, merged or refused


class FakeEmbedder:
    """Stands in for a model: deterministic unit vectors from each input's key and a ``version``."""

    def __init__(self, name: str, version: str = "1"):
        self.name, self.fingerprint = name, f"fake-{name}-{version}"

    def embed(self, inputs):
        rows = [np.random.default_rng(zlib.crc32(repr((self.fingerprint, x.key())).encode())).normal(size=8)
                for x in inputs]
        return np.array([r / np.linalg.norm(r) for r in rows], dtype=np.float32)


@pytest.fixture
def fake_models(monkeypatch, tiny_home):
    """``eval --models`` gets ``FakeEmbedder``s (version from ``versions[name]``); returns the names loaded."""
    loaded, versions = [], {}
    monkeypatch.setattr("comalite.pipeline.embedding_model",
                        lambda cfg, name: loaded.append(name) or FakeEmbedder(name, versions.get(name, "1")))
    return types.SimpleNamespace(loaded=loaded, versions=versions)


EVAL = ("eval.datasets=SW-Object,SW-T2I", "eval.max_queries=8")
AT_CHANCE = pytest.mark.filterwarnings("ignore:.*within noise of chance")  # random vectors: of course


def test_a_second_eval_into_a_busy_folder_is_refused_at_once(capsys, tmp_path, tiny_home, no_model_load):
    """Was: refused only after loading (and training) its models, or not at all when the first had finished."""
    from comalite.runs import run_lock

    with run_lock(tmp_path / "eval"):
        message = cli_error(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "base")
    assert message.startswith(f"{tmp_path / 'eval'} is in use by process {os.getpid()}: wait for it to finish")
    assert not (tmp_path / "eval" / "results.json").exists()


@AT_CHANCE
def test_evals_of_other_models_into_one_folder_merge(capsys, tmp_path, fake_models):
    """Was: the second eval's results.json and results.md replaced the first's."""
    cli(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "one,two", code=0)
    first = json.loads((tmp_path / "eval" / "results.json").read_text())
    fake_models.versions["two"] = "2"  # "two" retrained: its column is replaced
    printed = cli(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "two,three", code=0)[0]
    merged = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert merged["models"] == ["one", "two", "three"]
    assert merged["scores"]["one"] == first["scores"]["one"] and merged["details"]["one"] == first["details"]["one"]
    assert merged["fingerprints"] == {"one": "fake-one-1", "two": "fake-two-2", "three": "fake-three-1"}
    assert merged["details"]["two"]["SW-Object"]["ranks"] != first["details"]["two"]["SW-Object"]["ranks"]
    header = "| dataset | meta-task | split | queries | candidates (min/mean/max) | chance | one | two | three |"
    assert header in (tmp_path / "eval" / "results.md").read_text() and header in printed


@AT_CHANCE
def test_an_eval_of_other_datasets_is_refused_before_any_model_loads_and_overwrite_replaces(capsys, tmp_path,
                                                                                           fake_models):
    """Was: silently replaced by a table of other datasets (and other models)."""
    cli(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "one", code=0)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "eval").glob("results.*")}
    fake_models.loaded.clear()
    other = ("eval.datasets=SW-Object", "eval.max_queries=8")
    message = cli_error(capsys, "eval", *smoke(tmp_path, *other), "--models", "two")
    assert message.startswith(f"{tmp_path / 'eval' / 'results.json'} holds an evaluation of other datasets or "
                              "sampling")
    assert "datasets: SW-Object, SW-T2I -> SW-Object" in message and "pass --overwrite to replace" in message
    message = cli_error(capsys, "eval", *smoke(tmp_path, "eval.datasets=SW-Object,SW-T2I", "eval.max_queries=6"),
                        "--models", "two")
    assert "sampling.limit: 8 -> 6" in message
    assert fake_models.loaded == []  # refused before any model loads
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").glob("results.*")} == saved
    cli(capsys, "eval", *smoke(tmp_path, *other), "--models", "two", "--overwrite", code=0)
    replaced = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert replaced["models"] == ["two"] and [d["name"] for d in replaced["datasets"]] == ["SW-Object"]



@AT_CHANCE
def test_an_eval_that_rescores_every_saved_model_replaces_it_on_other_datasets(capsys, tmp_path, fake_models):
    """Was: after a rebuilt evaluation set, ``comalite demo`` refused its own run folder (its saved table was
    of the old set), and its --overwrite retrains every stage: re-scoring every model keeps nothing old."""
    cli(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "one,two", code=0)
    other = ("eval.datasets=SW-Object", "eval.max_queries=8")
    assert "holds an evaluation of other datasets" in cli_error(capsys, "eval", *smoke(tmp_path, *other),
                                                                "--models", "two")  # "one" would be kept
    cli(capsys, "eval", *smoke(tmp_path, *other), "--models", "two,one", code=0)
    replaced = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert replaced["models"] == ["two", "one"] and [d["name"] for d in replaced["datasets"]] == ["SW-Object"]

def test_a_dataset_whose_meta_task_changed_is_refused_before_any_model_loads(capsys, tmp_path, fake_models):
    """Was: the early check compared only the query counts, so a dataset described as another meta-task (or
    split) was refused only after every model had been evaluated, and nothing was saved."""
    from comalite.errors import RunConflictError
    from comalite.eval.report import check_saved

    cli(capsys, "eval", *smoke(tmp_path, *EVAL), "--models", "one", code=0)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    rows = {r["name"]: {k: r[k] for k in ("meta_task", "split", "source", "n_queries")} for r in saved["datasets"]}
    check_saved(tmp_path / "eval", rows, saved["sampling"])  # the same description: accepted
    name = next(iter(rows))
    rows[name] = {**rows[name], "meta_task": "vqa" if rows[name]["meta_task"] != "vqa" else "retrieval"}
    with pytest.raises(RunConflictError, match=f"holds an evaluation of other datasets or sampling.*\n  {name}: "):
        check_saved(tmp_path / "eval", rows, saved["sampling"])


# ----------------------------------------------------------------------------- experiment: its --out guarded


def test_experiment_refuses_unknown_parts_before_any_work(capsys, tmp_path, tiny_home, no_model_load):
    """Was: accepted, and an empty report replaced the one in --out."""
    message = cli_error(capsys, "experiment", *smoke(tmp_path), "--out", str(tmp_path / "report"),
                        "--parts", "budget,nosuch")
    assert message == "--parts budget,nosuch: unknown part 'nosuch'; choose from budget, pairs, transfer, ablations, compute\n"
    assert not (tmp_path / "report").exists()


def test_experiment_onto_a_report_of_other_settings_is_refused_unless_overwrite(capsys, tmp_path, tiny_home,
                                                                              no_model_load, monkeypatch):
    """Was: ``experiment --out <a 71 KB report> --parts nosuch`` replaced it with 783 bytes."""
    import comalite.experiment

    report = tmp_path / "report"
    report.mkdir()
    meta = {"preset": "tiny-smoke", "overrides": [f"out_dir={tmp_path}"], "parts": ["budget"],
            "seeds": list(range(8)), "budgets": [], "base": {}}  # the default seeds: only the parts differ
    (report / "results.json").write_text(json.dumps({"meta": meta, "summary": [], "runs": []}))
    (report / "results.md").write_text("the earlier report\n")
    before = {p.name: p.read_bytes() for p in report.iterdir() if p.name != ".lock"}
    message = cli_error(capsys, "experiment", *smoke(tmp_path), "--out", str(report), "--parts", "compute")
    assert message.startswith(f"{report} holds a report made with other settings:\n  parts: ['budget'] -> "
                              "['compute']\nEither give another --out, or pass --overwrite")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"models": []}))  # an evaluation's, not a report
    message = cli_error(capsys, "experiment", *smoke(tmp_path), "--out", str(tmp_path / "eval"))
    assert message.startswith(f"{tmp_path / 'eval' / 'results.json'} is not a report of `comalite experiment`")
    assert {p.name: p.read_bytes() for p in report.iterdir() if p.name != ".lock"} == before
    ran = []
    monkeypatch.setattr(comalite.experiment, "_run_experiment", lambda *a, **k: ran.append(k["parts"]) or
                        (report / "results.md").write_text("the new report\n"))
    assert "the new report" in cli(capsys, "experiment", *smoke(tmp_path), "--out", str(report), "--parts",
                                   "compute", "--overwrite", code=0)[0]
    assert ran == [("compute",)]


# ----------------------------------------------------------------------------- SIGTERM


RUN = ("stage1.train.steps=6", "stage1.train.save_every=2", "stage1.train.batch_size=4", "stage1.heldout=4")


def test_sigterm_stops_a_run_like_ctrl_c_and_the_same_command_resumes(tmp_path, tiny_home):
    """Was: exit 143 (-15) without a word."""
    log = tmp_path / "stage1.log"
    process = subprocess.Popen([sys.executable, "-m", "comalite.cli", "stage1", *smoke(tmp_path, *RUN)],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "stage1" / "checkpoint.pt").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGSTOP)
        assert process.poll() is None and not (tmp_path / "stage1" / "result.json").exists(), \
            "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143
    err = log.read_text()
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "comalite stage1: interrupted; the same command resumes from the last checkpoint"
    main(["stage1", *smoke(tmp_path, *RUN)])  # the same command, again
    history = json.loads((tmp_path / "stage1" / "history.json").read_text())
    assert len(history) == 6 and (tmp_path / "stage1" / "result.json").exists()
