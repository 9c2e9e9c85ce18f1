"""Read files in the MMEB schema (and the stage-1 dialogue jsonl); ``comalite.data.writers`` writes them.

The same readers load the real benchmark (TIGER-Lab/MMEB-train, TIGER-Lab/MMEB-eval) and ShapesWorld, so
a format bug shows up on both. Every malformed row raises ``DataFormatError`` naming the file, the row and
the field: a silently misread file would give chance-level scores instead of an error.

Layouts (as on the Hugging Face hub; images live in a separate folder, paths in files are relative to it):

    MMEB-train/<Subset>/original-00000-of-00001.parquet   qry, qry_image_path, pos_text, pos_image_path,
                                                          [neg_text, neg_image_path]
    MMEB-eval/<Dataset>/test-00000-of-00001.parquet       qry_text, qry_img_path, tgt_text: list,
                                                          tgt_img_path: list (candidate 0 is the truth),
                                                          [n_hard: int, candidates 1..n_hard are
                                                          near-copies of the truth; ShapesWorld writes it]

An empty image path means "no image". Records hold absolute image paths.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comalite.errors import DataFormatError
from comalite.records import (
    IMAGE_PLACEHOLDER,
    Dialogue,
    EmbedInput,
    EvalDataset,
    EvalQuery,
    TrainPair,
    Turn,
)

TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
OPTIONAL_EVAL_COLUMNS = ("n_hard",)
"""``n_hard`` (``EvalQuery.n_hard``): absent or null in MMEB's files and reads as 0."""
OPTIONAL_TRAIN_COLUMNS = ("neg_text", "neg_image_path")

log = logging.getLogger(__name__)


def _warn_identical(file, rows: list, what: str) -> None:
    """Log (once per file) a training file whose rows are all the same: it teaches nothing a single row does
    not, and usually means a broken export."""
    if len(rows) > 1 and all(row == rows[0] for row in rows[1:]):
        log.warning("%s: all %d %s are identical; check how the file was written", file, len(rows), what)


def _error(file, row, field: str, problem: str, fix: str) -> DataFormatError:
    where = f"{file}, row {row}" if row is not None else f"{file}"
    return DataFormatError(f"{where}, field '{field}': {problem}. {fix}")


# ----------------------------------------------------------------------------- reading rows


def data_files(path: Path, split: str) -> list[Path]:
    """The file itself, or the ``<split>*.parquet`` (else ``<split>*.jsonl``) files of a folder, sorted."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob(f"{split}*.parquet")) or sorted(path.glob(f"{split}*.jsonl"))
        if files:
            return files
        raise DataFormatError(
            f"{path}: no '{split}*.parquet' or '{split}*.jsonl' file in this folder. "
            f"Check the split name or download the files into it."
        )
    raise DataFormatError(f"{path}: no such file or folder. Check the path or download the data first.")


def _jsonl_records(file) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a jsonl file; a line that is not UTF-8, not JSON
    or not an object raises DataFormatError naming the file and line."""
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(f"{file}, line {line_no}: not UTF-8 text ({e.reason} at byte {e.start}). "
                                      "Re-save the file as UTF-8 or fix the line.") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{file}, line {line_no}: not valid JSON ({e}). "
                                      "Fix or remove the line.") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{file}, line {line_no}: expected a JSON object. Fix or remove the line.")
            yield line_no, record


def _read_rows(file: Path) -> list[dict]:
    """All rows of one parquet or jsonl file as dicts."""
    if file.suffix == ".jsonl":
        return [record for _, record in _jsonl_records(file)]
    try:
        return pq.read_table(file).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataFormatError(f"{file}: not a readable parquet file ({e}). Re-download or rewrite it.")


