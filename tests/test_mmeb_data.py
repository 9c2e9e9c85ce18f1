"""Readers and writers of MMEB-schema files: round trips, the real HF layout, and every malformed case."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from comalite.data.images import load_image
from comalite.data.io import read_dialogues, read_eval_dataset, read_train_subset, sample_rows
from comalite.data.writers import write_dialogues, write_eval_dataset, write_train_subset
from comalite.errors import DataFormatError
from comalite.records import Dialogue, EmbedInput, Turn

IMG = "<|image_1|>\n"


@pytest.fixture
def images(tmp_path):
    """An image folder laid out like MMEB's unpacked images.zip: <root>/<Dataset>/<file>."""
    root = tmp_path / "eval_images"
    for name, color in (("a.jpg", "red"), ("b.jpg", "green"), ("c.jpg", "blue")):
        (root / "ImageNet-1K").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), color).save(root / "ImageNet-1K" / name)
    return root


def _abs(root, rel):
    return os.path.normpath(os.path.join(os.path.abspath(root), rel))


# ----------------------------------------------------------------------------- train


def test_train_round_trip_hf_layout(tmp_path, images):
    rows = [
        {"qry": f"{IMG}Represent the given image for classification", "qry_image_path": "ImageNet-1K/a.jpg",
         "pos_text": "goldfish", "pos_image_path": ""},
        {"qry": "Find me an everyday image that matches the given caption: a dog.", "qry_image_path": "",
         "pos_text": f"{IMG}Represent the given image.", "pos_image_path": "ImageNet-1K/b.jpg",
         "neg_text": f"{IMG}Represent the given image.", "neg_image_path": "ImageNet-1K/c.jpg"},
    ]
    folder = tmp_path / "MMEB-train" / "ImageNet_1K"
    write_train_subset(rows, folder / "original-00000-of-00001.parquet")
    pairs = read_train_subset(folder, images)
    assert len(pairs) == 2
    first, second = pairs
    assert first.subset == "ImageNet_1K"  # the folder names the subset, as on the hub
    assert first.query == EmbedInput(f"{IMG}Represent the given image for classification",
                                     _abs(images, "ImageNet-1K/a.jpg"))
    assert first.positive == EmbedInput("goldfish", None)
    assert first.negative is None  # both neg_* empty
    assert second.query.image is None
    assert second.positive.image == _abs(images, "ImageNet-1K/b.jpg")
    assert second.negative == EmbedInput(f"{IMG}Represent the given image.", _abs(images, "ImageNet-1K/c.jpg"))
    # Reading the shard file directly names the subset after its folder too; a plain file after its stem.
    assert read_train_subset(folder / "original-00000-of-00001.parquet", images)[0].subset == "ImageNet_1K"
    write_train_subset(rows, tmp_path / "mine.parquet")
    assert read_train_subset(tmp_path / "mine.parquet", images)[0].subset == "mine"
    assert read_train_subset(tmp_path / "mine.parquet", images, subset="X")[0].subset == "X"


def test_train_limit_spans_sorted_shards_and_split(tmp_path, images):
    folder = tmp_path / "Sub"
    row = lambda k: {"qry": f"q{k}", "qry_image_path": "", "pos_text": f"p{k}", "pos_image_path": ""}
    write_train_subset([row(2), row(3)], folder / "original-00001-of-00002.parquet")
    write_train_subset([row(0), row(1)], folder / "original-00000-of-00002.parquet")
    write_train_subset([row(9)], folder / "diverse_instruction-00000-of-00001.parquet")
    assert [p.query.text for p in read_train_subset(folder, images)] == ["q0", "q1", "q2", "q3"]
    assert [p.query.text for p in read_train_subset(folder, images, limit=3)] == ["q0", "q1", "q2"]
    assert read_train_subset(folder, images, limit=0) == []
    assert [p.query.text for p in read_train_subset(folder, images, split="diverse_instruction")] == ["q9"]


