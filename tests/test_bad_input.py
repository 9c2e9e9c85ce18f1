"""Bad input, answered: every row of docs/bad_input.md has a test here that fails if its answer regresses.

A user's mistake ends in one message, ``comalite <cmd>: error: ...``, exit code 2 and no traceback
(``--debug`` shows it); the message names the file, row or setting. Mistakes that only depend on settings and
folders are answered before any model loads (the ``no_model_load`` fixture fails the test otherwise).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cli_checks import cli, cli_error, refuse_model_loads
from comalite.cli import main
from comalite.data.images import MAX_IMAGE_PIXELS, load_image
from comalite.data.io import read_dialogues, read_eval_dataset, read_train_subset
from comalite.errors import ConfigError, DataFormatError
from comalite.records import EmbedInput

IMG = "<|image_1|>\nRepresent the given image."

# ----------------------------------------------------------------------------- helpers


def smoke(out: Path, *sets: str) -> list[str]:
    """``--preset tiny-smoke --set out_dir=out --set ...`` as command-line arguments."""
    return ["--preset", "tiny-smoke", "--set", f"out_dir={out}", *(a for s in sets for a in ("--set", s))]


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (its pixel data is empty)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


class Folder:
    """A small local MMEB: ``images/``, ``train/ImageNet_1K`` (MMEB-train), ``eval/ImageNet-1K`` (MMEB-eval)
    and a stage-1 ``dialogues.jsonl``; each test spoils one row with ``train``/``eval``/``dialogues``."""

    def __init__(self, root: Path):
        self.root, self.images = root, root / "images"
        self.images.mkdir(parents=True)
        for name, colour in (("red.png", "red"), ("blue.png", "blue")):
            Image.new("RGB", (28, 28), colour).save(self.images / name)
        self.train_file = root / "train" / "ImageNet_1K" / "original-00000-of-00001.parquet"
        self.eval_file = root / "eval" / "ImageNet-1K" / "test-00000-of-00001.parquet"
        self.dialogue_file = root / "dialogues.jsonl"
        self.train({})
        self.eval({})
        self.dialogues({})

    def train(self, bad: dict, drop: str = "") -> Path:
        """Row 1 of the train file updated with ``bad``; ``drop`` removes a column from every row."""
        rows = [{"qry": IMG, "qry_image_path": "images/red.png", "pos_text": "red", "pos_image_path": ""},
                {"qry": IMG, "qry_image_path": "images/blue.png", "pos_text": "blue", "pos_image_path": ""}]
        rows[1].update(bad)
        return self._parquet(self.train_file, rows, drop)

    def eval(self, bad: dict, drop: str = "") -> Path:
        """Row 1 of the eval file updated with ``bad``; ``drop`` removes a column from every row."""
        rows = [{"qry_text": IMG, "qry_img_path": f"images/{c}.png", "tgt_text": [c, "green"],
                 "tgt_img_path": ["", ""]} for c in ("red", "blue")]
        rows[1].update(bad)
        return self._parquet(self.eval_file, rows, drop)

    def dialogues(self, bad: dict | None = None, raw: bytes = b"") -> Path:
        """A good line 1, then ``bad`` (a record merged into a good one; None: none), then the ``raw`` bytes."""
        good = {"image": "images/red.png", "text": "", "turns": [{"q": "Which colour?", "a": "red"}]}
        lines = [json.dumps(good)] + ([json.dumps({**good, **bad})] if bad is not None else [])
        self.dialogue_file.write_bytes("\n".join(lines).encode() + b"\n" + raw)
        return self.dialogue_file

    @staticmethod
    def _parquet(path: Path, rows: list[dict], drop: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != drop} for r in rows]), path)
        return path


@pytest.fixture
def mmeb(tmp_path) -> Folder:
    return Folder(tmp_path / "mmeb")


def check_data(capsys, mmeb: Folder, code: int = 1) -> str:
    """``comalite check-data <train folder>``'s table (exit 1 when a dataset has a problem)."""
    return cli(capsys, "check-data", str(mmeb.root / "train"), "--images", str(mmeb.root), code=code)[0]


def eval_error(capsys, mmeb: Folder, *sets: str) -> str:
    return cli_error(capsys, "eval", *smoke(mmeb.root / "run", f"eval.root={mmeb.root / 'eval'}",
                                             f"eval.image_root={mmeb.root}", *sets), "--models", "base")


