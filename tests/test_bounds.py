"""Bounded inputs, and the last tracebacks turned into one-line errors.

Every sequence has a ceiling (``stage1.max_length``, ``model.embed_max_length``): an over-long dialogue or input is
refused naming its file and line (or cut, counted in the log, when ``*too_long=truncate`` says so), and the sizes
that decide memory (``model.n_compress``, the lengths, the image budget against them) are checked with the other
settings, before any model loads. The rest: mistakes that used to end in a traceback (a 1x5000 image, an empty
eval file, a NaN learning rate, a LoRA target that does not exist, a full disk, ...) now end in one message.
"""
from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cli_checks import cli, cli_error
from comalite.atomic import atomic_write
from comalite.config import Stage1Config, load_config
from comalite.data.images import load_image
from comalite.data.io import read_dialogues, read_eval_dataset, read_train_subset
from comalite.errors import ComaliteError, DataFormatError, InputError, SearchIndexError
from comalite.records import EmbedInput

IMG = "<|image_1|>\nRepresent the given image."


def smoke(out: Path, *sets: str) -> list[str]:
    return ["--preset", "tiny-smoke", "--set", f"out_dir={out}", *(a for s in sets for a in ("--set", s))]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from comalite.processor import VLProcessor

    cfg = load_config("tiny-smoke").model
    return VLProcessor.from_pretrained(tiny_checkpoint, n_compress=cfg.n_compress, min_pixels=cfg.min_pixels,
                                       max_pixels=cfg.max_pixels)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (28, 28), "red").save(folder / "red.png")
    return folder


def write_dialogues(path: Path, turns_per_line: list[list[tuple[str, str]]]) -> Path:
    lines = [json.dumps({"image": "images/red.png", "text": "", "turns": [{"q": q, "a": a} for q, a in turns]})
             for turns in turns_per_line]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- sequence lengths


def test_every_preset_bounds_its_sequences():
    for preset, stage1, embed in (("tiny", 1024, 512), ("tiny-smoke", 1024, 512), ("qwen2-vl-2b", 8192, 4096),
                                  ("qwen2.5-vl-3b", 8192, 4096)):
        cfg = load_config(preset)
        assert (cfg.stage1.max_length, cfg.model.embed_max_length) == (stage1, embed), preset
        assert (cfg.stage1.too_long, cfg.model.embed_too_long) == ("refuse", "refuse")


def test_an_overlong_dialogue_is_refused_naming_its_line(tmp_path, images, processor):
    from comalite.sequence import dialogue_examples

    long_question = " ".join(["word"] * 10_000)  # the 10,000-word question that got the process killed (21.8 GB)
    path = write_dialogues(tmp_path / "d.jsonl", [[("Which colour?", "red")], [(long_question, "red")]])
    dialogues = read_dialogues(path, tmp_path)
    s1 = Stage1Config(max_length=1024)
    assert len(dialogue_examples(processor, dialogues[:1], s1)[0].input_ids) < 100
    with pytest.raises(DataFormatError) as e:
        dialogue_examples(processor, dialogues, s1)
    message = str(e.value)
    assert message.startswith(f"{path}, line 2: ") and "over stage1.max_length=1,024" in message
    assert "raise stage1.max_length, or set stage1.too_long=truncate" in message
    assert "\n" not in message


def test_a_dialogue_of_500_turns_is_cut_to_the_turns_that_fit_and_counted(tmp_path, images, processor, caplog):
    from comalite.sequence import TRUNCATED, dialogue_examples

    path = write_dialogues(tmp_path / "d.jsonl", [[("Which colour is the shape?", "red")] * 500])
    dialogues = read_dialogues(path, tmp_path)
    with pytest.raises(DataFormatError, match=r"line 1: .* tokens .*over stage1.max_length=1,024"):
        dialogue_examples(processor, dialogues, Stage1Config(max_length=1024))
    TRUNCATED["stage1.max_length"].clear()
    with caplog.at_level(logging.WARNING, logger="comalite.sequence"):
        for _ in range(2):  # a dialogue met again (the next epoch) is counted and logged once
            (ex,) = dialogue_examples(processor, dialogues, Stage1Config(max_length=1024, too_long="truncate"))
    assert 900 < len(ex.input_ids) <= 1024
    assert ex.roles[-1] == 3  # ends on a whole answer (its <|im_end|>)
    assert TRUNCATED["stage1.max_length"] == {f"{path}, line 1"}
    (record,) = [r for r in caplog.records if "stage1.too_long=truncate" in r.getMessage()]
    assert f"{path}, line 1: " in record.getMessage() and "of 500 turns" in record.getMessage()
    # Not even the first turn fits: refused, truncate or not.
    with pytest.raises(DataFormatError, match="Not even its first turn fits: shorten it or raise stage1.max_length"):
        dialogue_examples(processor, dialogues, Stage1Config(max_length=40, too_long="truncate"))