def test_train_jsonl(tmp_path, images):
    path = tmp_path / "Sub.jsonl"
    path.write_text(json.dumps({"qry": "q", "qry_image_path": "", "pos_text": "p",
                                "pos_image_path": "ImageNet-1K/a.jpg"}) + "\n\n")
    (pair,) = read_train_subset(path, images)
    assert pair.subset == "Sub" and pair.positive.image == _abs(images, "ImageNet-1K/a.jpg")


@pytest.mark.parametrize("row, row_index, field", [
    ({"qry": "q", "qry_image_path": "", "pos_image_path": ""}, 0, "pos_text"),  # missing column
    ({"qry": "", "qry_image_path": "", "pos_text": "p", "pos_image_path": ""}, 1, "qry"),  # empty query
    ({"qry": "q", "qry_image_path": "ImageNet-1K/zzz.jpg", "pos_text": "p", "pos_image_path": ""}, 1,
     "qry_image_path"),  # missing image
    ({"qry": f"{IMG}q", "qry_image_path": "", "pos_text": "p", "pos_image_path": ""}, 1, "qry"),  # no image
])
def test_train_malformed(tmp_path, images, row, row_index, field):
    path = tmp_path / "bad.jsonl"
    good = {"qry": "q", "qry_image_path": "", "pos_text": "p", "pos_image_path": ""}
    lines = [row] if row_index == 0 else [good, row]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataFormatError) as e:
        read_train_subset(path, images)
    message = str(e.value)
    assert str(path) in message and f"row {row_index}" in message and f"'{field}'" in message