def stage1_error(capsys, mmeb: Folder, *sets: str) -> str:
    return cli_error(capsys, "stage1", *smoke(mmeb.root / "run", f"stage1.dialogues={mmeb.dialogue_file}",
                                               f"data.image_root={mmeb.root}", *sets))


# ----------------------------------------------------------------------------- rows 1, 4-7: data files


@pytest.mark.parametrize("bad, drop, field, problem", [
    ({"qry_image_path": "images/missing.png"}, "", "qry_image_path", "image 'images/missing.png' not found"),  # 1
    ({}, "pos_text", "pos_text", "column missing"),                                                         # 4
    ({"qry_image_path": ""}, "", "qry", "text holds <|image_1|> but the row has no image path"),            # 7
], ids=["missing-image", "missing-column", "placeholder-without-image"])
def test_a_bad_train_row_is_named_by_check_data(capsys, mmeb, bad, drop, field, problem):
    path = mmeb.train(bad, drop)
    row = 0 if drop else 1
    table = check_data(capsys, mmeb)
    assert f"{path}, row {row}, field '{field}': {problem}" in table
    assert "1 datasets, 1 with a problem" in table
    with pytest.raises(DataFormatError, match=f"row {row}, field '{field}'"):  # what stage 2 reads with
        read_train_subset(path.parent, mmeb.root)


def test_stage2_reads_its_train_files_before_stage1_trains(capsys, mmeb, tiny_home, no_model_load):
    path = mmeb.train({"qry_image_path": "images/missing.png"})
    message = cli_error(capsys, "stage2", *smoke(mmeb.root / "run", "data.source=mmeb", "stage1.heldout=1",
                                                 f"data.root={mmeb.root / 'train'}", f"data.image_root={mmeb.root}",
                                                 f"stage1.dialogues={mmeb.dialogue_file}"))
    assert message.startswith(f"{path}, row 1, field 'qry_image_path'")


@pytest.mark.parametrize("bad, drop, field, problem", [
    ({"qry_img_path": "images/missing.png"}, "", "qry_img_path", "image 'images/missing.png' not found"),  # 1
    ({}, "tgt_img_path", "tgt_img_path", "column missing"),                                                 # 4
    ({"tgt_text": [], "tgt_img_path": []}, "", "tgt_text", "empty candidate list"),                         # 5
    ({"tgt_text": ["", "green"]}, "", "tgt_text[0]", "empty candidate: neither text nor image"),            # 6
    ({"qry_img_path": ""}, "", "qry_text", "text holds <|image_1|> but the row has no image path"),         # 7
], ids=["missing-image", "missing-column", "empty-candidates", "empty-ground-truth", "placeholder-without-image"])
def test_a_bad_eval_row_is_one_message_before_any_model_loads(capsys, tiny_home, mmeb, no_model_load, bad, drop,
                                                               field, problem):
    path = mmeb.eval(bad, drop)
    row = 0 if drop else 1
    assert eval_error(capsys, mmeb).startswith(f"{path}, row {row}, field '{field}': {problem}")


@pytest.mark.parametrize("bad, raw, where, problem", [
    ({"image": "images/missing.png"}, b"", "line 2, field 'image'", "image 'images/missing.png' not found"),  # 1
    ({"image": "", "text": "<|image_1|> a red square"}, b"", "line 2, field 'text'", "holds <|image_1|>"),    # 7
    (None, b"{not json\n", "line 2", "not valid JSON"),                                                        # 10
    (None, b'{"turns": [{"q": "caf\xe9?", "a": "x"}]}\n', "line 2", "not UTF-8 text"),                        # 10
    ({"turns": []}, b"", "line 2, field 'turns'", "missing or empty"),                                         # 10
    ({"turns": [{"q": "Which colour?", "a": " "}]}, b"", "line 2, field 'turns[0].a'", "the answer is empty"),  # 10
], ids=["missing-image", "placeholder-without-image", "not-json", "not-utf8", "no-turns", "empty-answer"])
def test_a_bad_dialogue_line_is_one_message_before_any_model_loads(capsys, tiny_home, mmeb, no_model_load, bad,
                                                                    raw, where, problem):
    path = mmeb.dialogues(bad, raw)
    assert stage1_error(capsys, mmeb).startswith(f"{path}, {where}: {problem}")