def test_an_overlong_dialogue_is_one_message_before_training(capsys, tmp_path, images, tiny_home):
    path = write_dialogues(tmp_path / "d.jsonl", [[("Which colour?", "red")]] * 3 + [[("q " * 3000, "red")]])
    message = cli_error(capsys, "stage1", *smoke(tmp_path / "run", f"stage1.dialogues={path}", "stage1.heldout=1",
                                                 f"data.image_root={tmp_path}", "stage1.train.batch_size=2"))
    assert message.startswith(f"{path}, line 4: ") and "over stage1.max_length=1,024" in message


def test_an_overlong_embedding_input_is_refused_or_its_text_cut(processor, images):
    from comalite.embedding import _examples
    from comalite.sequence import COMPRESS, TRUNCATED, embed_example

    text = "<|image_1|>\n" + "many words " * 3000
    item = EmbedInput(text, str(images / "red.png"), origin="train.parquet, row 3, field 'qry_image_path'")
    with pytest.raises(DataFormatError) as e:
        embed_example(processor, item, max_length=512)
    assert str(e.value).startswith("train.parquet, row 3, field 'qry_image_path': ")
    assert "over model.embed_max_length=512" in str(e.value) and "model.embed_too_long=truncate" in str(e.value)
    with pytest.raises(DataFormatError, match=r"^the input 'x x x"):  # a text without a file names its start
        embed_example(processor, EmbedInput("x " * 3000), max_length=512)
    TRUNCATED["model.embed_max_length"].clear()
    ex = embed_example(processor, item, max_length=512, too_long="truncate")
    k = len(processor.compress_ids)
    assert len(ex.input_ids) == 512 and ex.roles[-k:] == [COMPRESS] * k
    full = embed_example(processor, item)  # no bound: the image span and the text's start are kept as they were
    assert ex.input_ids[:-k] == full.input_ids[:512 - k] and ex.image_grid_thw is not None
    assert len(TRUNCATED["model.embed_max_length"]) == 1
    # Stage 2 and evaluation embed through _examples, which takes the bound from the model's settings.
    backbone = SimpleNamespace(processor=processor, config=load_config("tiny-smoke").model)
    with pytest.raises(DataFormatError, match="over model.embed_max_length=512"):
        _examples(backbone, [EmbedInput("fine"), item])


@pytest.mark.parametrize("setting, message", [
    ("model.n_compress=20000", "model.n_compress=20000: at most 1024 (the paper uses 1-64). Every compression token"),
    ("stage1.max_length=100000", "stage1.max_length=100000: must be between 1 and 32,768 tokens"),
    ("model.embed_max_length=20", "model.embed_max_length=20: an image at model.max_pixels=12544 takes up to 18 "
                                  "tokens and model.n_compress=8 more"),
    ("stage1.too_long=cut", "stage1.too_long='cut': choose one of refuse, truncate"),
    ("data.image_size=100", "data.image_size=100: ShapesWorld renders images whose side is a positive multiple of 28"),
    ("data.n_candidates=1", "data.n_candidates=1: must be at least 2"),
    ("eval.max_queries=-5", "eval.max_queries=-5: must be at least 0 (0 = no limit)"),
    ("stage1.train.lr=nan", "stage1.train.lr=nan: must be a finite number"),
    ("stage2.train.warmup_ratio=2", "stage2.train.warmup_ratio=2.0: must be between 0 and 1"),
    ("model.lora_targets=nosuch_proj", "model.lora_targets='nosuch_proj': 'nosuch_proj' is not a projection of the "
                                       "language model; choose from q_proj, k_proj, v_proj, o_proj, gate_proj"),
    ("model.lora_targets=q_proj,v_prj", "model.lora_targets='q_proj,v_prj': 'v_prj' is not a projection of the "
                                        "language model (did you mean 'v_proj'?)"),
    ("eval.datasets=SW-Colors,SW-Colors", "eval.datasets names 'SW-Colors' more than once: give each name once"),
], ids=["n-compress", "max-length", "image-does-not-fit", "too-long-choice", "image-size", "one-candidate",
        "negative-max-queries", "nan-lr", "warmup-ratio", "lora-target", "lora-target-typo", "dataset-twice"])
