"""Run records and the evaluation cache see the data by content: images that changed, even to the same size
with their modification time put back, are never mistaken for the ones a run or an embedding was made from."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from comalite import fingerprint as fp
from comalite.errors import RunConflictError
from comalite.eval import evaluate_dataset
from comalite.records import EmbedInput, EvalDataset, EvalQuery
from comalite.runs import RUN_FILE, stage_record


def rewrite_keeping_size_and_mtime(path, colour) -> None:
    """Rewrite an image in place with other pixels: same byte size, same inode, modification time put back."""
    before = os.stat(path)
    with Image.open(path) as old:
        size, mode = old.size, old.mode
    Image.new(mode, size, colour).save(path, compress_level=0)  # stored, not compressed: size set by the pixels
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def blacken(paths) -> None:
    for path in paths:
        with Image.open(path) as old:
            size, mode = old.size, old.mode
        Image.new(mode, size).save(path)


# ----------------------------------------------------------------------------- content hashes


def test_remembered_hashes_are_rechecked_so_a_same_size_same_mtime_rewrite_is_found(tmp_path, monkeypatch):
    from comalite.fingerprint import ContentHashes, image_hashes

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), "red").save(paths[-1], compress_level=0)
    store = tmp_path / "hashes.json"
    first = image_hashes(paths, store=ContentHashes(store))
    assert len(set(first.values())) == 1 and set(json.loads(store.read_text())["files"]) == set(first)
    reads = []
    real = fp.content_hash
    monkeypatch.setattr(fp, "content_hash", lambda p: reads.append(p) or real(p))
    # Without a re-check budget the remembered hashes are used as they are: no file is read.
    assert image_hashes(paths, store=ContentHashes(store), recheck_bytes=0) == first and reads == []
    rewrite_keeping_size_and_mtime(paths[1], "blue")
    # Within the budget (the tiny presets' data) every remembered file is read again: the rewrite is found.
    second = image_hashes(paths, store=ContentHashes(store))
    assert second[str(paths[1])] != first[str(paths[1])]
    assert [second[str(p)] for p in (paths[0], paths[2])] == [first[str(paths[0])], first[str(paths[2])]]
    assert image_hashes(paths, store=ContentHashes(store), recheck_bytes=0) == second  # remembered anew


def test_a_sampled_recheck_that_finds_a_rewrite_reads_every_image_again(tmp_path):
    from comalite.fingerprint import ContentHashes, image_hashes

    paths = []
    for i in range(20):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (i, 0, 0)).save(paths[-1], compress_level=0)
    store = tmp_path / "hashes.json"
    first = image_hashes(paths, store=ContentHashes(store))
    for i, path in enumerate(paths):
        rewrite_keeping_size_and_mtime(path, (i, 255, 0))
    one_file = os.stat(paths[0]).st_size
    again = image_hashes(paths, store=ContentHashes(store), recheck_bytes=one_file)  # a sample of one file
    assert again == image_hashes(paths, verify_all=True) and not set(again.values()) & set(first.values())


# ----------------------------------------------------------------------------- the evaluation cache


class ColourEmbedder:
    """Embeds an image as its mean colour and a text by a table; records what it encodes."""

    name = fingerprint = "colour"
    TEXTS = {"q": [1.0, 0.0, 0.0], "b": [0.6, 0.8, 0.0]}

    def __init__(self):
        self.encoded: list[str] = []

    def embed(self, inputs):
        rows = []
        for item in inputs:
            self.encoded.append(item.image or item.text)
            if item.image:
                with Image.open(item.image) as im:
                    v = np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0) + 1e-3
            else:
                v = np.float32(self.TEXTS[item.text])
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)


def test_an_image_rewritten_to_the_same_size_and_mtime_misses_the_eval_cache(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(image, compress_level=0)
    data = EvalDataset("Img", [EvalQuery(EmbedInput("q"), (EmbedInput("", str(image)), EmbedInput("b")))])
    cache = tmp_path / "cache"
    first = evaluate_dataset(ColourEmbedder(), data, cache_dir=cache, progress=False)
    assert first["precision_at_1"] == 1.0  # the red ground truth beats "b"
    rewrite_keeping_size_and_mtime(image, "lime")  # now "b" is closer to the query
    embedder = ColourEmbedder()
    again = evaluate_dataset(embedder, data, cache_dir=cache, progress=False)
    assert str(image) in embedder.encoded  # a cache miss: the new pixels were embedded
    assert again["precision_at_1"] == 0.0 == evaluate_dataset(ColourEmbedder(), data, progress=False)["precision_at_1"]


def test_the_eval_cache_follows_content_not_the_folder(tmp_path):
    image = tmp_path / "a" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(image)
    copy = tmp_path / "b" / "a.png"
    shutil.copytree(image.parent, copy.parent)

    def data(path):
        return EvalDataset("Img", [EvalQuery(EmbedInput("q"), (EmbedInput("", str(path)), EmbedInput("b")))])

    evaluate_dataset(ColourEmbedder(), data(image), cache_dir=tmp_path / "cache", progress=False)
    embedder = ColourEmbedder()
    evaluate_dataset(embedder, data(copy), cache_dir=tmp_path / "cache", progress=False)
    assert embedder.encoded == []  # the same texts and pixels: nothing to encode


# ----------------------------------------------------------------------------- run records


def test_a_finished_stage1_is_not_reused_on_other_images_and_is_on_an_identical_copy(tiny_config, data_root,
                                                                                      tmp_path, monkeypatch):
    from cli_checks import refuse_model_loads
    from comalite.data.sources import stage1_dialogues
    from comalite.stage1 import run_stage1

    cfg = tiny_config("stage1.train.steps=2")
    out = run_stage1(cfg)
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    refuse_model_loads(monkeypatch)  # a refusal and a reuse are answered before any model loads

    copy = tmp_path / "images-copy"
    shutil.copytree(data_root / "images", copy)
    same = tiny_config("stage1.train.steps=2", f"data.image_root={copy}")
    assert run_stage1(same) == out  # the same pixels in another folder: the finished run is reused

    black = tiny_config("stage1.train.steps=2", f"data.image_root={copy}")
    blacken({d.image for d in stage1_dialogues(black) if d.image})
    with pytest.raises(RunConflictError) as refused:
        run_stage1(black)
    message = str(refused.value)
    assert "inputs.images.content: " in message and "--overwrite" in message
    assert f"image_root: {str((data_root / 'images').resolve())!r} -> {str(copy.resolve())!r}" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == kept
    record = json.loads((out / RUN_FILE).read_text())
    assert record["inputs"]["images"]["count"] == len({d.image for d in stage1_dialogues(cfg) if d.image}) > 0


def test_a_stage2_record_hashes_the_images_of_its_subsets(tiny_config, data_root, tmp_path):
    from comalite.data.sources import stage_images

    cfg = tiny_config("stage2.init=backbone")
    first = stage_record(cfg, "stage2")
    root, images = stage_images(cfg, "stage2")
    assert first["inputs"]["images"]["count"] == len(images) > 0 and all(p.startswith(str(root)) for p in images)
    copy = tmp_path / "images-copy"
    shutil.copytree(data_root / "images", copy)
    moved = tiny_config("stage2.init=backbone", f"data.image_root={copy}")
    assert stage_record(moved, "stage2")["fingerprint"] == first["fingerprint"]
    blacken(stage_images(moved, "stage2")[1][:1])
    assert stage_record(moved, "stage2")["inputs"]["images"] != first["inputs"]["images"]


def test_the_fingerprint_benchmark_runs_at_toy_size(bench, tmp_path):
    rows = bench("bench_fingerprint").main(["--tiny-root", "", "--jpegs", "12", "--jpeg-size", "64x48",
                                            "--out", str(tmp_path / "fingerprint.json")])
    assert [r["images"] for r in rows] == [12]
    assert json.loads((tmp_path / "fingerprint.json").read_text())["rows"] == rows


def test_a_trained_run_is_keyed_by_what_it_reads_not_by_the_eval_sets(tiny_config, data_root, tmp_path):
    """Rebuilt evaluation sets (or a rewritten manifest) keep every trained run; a changed training file does not."""
    copy = tmp_path / "data"
    shutil.copytree(data_root, copy)
    cfg = tiny_config(f"data.root={copy}", "stage2.init=backbone")
    before = {stage: stage_record(cfg, stage)["fingerprint"] for stage in ("stage1", "stage2")}
    for path in [copy / "manifest.json", *(copy / "eval").rglob("*.parquet")]:
        path.write_bytes(path.read_bytes() + b" ")
    assert {stage: stage_record(cfg, stage)["fingerprint"] for stage in ("stage1", "stage2")} == before
    dialogues = copy / "stage1" / "dialogues.jsonl"
    dialogues.write_text("".join(dialogues.read_text().splitlines(keepends=True)[:-1]))  # one dialogue fewer
    train = next((copy / "train").rglob("*.parquet"))
    table = pq.read_table(train)
    pq.write_table(table.slice(0, table.num_rows - 1), train)  # one row fewer
    after = {stage: stage_record(cfg, stage)["fingerprint"] for stage in ("stage1", "stage2")}
    assert after["stage1"] != before["stage1"] and after["stage2"] != before["stage2"]