# ----------------------------------------------------------------------------- rows 2, 3, 20: image files


def _truncated_png(path: Path) -> None:
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("make, cause", [
    (lambda p: p.write_text("a text file, renamed"), "cannot identify image file"),
    (_truncated_png, "image file is truncated"),
    (lambda p: p.write_bytes(b""), "cannot identify image file"),
], ids=["text-file-renamed", "png-cut-in-half", "empty-file"])
def test_an_unreadable_image_names_the_file_and_the_fix(tmp_path, make, cause):
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(DataFormatError) as e:
        load_image(path)
    assert str(e.value).startswith(f"{path}: cannot read this image ({cause}")
    assert "Re-extract or re-download it, or drop the rows that use it." in str(e.value)


@pytest.mark.parametrize("side", [10_000, 20_000])  # over comalite's limit; over PIL's own (a different error)
def test_an_absurdly_large_image_is_refused_before_decoding(tmp_path, recwarn, side):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(side, side))  # a few bytes: decoding it would take side * side * 3 bytes
    with pytest.raises(DataFormatError) as e:
        load_image(path, origin="train.parquet, row 7, field 'qry_image_path'")
    message = str(e.value)
    assert message.startswith(f"{path} (used by train.parquet, row 7, field 'qry_image_path'): ")
    assert f"over the {MAX_IMAGE_PIXELS:,} " in message and "Shrink the image" in message
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


@pytest.mark.parametrize("max_pixels", [12544, 802816])  # tiny-smoke's budget; qwen2-vl-2b's (1024 tokens)
def test_a_big_photo_is_shrunk_to_the_token_budget(tmp_path, tiny_checkpoint, max_pixels):
    from comalite.processor import VLProcessor
    from comalite.sequence import Example, add_image

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (200, 40, 30)).save(path)  # 12 Mpixel, as a phone takes them
    processor = VLProcessor.from_pretrained(tiny_checkpoint, max_pixels=max_pixels, min_pixels=3136)
    example = Example([], [])
    add_image(example, processor, str(path))
    tokens = processor.n_image_tokens(example.image_grid_thw)
    assert 0.5 * max_pixels // 784 < tokens <= max_pixels // 784  # one LLM token per 28 x 28 pixels
    assert len(example.input_ids) == tokens + 2                     # <|vision_start|> ... <|vision_end|>


def test_readers_record_where_each_input_came_from(mmeb):
    (pair,) = read_train_subset(mmeb.train({"pos_image_path": "images/red.png"}), mmeb.root)[1:]
    assert pair.query.origin == f"{mmeb.train_file}, row 1, field 'qry_image_path'"
    assert pair.positive.origin == f"{mmeb.train_file}, row 1, field 'pos_image_path'"
    query = read_eval_dataset(mmeb.root / "eval", "ImageNet-1K", image_root=mmeb.root).queries[1]
    assert query.query.origin == f"{mmeb.eval_file}, row 1, field 'qry_img_path'"
    assert query.candidates[0].origin == ""  # text only: nothing that can fail to load
    assert [d.origin for d in read_dialogues(mmeb.dialogues({}), mmeb.root)] == [
        f"{mmeb.dialogue_file}, line {n}" for n in (1, 2)]
    # Provenance is not identity: the same input from two rows is one input (encoded once).
    assert pair.query == EmbedInput(pair.query.text, pair.query.image) and pair.query.key() == (IMG, pair.query.image)


def test_add_image_names_the_row_that_uses_an_unreadable_image(tmp_path, tiny_checkpoint):
    from comalite.processor import VLProcessor
    from comalite.sequence import Example, add_image

    path = tmp_path / "broken.png"
    _truncated_png(path)
    with pytest.raises(DataFormatError, match=r"broken.png \(used by d.jsonl, line 3\): cannot read this image"):
        add_image(Example([], []), VLProcessor.from_pretrained(tiny_checkpoint), str(path), origin="d.jsonl, line 3")