def test_a_bad_size_is_one_message_before_any_model_loads(capsys, tmp_path, no_model_load, setting, message):
    for command in ("config", "stage1"):
        error = cli_error(capsys, command, *smoke(tmp_path / "run", setting))
        assert error.startswith(message) and "\n" not in error.strip(), error


def test_eval_models_and_experiment_numbers_are_checked_before_any_model_loads(capsys, tmp_path, no_model_load):
    run = smoke(tmp_path / "run")
    assert cli_error(capsys, "eval", *run, "--models", "").startswith("--models '': give at least one name")
    assert cli_error(capsys, "eval", *run, "--models", "base,stage1,base").startswith(
        "--models 'base,stage1,base' names base more than once")
    assert cli_error(capsys, "experiment", *run, "--seeds", "abc").startswith(
        "--seeds 'abc': 'abc' is not a whole number >= 0")
    assert cli_error(capsys, "experiment", *run, "--seeds", "").startswith("--seeds '': give at least one")
    assert cli_error(capsys, "experiment", *run, "--seeds", "0,0").startswith("--seeds '0,0' repeats a number")
    assert cli_error(capsys, "experiment", *run, "--budgets", "10,-3").startswith(
        "--budgets '10,-3': '-3' is not a whole number >= 1")
    for odd in ("--5", "\u00b2"):  # str.isdigit() says yes to these, int() does not
        assert cli_error(capsys, "experiment", *run, f"--seeds={odd}").startswith(f"--seeds {odd!r}: {odd!r} is not")


# ----------------------------------------------------------------------------- images, files, folders


def test_an_image_too_elongated_for_the_processor_is_refused_naming_it(tmp_path, processor):
    from comalite.sequence import embed_example

    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 5000), "red").save(path)
    origin = "test.parquet, row 2, field 'qry_img_path'"
    with pytest.raises(DataFormatError) as e:
        embed_example(processor, EmbedInput(IMG, str(path), origin=origin))
    assert str(e.value).startswith(f"{path} (used by {origin}): 1x5000 pixels, an aspect ratio of 5,000:1, over "
                                   "the 200:1 Qwen2-VL's image processor takes. Crop or pad the image")
    Image.new("RGB", (2000, 10), "red").save(path)  # 200:1 is still taken
    assert load_image(path).size == (2000, 10)


def test_an_eval_file_without_rows_is_a_problem_not_a_traceback(capsys, tmp_path):
    folder = tmp_path / "eval" / "Empty"
    folder.mkdir(parents=True)
    file = folder / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"qry_text": pa.array([], pa.string()), "qry_img_path": pa.array([], pa.string()),
                             "tgt_text": pa.array([], pa.list_(pa.string())),
                             "tgt_img_path": pa.array([], pa.list_(pa.string()))}), file)
    table = cli(capsys, "check-data", str(tmp_path / "eval"), code=1)[0]
    assert f"{file}: no rows, so nothing to evaluate." in table and "1 datasets, 1 with a problem" in table
    with pytest.raises(DataFormatError, match="no rows"):
        read_eval_dataset(tmp_path / "eval", "Empty")


def test_a_full_disk_while_saving_names_the_file_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1}, path)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ComaliteError) as e:
        atomic_write(path, lambda tmp: torch.save({"step": 2}, tmp))
    assert str(e.value).startswith(f"{path}: could not be written (") and "disk full?" in str(e.value)
    assert isinstance(e.value, OSError)  # callers that can do without a file (caches) still catch it
    monkeypatch.undo()
    assert torch.load(path) == {"step": 1}  # the earlier checkpoint, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left

    def no_space(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ComaliteError, match=r"results.json: could not be written \(No space left on device\): "
                                            r"disk full\?.*nothing was written"):
        atomic_write(tmp_path / "results.json", no_space)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_encode_of_none_names_the_mistake():
    from comalite.embedding import EmbeddingModel

    model = object.__new__(EmbeddingModel)  # the items are checked before the model is used
    with pytest.raises(InputError, match=r"encode takes a list of items .*not None"):
        model.encode(None)
    with pytest.raises(InputError, match=r"item 1: cannot embed a NoneType"):
        model.encode(["a text", None])