def _text(row: dict, field: str, file, i, *, optional: bool = False) -> str:
    """A string column; parquet nulls read as ""."""
    if field not in row:
        if optional:
            return ""
        raise _error(file, i, field, "column missing", f"The file needs the columns {_columns_hint(field)}.")
    value = row[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _error(file, i, field, f"expected a string, got {type(value).__name__}", "Rewrite the column as text.")
    return value


def _text_list(row: dict, field: str, file, i) -> list[str]:
    """A list-of-strings column (a candidate list); null items read as ""."""
    if field not in row:
        raise _error(file, i, field, "column missing", f"The file needs the columns {_columns_hint(field)}.")
    value = row[field]
    if not isinstance(value, (list, tuple)):
        raise _error(file, i, field, f"expected a list, got {type(value).__name__}", "Store one list per row.")
    if not all(v is None or isinstance(v, str) for v in value):
        raise _error(file, i, field, "expected a list of strings", "Store the candidates as text.")
    return ["" if v is None else v for v in value]


def _n_hard(row: dict, n_candidates: int, file, i) -> int:
    """The optional ``n_hard`` column: how many candidates after the truth are near-copies of it (0 if absent)."""
    value = row.get("n_hard")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n_candidates:
        raise _error(file, i, "n_hard", f"expected an integer from 0 to {n_candidates - 1} (the candidates after "
                     f"the truth), got {value!r}", "Fix or drop the column (it is optional).")
    return int(value)


def _columns_hint(field: str) -> str:
    """The required columns of the schema (train or eval) that ``field`` belongs to."""
    return ", ".join(EVAL_COLUMNS if field in EVAL_COLUMNS else TRAIN_COLUMNS[:4])


def _image(rel: str, image_root: str, known: dict[str, bool], file, i, field: str) -> str | None:
    """The absolute path of an image named relative to ``image_root`` ("" = no image); it must exist.

    ``known`` caches existence checks: eval candidates (class images, crops) repeat across thousands of rows.
    """
    if not rel:
        return None
    path = os.path.normpath(os.path.join(image_root, rel))
    if path not in known:
        known[path] = os.path.isfile(path)
    if not known[path]:
        raise _error(
            file, i, field, f"image '{rel}' not found under {image_root}",
            "Pass the folder the image paths are relative to as image_root, or unpack the images there.",
        )
    return path


def _embed_input(text: str, image: str | None, file, i, text_field: str, image_field: str) -> EmbedInput:
    # A placeholder with no image would tokenise into an empty vision span: fail now, not at train time.
    if IMAGE_PLACEHOLDER in text and image is None:
        raise _error(
            file, i, text_field, f"text holds {IMAGE_PLACEHOLDER} but the row has no image path",
            "Give the image path or remove the placeholder.",
        )
    # Where the image came from, for the message if it cannot be read later (only inputs with an image can fail).
    origin = f"{file}, row {i}, field '{image_field}'" if image else ""
    return EmbedInput(text=text, image=image, origin=origin)


# ----------------------------------------------------------------------------- MMEB-train


def read_train_subset(path, image_root, *, subset: str | None = None, limit: int | None = None,
                      split: str = "original") -> list[TrainPair]:
    """Read one MMEB-train-schema subset (a parquet/jsonl file, or a folder of ``<split>*`` files).

    ``limit`` keeps the first N rows (as VLM2Vec's loader caps a subset; stage 2 samples instead:
    ``sources.train_pairs``). ``subset`` defaults to the folder name,
    or to the file stem unless the stem is just a split shard name (``original-00000-of-00001``).
    Raises DataFormatError on a missing column, an empty query/positive or a missing image.
    """
    path = Path(path)
    if subset is None:
        if path.is_dir():
            subset = path.name
        elif path.stem.startswith(split):  # a shard of the HF layout: the folder names the subset
            subset = path.parent.name
        else:
            subset = path.stem
    image_root = os.path.abspath(image_root)
    known: dict[str, bool] = {}
    pairs: list[TrainPair] = []
    for file in data_files(path, split):
        rows = _read_rows(file)
        _warn_identical(file, rows, "rows")
        for i, row in enumerate(rows):
            if limit is not None and len(pairs) >= limit:
                return pairs
            query = _embed_input(_text(row, "qry", file, i),
                                 _image(_text(row, "qry_image_path", file, i), image_root, known, file, i,
                                        "qry_image_path"), file, i, "qry", "qry_image_path")
            positive = _embed_input(_text(row, "pos_text", file, i),
                                    _image(_text(row, "pos_image_path", file, i), image_root, known, file, i,
                                           "pos_image_path"), file, i, "pos_text", "pos_image_path")
            for field, item in (("qry", query), ("pos_text", positive)):
                if not item.text.strip() and item.image is None:
                    raise _error(file, i, field, "empty: neither text nor image",
                                 "Drop the row or fill in the text/image path.")
            neg_text = _text(row, "neg_text", file, i, optional=True)
            neg_rel = _text(row, "neg_image_path", file, i, optional=True)
            negative = None
            if neg_text or neg_rel:
                negative = _embed_input(neg_text, _image(neg_rel, image_root, known, file, i, "neg_image_path"),
                                        file, i, "neg_text", "neg_image_path")
            pairs.append(TrainPair(query=query, positive=positive, negative=negative, subset=subset))
    return pairs


# ----------------------------------------------------------------------------- MMEB-eval


def sample_rows(n_rows: int, limit: int | None, seed: int = 0) -> list[int]:
    """The row indices ``read_eval_dataset`` keeps: all rows, or ``limit`` of them drawn with
    ``numpy.random.default_rng(seed)``, in their original order. Call it to record which rows were scored."""
    if limit is None or limit >= n_rows:
        return list(range(n_rows))
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    chosen = np.random.default_rng(seed).choice(n_rows, size=limit, replace=False)
    return sorted(int(i) for i in chosen)


def read_eval_dataset(root, name: str, *, image_root=None, split: str = "test", limit: int | None = None,
                      seed: int = 0) -> EvalDataset:
    """Read ``<root>/<name>/<split>*.parquet`` (or ``.jsonl``), an MMEB-eval-schema dataset.

    Image paths are relative to ``image_root`` (default ``root``). With ``limit`` below the number of rows,
    only the rows ``sample_rows(n, limit, seed)`` are read, in file order. The optional ``n_hard`` column
    becomes ``EvalQuery.n_hard`` (0 when absent). Raises DataFormatError on a missing dataset folder (listing
    the ones present), a missing column, a candidate list that is empty or whose ``tgt_text``/``tgt_img_path``
    lengths differ, an ``n_hard`` outside 0..candidates-1, or a missing image.
    """
    root = Path(root)
    folder = root / name
    if not folder.is_dir():
        raise DataFormatError(_missing_dataset_message(root, name))
    image_root = os.path.abspath(root if image_root is None else image_root)
    files = data_files(folder, split)
    rows = [(file, i, row) for file in files for i, row in enumerate(_read_rows(file))]
    if not rows:
        where = files[0] if len(files) == 1 else f"{folder} ({', '.join(f.name for f in files)})"
        raise DataFormatError(f"{where}: no rows, so nothing to evaluate. Write the dataset's queries into it or "
                              "remove the dataset folder (or leave it out of eval.datasets).")
    known: dict[str, bool] = {}
    queries = []
    odd: dict[tuple, int] = {}  # (file, what) -> rows, for one warning per file and kind (below)
    for k in sample_rows(len(rows), limit, seed):
        file, i, row = rows[k]
        query = _embed_input(_text(row, "qry_text", file, i),
                             _image(_text(row, "qry_img_path", file, i), image_root, known, file, i, "qry_img_path"),
                             file, i, "qry_text", "qry_img_path")
        if not query.text.strip() and query.image is None:
            raise _error(file, i, "qry_text", "empty query: neither text nor image", "Drop or fix the row.")
        texts = _text_list(row, "tgt_text", file, i)
        images = _text_list(row, "tgt_img_path", file, i)
        if not texts:
            raise _error(file, i, "tgt_text", "empty candidate list",
                         "Each query needs at least its ground truth as candidate 0.")
        if len(texts) != len(images):
            raise _error(file, i, "tgt_img_path", f"{len(images)} image paths for {len(texts)} candidate texts",
                         "The two lists must be aligned; use \"\" for a candidate without image.")
        candidates = []
        for j, (text, rel) in enumerate(zip(texts, images)):
            image = _image(rel, image_root, known, file, i, f"tgt_img_path[{j}]")
            if not text.strip() and image is None:
                raise _error(file, i, f"tgt_text[{j}]", "empty candidate: neither text nor image",
                             "Fix the candidate list.")
            candidates.append(_embed_input(text, image, file, i, f"tgt_text[{j}]", f"tgt_img_path[{j}]"))
        keys = [c.key() for c in candidates]
        for what, hit in (("have a single candidate (Precision@1 is 1 whatever the model)", len(keys) == 1),
                          ("repeat the ground truth (candidate 0) among the other candidates", keys[0] in keys[1:]),
                          ("hold the same candidate twice among the others", len(set(keys[1:])) < len(keys) - 1)):
            if hit:
                odd[(file, what)] = odd.get((file, what), 0) + 1
        queries.append(EvalQuery(query=query, candidates=tuple(candidates),
                                 n_hard=_n_hard(row, len(candidates), file, i)))
    for (file, what), n in odd.items():
        log.warning("%s: %d of %d rows read %s; check the candidate lists", file, n, len(queries), what)
    return EvalDataset(name=name, queries=queries, source=folder)


def _missing_dataset_message(root: Path, name: str) -> str:
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    # MMEB spells some names differently in train and eval (ImageNet_1K vs ImageNet-1K).
    near = [p for p in present if p.replace("_", "-").lower() == name.replace("_", "-").lower()]
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return (f"{root / name}: no such dataset folder.{hint} Datasets under {root}: "
            f"{', '.join(present) if present else '(none)'}. Download the dataset or fix the name.")


# ----------------------------------------------------------------------------- stage-1 dialogues


def read_dialogues(path, image_root) -> list[Dialogue]:
    """Read a stage-1 dialogue jsonl; a bad line raises DataFormatError naming the file and line."""
    root = os.path.abspath(image_root)
    known: dict[str, bool] = {}
    dialogues = []
    records = []
    for line_no, record in _jsonl_records(path):
        records.append(record)
        where = f"{path}, line {line_no}"
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns:
            raise DataFormatError(f"{where}, field 'turns': missing or empty. Give a list of "
                                  f'{{"q": ..., "a": ...}} objects.')
        parsed = []
        for k, t in enumerate(turns):
            if not (isinstance(t, dict) and isinstance(t.get("q"), str) and isinstance(t.get("a"), str)):
                raise DataFormatError(f"{where}, field 'turns': each turn must be "
                                      f'{{"q": str, "a": str}}, got {t!r}. Fix the turn.')
            if not t["a"].strip():
                raise DataFormatError(f"{where}, field 'turns[{k}].a': the answer is empty, and stage 1 learns "
                                      "from answers. Fill it in or drop the turn.")
            parsed.append(Turn(question=t["q"], answer=t["a"]))
        text = record.get("text") or ""
        rel = record.get("image") or ""
        if not isinstance(text, str) or not isinstance(rel, str):
            raise DataFormatError(f"{where}: 'image' and 'text' must be strings. Fix the line.")
        image = None
        if rel:
            image = os.path.normpath(os.path.join(root, rel))
            if image not in known:
                known[image] = os.path.isfile(image)
            if not known[image]:
                raise DataFormatError(f"{where}, field 'image': image '{rel}' not found under {root}. "
                                      f"Pass the right image_root or restore the image.")
        if not text and image is None:
            raise DataFormatError(f"{where}: neither image nor text to compress. Fill one in or drop "
                                  f"the line.")
        if image is None and IMAGE_PLACEHOLDER in text:  # it would be compressed as the literal text
            raise DataFormatError(f"{where}, field 'text': holds {IMAGE_PLACEHOLDER} but the line has no "
                                  "image. Give the image path or remove the placeholder.")
        dialogues.append(Dialogue(turns=tuple(parsed), image=image, text=text, origin=where))
    if not dialogues:
        raise DataFormatError(f"{path}: no dialogues in this file. Write some with `comalite stage1-data`.")
    _warn_identical(path, records, "dialogues")
    return dialogues