@pytest.fixture(scope="module")
def unreadable_image_in_training(tiny_home, tmp_path_factory) -> tuple[Folder, str]:
    """``comalite stage1`` on dialogues whose first (training) dialogue's image is a text file: its stderr."""
    mmeb = Folder(tmp_path_factory.mktemp("unreadable") / "mmeb")
    (mmeb.images / "broken.png").write_text("not an image")
    mmeb.dialogue_file.write_text("\n".join(json.dumps({"image": f"images/{name}.png", "turns": [
        {"q": "Which colour?", "a": name}]}) for name in ("broken", "red")) + "\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(["stage1", *smoke(mmeb.root / "run", f"stage1.dialogues={mmeb.dialogue_file}",
                               f"data.image_root={mmeb.root}", "stage1.heldout=1", "stage1.train.steps=1",
                               "stage1.train.batch_size=1")])
    assert exit_info.value.code == 2 and "Traceback" not in err.getvalue()
    return mmeb, err.getvalue()


def test_an_unreadable_image_met_in_training_is_one_message(unreadable_image_in_training):
    mmeb, err = unreadable_image_in_training
    assert f"comalite stage1: error: {mmeb.images / 'broken.png'}" in err and "cannot read this image" in err


def test_an_unreadable_image_met_in_training_names_its_dialogue_line(unreadable_image_in_training):
    mmeb, err = unreadable_image_in_training
    assert f"(used by {mmeb.dialogue_file}, line 1)" in err


# ----------------------------------------------------------------------------- rows 8, 9: dataset folders


def test_an_unknown_dataset_name_is_answered_before_any_model_loads(capsys, tiny_home, mmeb, no_model_load):
    message = eval_error(capsys, mmeb, "eval.datasets=ImageNet_1K")  # the train spelling of ImageNet-1K
    assert message.startswith(f"{mmeb.root / 'eval' / 'ImageNet_1K'}: no such dataset folder. "
                              "Did you mean 'ImageNet-1K'?")
    shutil.copytree(mmeb.eval_file.parent, mmeb.root / "eval" / "MyOwnData")  # present, but not registered
    message = eval_error(capsys, mmeb, "eval.datasets=ImageNet-1K,MyOwnData")
    assert message.startswith("unknown evaluation dataset 'MyOwnData': not an MMEB or ShapesWorld name")
    assert "--set eval.meta_tasks=MyOwnData=classification" in message
    assert f"{mmeb.root / 'eval' / 'MyOwnData'}/dataset.json" in message


def test_hidden_and_stray_folders_are_not_datasets(capsys, mmeb):
    from comalite.config import load_config
    from comalite.data.sources import eval_datasets, train_subsets

    for kind, split in (("train", "original"), ("eval", "test")):
        for stray in (".cache", "images", ".ipynb_checkpoints"):
            (mmeb.root / kind / stray).mkdir()
        (mmeb.root / kind / ".cache" / f"{split}-00000.parquet").write_text("a download in progress")
        (mmeb.root / kind / "images" / "red.png").write_bytes((mmeb.images / "red.png").read_bytes())
    table = check_data(capsys, mmeb, code=0)
    assert "| ImageNet_1K | train | 2 |" in table and "1 datasets, 0 with a problem" in table
    cfg = load_config("tiny-smoke", [f"eval.root={mmeb.root / 'eval'}", f"eval.image_root={mmeb.root}",
                                     "data.source=mmeb", f"data.root={mmeb.root / 'train'}"])
    assert [d.name for d in eval_datasets(cfg)] == ["ImageNet-1K"]
    assert train_subsets(cfg) == ("ImageNet_1K",)


# ----------------------------------------------------------------------------- rows 11, 12, 19: settings


@pytest.mark.parametrize("setting, message", [
    ("stage1.maskk=false", "--set stage1.maskk: unknown setting (did you mean 'stage1.mask'?); known in stage1: "),
    ("stage1.train.lr=abc", "--set stage1.train.lr: expected a number, got 'abc'"),
    ("stage1.train.steps=2.5", "--set stage1.train.steps: expected a whole number, got 2.5"),
    ("stage1.mask=2", "--set stage1.mask: expected true or false, got 2"),
    ("stage1=3", "--set stage1 is a section; give a mapping, not 3"),
    ("stage2.temperature=0", "stage2.temperature=0.0: must be > 0"),
    ("stage1.supervise=everything", "stage1.supervise='everything': choose one of answers, all"),
    ("stage2.train.grad_accum=4", "stage2.train.grad_accum=4: stage 2 does not accumulate"),
    ("data.language=3", "data.language=3: choose one of 1, 2"),
], ids=["unknown", "not-a-number", "fractional-steps", "non-boolean", "section", "out-of-range", "not-a-choice",
        "stage2-accumulation", "unknown-language"])