@pytest.mark.parametrize("spoil, what", [
    (lambda data: data[: len(data) // 2], "not an image index, or one cut short"),
    (lambda data: b"", "not an image index: an empty file"),
], ids=["truncated", "empty"])
def test_a_spoilt_index_file_names_the_file(tmp_path, spoil, what):
    from comalite.search import ImageIndex

    path = tmp_path / "photos-index.npz"
    ImageIndex(["a.png", "b.png"], np.eye(2, 4, dtype=np.float32), "fingerprint").save(path)
    assert len(ImageIndex.load(path)) == 2
    path.write_bytes(spoil(path.read_bytes()))
    with pytest.raises(SearchIndexError) as e:
        ImageIndex.load(path)
    assert str(e.value).startswith(f"{path}: {what} (") and "ImageIndex.build(...).save(path)" in str(e.value)


def test_export_refuses_a_base_folder_that_is_not_there(capsys, tmp_path, no_model_load):
    message = cli_error(capsys, "export", str(tmp_path / "result"), "--out", str(tmp_path / "out"),
                        "--base", "/nonexistent")
    assert message.startswith("--base /nonexistent: no such folder.")
    (tmp_path / "empty").mkdir()
    assert cli_error(capsys, "export", str(tmp_path / "result"), "--out", str(tmp_path / "out"), "--base",
                     str(tmp_path / "empty")).startswith(f"--base {tmp_path / 'empty'}: not a checkpoint folder")


def test_a_malformed_preset_is_one_line_naming_the_line_and_column(capsys, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny\nmodel:\n  n_compress: [8\nstage1:\n  mask: true\n")
    message = cli_error(capsys, "config", "--preset", str(path))
    assert message.startswith(f"{path}, line 4, column 7: not valid YAML (") and message.count("\n") <= 1


# ----------------------------------------------------------------------------- warnings at read time


def test_odd_candidate_lists_and_identical_rows_are_warned_once_per_file(tmp_path, images, caplog):
    folder = tmp_path / "eval" / "Odd"
    folder.mkdir(parents=True)
    file = folder / "test.parquet"
    rows = [{"qry_text": "q1", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]},           # one
            {"qry_text": "q2", "qry_img_path": "", "tgt_text": ["a", "b", "a"], "tgt_img_path": ["", "", ""]},  # truth
            {"qry_text": "q3", "qry_img_path": "", "tgt_text": ["a", "b", "b"], "tgt_img_path": ["", "", ""]},  # dup
            {"qry_text": "q4", "qry_img_path": "", "tgt_text": ["a", "c", "c"], "tgt_img_path": ["", "", ""]},  # dup
            {"qry_text": "q5", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]}]       # fine
    pq.write_table(pa.Table.from_pylist(rows), file)
    with caplog.at_level(logging.WARNING, logger="comalite.data.io"):
        assert len(read_eval_dataset(tmp_path / "eval", "Odd").queries) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert f"{file}: 1 of 5 rows read have a single candidate" in "\n".join(messages)
    assert f"{file}: 1 of 5 rows read repeat the ground truth" in "\n".join(messages)
    assert f"{file}: 2 of 5 rows read hold the same candidate twice" in "\n".join(messages)
    assert len(messages) == 3

    caplog.clear()
    train = tmp_path / "train" / "Same" / "original.parquet"
    train.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"qry": "q", "qry_image_path": "", "pos_text": "p",
                                          "pos_image_path": ""}] * 4), train)
    path = write_dialogues(tmp_path / "d.jsonl", [[("Which colour?", "red")]] * 3)
    with caplog.at_level(logging.WARNING, logger="comalite.data.io"):
        assert len(read_train_subset(train.parent, tmp_path)) == 4
        assert len(read_dialogues(path, tmp_path)) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{train}: all 4 rows are identical; check how the file was written",
        f"{path}: all 3 dialogues are identical; check how the file was written"]


def test_shapesworld_reads_without_warnings(data_root, caplog):
    from comalite.data.sources import eval_datasets, stage1_dialogues, train_pairs

    cfg = load_config("tiny-smoke")
    with caplog.at_level(logging.WARNING, logger="comalite.data.io"):
        stage1_dialogues(cfg), train_pairs(cfg), eval_datasets(cfg)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