def test_train_missing_path_and_empty_folder(tmp_path, images):
    with pytest.raises(DataFormatError, match="no such file or folder"):
        read_train_subset(tmp_path / "nope", images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no 'original\\*.parquet'"):
        read_train_subset(tmp_path / "empty", images)


def test_writer_rejects_unknown_or_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="unknown columns"):
        write_train_subset([{"qry": "q", "qry_image_path": "", "pos_text": "p", "pos_image_path": "",
                             "pos": "typo"}], tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="missing column 'pos_text'"):
        write_train_subset([{"qry": "q", "qry_image_path": "", "pos_image_path": ""}], tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "d" / "original.parquet"
    row = {"qry": "q", "qry_image_path": "", "pos_text": "p", "pos_image_path": ""}
    write_train_subset([row], path)
    write_train_subset([row, row], path)
    assert pq.read_table(path).num_rows == 2
    assert os.listdir(path.parent) == ["original.parquet"]  # no temporary file left behind
    assert pq.read_table(path).column_names == ["qry", "qry_image_path", "pos_text", "pos_image_path",
                                                "neg_text", "neg_image_path"]


# ----------------------------------------------------------------------------- eval


def _eval_rows():
    return [
        {"qry_text": f"{IMG}Represent the given image for classification", "qry_img_path": "ImageNet-1K/a.jpg",
         "tgt_text": ["goldfish", "tench", "shark"], "tgt_img_path": ["", "", ""]},
        {"qry_text": "Find me an everyday image that matches the given caption: a fish.", "qry_img_path": "",
         "tgt_text": [f"{IMG}Represent the given image.", ""],
         "tgt_img_path": ["ImageNet-1K/b.jpg", "ImageNet-1K/c.jpg"]},
    ]


def test_eval_real_layout(tmp_path, images):
    root = tmp_path / "MMEB-eval"
    write_eval_dataset(_eval_rows(), root / "ImageNet-1K" / "test-00000-of-00001.parquet")
    ds = read_eval_dataset(root, "ImageNet-1K", image_root=images)
    assert ds.name == "ImageNet-1K" and ds.source == root / "ImageNet-1K"
    first, second = ds.queries
    assert first.query == EmbedInput(f"{IMG}Represent the given image for classification",
                                     _abs(images, "ImageNet-1K/a.jpg"))
    assert [c.text for c in first.candidates] == ["goldfish", "tench", "shark"]
    assert all(c.image is None for c in first.candidates)
    assert second.query.image is None
    assert second.candidates == (EmbedInput(f"{IMG}Represent the given image.", _abs(images, "ImageNet-1K/b.jpg")),
                                 EmbedInput("", _abs(images, "ImageNet-1K/c.jpg")))
    # Without image_root, image paths are relative to root.
    write_eval_dataset(_eval_rows()[:1], tmp_path / "ImageNet-1K" / "test.parquet")
    (tmp_path / "ImageNet-1K" / "a.jpg").write_bytes((images / "ImageNet-1K" / "a.jpg").read_bytes())
    ds = read_eval_dataset(tmp_path, "ImageNet-1K")
    assert ds.queries[0].query.image == _abs(tmp_path, "ImageNet-1K/a.jpg")


def test_eval_jsonl_and_null_paths(tmp_path, images):
    folder = tmp_path / "VQA"
    folder.mkdir()
    (folder / "test.jsonl").write_text(json.dumps(
        {"qry_text": "q?", "qry_img_path": None, "tgt_text": ["yes", "no"], "tgt_img_path": [None, ""]}) + "\n")
    (q,) = read_eval_dataset(tmp_path, "VQA", image_root=images).queries
    assert q.query == EmbedInput("q?", None)
    assert q.candidates == (EmbedInput("yes", None), EmbedInput("no", None))


def _bad(rows_override):
    rows = _eval_rows() + [dict(_eval_rows()[0])]
    rows[2].update(rows_override)
    return rows


@pytest.mark.parametrize("override, field", [
    ({"tgt_text": [], "tgt_img_path": []}, "tgt_text"),  # empty candidate list
    ({"tgt_img_path": ["", ""]}, "tgt_img_path"),  # lengths differ (3 texts)
    ({"qry_img_path": "ImageNet-1K/missing.jpg"}, "qry_img_path"),  # missing query image
    ({"tgt_text": ["x", "y", "z"], "tgt_img_path": ["", "ImageNet-1K/gone.jpg", ""]}, "tgt_img_path[1]"),
    ({"tgt_text": ["x", "", "z"]}, "tgt_text[1]"),  # a candidate with neither text nor image
    ({"qry_text": "", "qry_img_path": ""}, "qry_text"),  # empty query
])
def test_eval_malformed_row(tmp_path, images, override, field):
    path = tmp_path / "Bad" / "test-00000-of-00001.parquet"
    write_eval_dataset(_bad(override), path)
    with pytest.raises(DataFormatError) as e:
        read_eval_dataset(tmp_path, "Bad", image_root=images)
    message = str(e.value)
    assert str(path) in message and "row 2" in message and f"'{field}'" in message


def test_eval_missing_column(tmp_path, images):
    path = tmp_path / "Bad" / "test.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"qry_text": ["q"], "qry_img_path": [""], "tgt_text": [["a"]]}), path)
    with pytest.raises(DataFormatError) as e:
        read_eval_dataset(tmp_path, "Bad", image_root=images)
    assert str(path) in str(e.value) and "row 0" in str(e.value) and "'tgt_img_path'" in str(e.value)
    assert "column missing" in str(e.value)


def test_eval_missing_dataset_lists_names(tmp_path):
    for name in ("ImageNet-1K", "N24News"):
        write_eval_dataset(_eval_rows()[:0], tmp_path / name / "test.parquet")
    with pytest.raises(DataFormatError) as e:
        read_eval_dataset(tmp_path, "ImageNet_1K")
    message = str(e.value)
    assert "ImageNet_1K" in message and "Did you mean 'ImageNet-1K'?" in message and "N24News" in message
    with pytest.raises(DataFormatError, match="no such dataset folder"):
        read_eval_dataset(tmp_path / "nowhere", "X")


def test_eval_unreadable_parquet(tmp_path):
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "test.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match="not a readable parquet file"):
        read_eval_dataset(tmp_path, "X")


def test_sample_rows_seeded():
    assert sample_rows(5, None) == [0, 1, 2, 3, 4]
    assert sample_rows(5, 5) == [0, 1, 2, 3, 4] and sample_rows(5, 9) == [0, 1, 2, 3, 4]
    picked = sample_rows(1000, 10, seed=3)
    assert picked == sample_rows(1000, 10, seed=3)  # reproducible
    assert picked == sorted(picked) and len(set(picked)) == 10  # original order, no repeats
    assert picked != sample_rows(1000, 10, seed=4)
    with pytest.raises(ValueError):
        sample_rows(5, -1)


def test_eval_limit_reads_the_sampled_rows(tmp_path, images):
    rows = [{"qry_text": f"q{k}", "qry_img_path": "", "tgt_text": [f"a{k}"], "tgt_img_path": [""]}
            for k in range(20)]
    # A malformed row outside the sample is never read, so it cannot fail the sampled read.
    skipped = next(k for k in range(20) if k not in sample_rows(20, 4, seed=7))
    rows[skipped]["tgt_text"] = []
    write_eval_dataset(rows, tmp_path / "D" / "test.parquet")
    ds = read_eval_dataset(tmp_path, "D", image_root=images, limit=4, seed=7)
    assert [q.query.text for q in ds.queries] == [f"q{k}" for k in sample_rows(20, 4, seed=7)]
    assert ds.queries == read_eval_dataset(tmp_path, "D", image_root=images, limit=4, seed=7).queries


# ----------------------------------------------------------------------------- images and dialogues


def test_load_image(tmp_path):
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((0, 0)) == (1, 2, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for bad in ("broken.png", "absent.png"):
        with pytest.raises(DataFormatError) as e:
            load_image(tmp_path / bad)
        assert str(tmp_path / bad) in str(e.value) and "Re-extract" in str(e.value)


def test_dialogues_round_trip(tmp_path, images):
    dialogues = [
        Dialogue(turns=(Turn("Describe the image in detail.", "a red square."), Turn("How many?", "one")),
                 image=str(images / "ImageNet-1K" / "a.jpg")),
        Dialogue(turns=(Turn("What is it about?", "fish"),), text="A text-only sample for stage 0."),
    ]
    path = tmp_path / "stage1" / "dialogues.jsonl"
    write_dialogues(dialogues, path, images)
    first_line = json.loads(path.read_text().splitlines()[0])
    assert first_line == {"image": "ImageNet-1K/a.jpg", "text": "",
                          "turns": [{"q": "Describe the image in detail.", "a": "a red square."},
                                    {"q": "How many?", "a": "one"}]}
    back = read_dialogues(path, images)
    assert back[0] == Dialogue(turns=dialogues[0].turns, image=_abs(images, "ImageNet-1K/a.jpg"))
    assert back[1] == dialogues[1]
    with pytest.raises(ValueError, match="not under image_root"):
        write_dialogues([Dialogue(turns=(Turn("q", "a"),), image=str(tmp_path / "x.png"))], path, images)


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"image": "", "text": "t", "turns": []}), "'turns': missing or empty"),
    (json.dumps({"image": "", "text": "t", "turns": [{"q": "x"}]}), "each turn must be"),
    (json.dumps({"image": "ImageNet-1K/none.jpg", "turns": [{"q": "x", "a": "y"}]}), "not found"),
    (json.dumps({"image": "", "text": "", "turns": [{"q": "x", "a": "y"}]}), "neither image nor text"),
])
def test_dialogues_malformed(tmp_path, images, line, problem):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"image": "ImageNet-1K/a.jpg", "turns": [{"q": "x", "a": "y"}]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataFormatError) as e:
        read_dialogues(path, images)
    assert f"{path}, line 2" in str(e.value) and problem in str(e.value)