def test_a_bad_setting_is_one_message_before_anything_runs(capsys, no_model_load, setting, message):
    for command in ("config", "stage1"):
        assert cli_error(capsys, command, "--preset", "tiny-smoke", "--set", setting).startswith(message)


def test_an_unknown_preset_lists_the_known_ones(capsys):
    assert cli_error(capsys, "config", "--preset", "qwen2-vl-2B").startswith(
        "no preset 'qwen2-vl-2B'; known presets: qwen2-vl-2b, qwen2.5-vl-3b, qwen2.5-vl-7b-writer, tiny, tiny-experiment, tiny-long, tiny-reference, tiny-smoke (or a .yaml path)")


def test_stage2_with_init_backbone_runs_the_contrastive_only_baseline(capsys, tmp_path, monkeypatch):
    import comalite.pipeline

    def ensure_stage(cfg, stage, overwrite=False):  # records which stage the command asked for
        (tmp_path / "result.json").write_text(json.dumps({"metrics": {"stage": stage}}))
        return tmp_path

    monkeypatch.setattr(comalite.pipeline, "ensure_stage", ensure_stage)
    for init, stage in (("backbone", "contrastive_only"), ("stage1", "stage2")):
        main(["stage2", "--preset", "tiny-smoke", "--set", f"stage2.init={init}"])
        assert json.loads(capsys.readouterr().out) == {"stage": stage}


def test_debug_shows_the_traceback(capsys, monkeypatch):
    with pytest.raises(ConfigError, match="unknown setting"):
        main(["--debug", "config", "--set", "stage1.maskk=false"])
    monkeypatch.setenv("COMALITE_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown setting"):
        main(["config", "--set", "stage1.maskk=false"])


@pytest.mark.parametrize("argv, message", [
    (["stage1"], "data.source is 'mmeb' but data.root is not set: --set data.root="),
    (["stage2"], "data.source is 'mmeb' but data.root is not set: --set data.root="),
    (["demo"], "data.source is 'mmeb' but data.root is not set: --set data.root="),
    (["eval", "--models", "base"], "eval.root is not set: --set eval.root="),
    (["stage1", "--set", "data.root=/no/such/MMEB-train"], "data.root=/no/such/MMEB-train does not exist"),
    # The README's eval command: evaluation reads eval.root only, so it must not ask for the training data.
    (["eval", "--set", "eval.root=/no/such/MMEB-eval", "--models", "base"], "/no/such/MMEB-eval is not a folder"),
], ids=["stage1", "stage2", "demo", "eval", "missing-root", "eval-needs-no-train-data"])
def test_the_real_recipe_asks_for_its_data_first(capsys, tmp_path, no_model_load, argv, message):
    command, *rest = argv
    assert cli_error(capsys, command, "--preset", "qwen2-vl-2b", "--set", f"out_dir={tmp_path}",
                     *rest).startswith(message)


# ----------------------------------------------------------------------------- rows 13, 14: checkpoints, outputs


@pytest.mark.parametrize("backbone, message", [
    ("{tmp}/no-such-checkpoint", "checkpoint folder {tmp}/no-such-checkpoint does not exist: fix model.backbone"),
    ("{tmp}", "{tmp} has no config.json: not a transformers checkpoint folder."),
], ids=["missing-folder", "no-config-json"])
def test_a_checkpoint_folder_that_is_not_one_is_answered_before_loading(capsys, tmp_path, tiny_home, no_model_load,
                                                                         backbone, message):
    argv = smoke(tmp_path / "run", f"model.backbone={backbone.format(tmp=tmp_path)}")
    assert cli_error(capsys, "stage1", *argv).startswith(message.format(tmp=tmp_path))


def test_an_unreachable_hub_id_says_how_to_work_offline(capsys, tmp_path, tiny_home):
    message = cli_error(capsys, "stage1", *smoke(tmp_path / "run", "model.backbone=nobody/no-such-vlm"))
    assert message.startswith("could not load checkpoint 'nobody/no-such-vlm': it is not a local folder")
    assert "--set model.backbone=/some/folder" in message


def test_a_run_that_failed_to_start_does_not_block_the_fixed_rerun(capsys, tmp_path, tiny_config):
    from comalite.runs import claim, stage_record

    cli_error(capsys, "stage1", *smoke(tmp_path / "run", "model.backbone=nobody/no-such-vlm"))
    claim(tmp_path / "run" / "stage1", stage_record(tiny_config(), "stage1"))  # the fixed backbone


@pytest.mark.parametrize("argv", [
    ["stage1", *smoke(Path("{file}") / "run")],
    ["eval", *smoke(Path("{file}") / "run"), "--models", "base"],
    ["stage1-data", "--preset", "tiny-smoke", "--images", "{images}", "--out", "{file}/stage1.jsonl"],
], ids=["stage1", "eval", "stage1-data"])
def test_an_output_folder_that_cannot_be_written_is_answered_before_loading(capsys, tmp_path, tiny_home,
                                                                             no_model_load, argv):
    blocker = tmp_path / "a-file"  # a file where a folder should be: unwritable even for root
    blocker.write_text("in the way")
    (tmp_path / "images").mkdir()
    message = cli_error(capsys, *(a.format(file=blocker, images=tmp_path / "images") for a in argv))
    assert message.startswith("cannot write into the ")
    assert str(blocker) in message and "writable" in message


def test_stage1_data_without_its_image_folder_is_answered_before_loading(capsys, tmp_path, no_model_load):
    message = cli_error(capsys, "stage1-data", "--preset", "tiny-smoke", "--images", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "d.jsonl"))
    assert message.startswith(f"--images {tmp_path / 'nope'}: no such folder.")


def test_eval_of_a_folder_that_is_not_a_result_is_one_message(capsys, tiny_home, mmeb, no_model_load):
    message = cli_error(capsys, "eval", *smoke(mmeb.root / "run", f"eval.root={mmeb.root / 'eval'}",
                                               f"eval.image_root={mmeb.root}"), "--models", str(mmeb.images))
    assert message.startswith(f"{mmeb.images}/result.json not found")


# ----------------------------------------------------------------------------- rows 15-18: runs


RUN = ("stage1.train.steps=6", "stage1.train.save_every=2", "stage1.train.batch_size=4", "stage1.heldout=4")
"""The run of rows 15-18: a few steps, a checkpoint every two, few held-out answers to score (seconds)."""


def losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "stage1" / "history.json").read_text())]


@pytest.fixture(scope="module")
def straight(tiny_home, tmp_path_factory) -> Path:
    """An uninterrupted run of ``RUN`` through the command line (in this process)."""
    out = tmp_path_factory.mktemp("straight")
    main(["stage1", *smoke(out, *RUN)])
    return out


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(capsys, tmp_path, tiny_home, monkeypatch):
    import comalite.objective

    calls = []
    real = comalite.objective.lm_loss

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(comalite.objective, "lm_loss", nan_at_step_3)
    checkpoint = tmp_path / "stage1" / "checkpoint.pt"
    message = cli_error(capsys, "stage1", *smoke(tmp_path, *RUN, "stage1.train.save_every=1"))
    assert message.startswith(f"stage 1: loss nan / gradient norm nan at step 3; the last good checkpoint "
                              f"({checkpoint}, step 2) is kept.")
    assert "--overwrite" in message
    state = torch.load(checkpoint, weights_only=False)
    assert state["step"] == 2 and len(state["history"]) == 2
    assert not (tmp_path / "stage1" / "result.json").exists()


def test_a_learning_rate_that_diverges_stops_the_run(capsys, tmp_path, tiny_home):
    message = cli_error(capsys, "stage1", *smoke(tmp_path, *RUN, "stage1.train.lr=1e6"))
    assert message.startswith("stage 1: loss ")
    assert "at step 1; no checkpoint had been written yet. Lower the learning rate" in message
    assert not (tmp_path / "stage1" / "result.json").exists()


def _start(out: Path) -> subprocess.Popen:
    """``comalite stage1 ... RUN`` in a process of its own, stderr into ``<out>.log``."""
    argv = [sys.executable, "-m", "comalite.cli", "stage1", *smoke(out, *RUN)]
    # SIGINT back to its default: a shell's background job (nohup ... &) starts with it ignored, and Python
    # then never turns it into KeyboardInterrupt; a user's Ctrl-C always arrives with the default.
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out.with_suffix(".log").open("w"),
                            env=dict(os.environ), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop_at_first_checkpoint(processes: dict[Path, subprocess.Popen]) -> threading.Thread:
    """A thread that SIGSTOPs each run as soon as its first checkpoint exists (it then holds its folder's lock)."""
    def watch():
        pending = dict(processes)
        while pending:
            for out, process in list(pending.items()):
                if (out / "stage1" / "checkpoint.pt").exists() or process.poll() is not None:
                    process.send_signal(signal.SIGSTOP)
                    del pending[out]
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_interrupted_run_resumes_to_the_same_losses(capsys, tmp_path, request):
    runs = {signal.SIGINT: tmp_path / "SIGINT", signal.SIGKILL: tmp_path / "SIGKILL"}
    request.getfixturevalue("tiny_home")
    processes = {out: _start(out) for out in runs.values()}
    try:
        watcher = _stop_at_first_checkpoint(processes)
        straight = request.getfixturevalue("straight")  # the uninterrupted run, while they start
        watcher.join(timeout=300)
        for out, process in processes.items():
            assert process.poll() is None and not (out / "stage1" / "result.json").exists(), \
                f"{out.name}: the run ended before it could be interrupted"
        # Row 17 with a real second process: the stopped run holds its folder.
        busy = runs[signal.SIGINT]
        message = cli_error(capsys, "stage1", *smoke(busy, *RUN))
        assert message.startswith(f"{busy / 'stage1'} is in use by process {processes[busy].pid}: ")
        for sig, out in runs.items():
            processes[out].send_signal(sig)
            processes[out].send_signal(signal.SIGCONT)
            processes[out].wait(timeout=120)
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    assert [processes[out].returncode for out in runs.values()] == [130, -signal.SIGKILL]
    err = runs[signal.SIGINT].with_suffix(".log").read_text()
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("comalite stage1: interrupted; the same command resumes from the last "
                                            "checkpoint")
    assert len(losses(straight)) == 6
    for out in runs.values():
        main(["stage1", *smoke(out, *RUN)])  # the same command, again
        assert losses(out) == pytest.approx(losses(straight), abs=1e-6)


def test_a_second_run_into_a_busy_folder_is_refused_at_once(capsys, tmp_path, tiny_home, no_model_load):
    from comalite.runs import run_lock

    with run_lock(tmp_path / "stage1"):
        message = cli_error(capsys, "stage1", *smoke(tmp_path, *RUN))
    assert message.startswith(f"{tmp_path / 'stage1'} is in use by process {os.getpid()}: wait for it to finish")


def _refused_rerun(capsys, out: Path) -> str:
    """``RUN`` with the mask off into ``out`` (which holds ``RUN``): the refusal; nothing of the run is lost."""
    before = {p.name: p.read_bytes() for p in (out / "stage1").iterdir() if p.is_file() and p.name != ".lock"}
    message = cli_error(capsys, "stage1", *smoke(out, *RUN, "stage1.mask=false"))
    assert {p: (out / "stage1" / p).read_bytes() for p in before} == before
    return message


def test_a_rerun_with_other_settings_is_refused_and_overwrite_retrains(capsys, tmp_path, straight, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    with monkeypatch.context() as patched:
        refuse_model_loads(patched)
        message = _refused_rerun(capsys, out)
    assert message.startswith(f"{out / 'stage1'} holds a run made from other settings or inputs:")
    assert "settings.stage1.mask: True -> False" in message
    assert "--set out_dir=..." in message and "pass --overwrite to delete that run" in message
    main(["stage1", *smoke(out, *RUN, "stage1.mask=false"), "--overwrite"])
    record = json.loads((out / "stage1" / "run.json").read_text())
    assert record["settings"]["stage1"]["mask"] is False and len(losses(out)) == 6


def test_a_refused_rerun_lists_only_the_settings_that_changed(capsys, tmp_path, straight):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    changed = [line.strip() for line in _refused_rerun(capsys, out).splitlines() if "->" in line]
    assert [line for line in changed if not line.startswith(("fingerprint:", "settings.stage1.mask:"))] == []
