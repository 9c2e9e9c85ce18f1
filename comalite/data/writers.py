"""Write files in the MMEB schema and the stage-1 dialogue jsonl that ``comalite.data.io`` reads.

Writes are atomic (``comalite.atomic``); ``dialogue_line`` is the one format of a dialogue line, used both for
whole files and by ``comalite stage1-data``, which appends line by line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from comalite.atomic import atomic_write
from comalite.data.io import EVAL_COLUMNS, OPTIONAL_EVAL_COLUMNS, OPTIONAL_TRAIN_COLUMNS, TRAIN_COLUMNS
from comalite.records import Dialogue


def _columns(rows: list[dict], columns: tuple[str, ...], optional: tuple[str, ...], default) -> dict[str, list]:
    data = {c: [] for c in columns}
    for i, row in enumerate(rows):
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"row {i}: unknown columns {sorted(unknown)}; expected {list(columns)}")
        for c in columns:
            if c not in row and c not in optional:
                raise ValueError(f"row {i}: missing column '{c}'")
            data[c].append(row.get(c, default))
    return data


def write_train_subset(rows: list[dict], path) -> None:
    """Write MMEB-train-schema rows (dicts keyed by ``TRAIN_COLUMNS``; ``neg_*`` default "") to parquet."""
    data = _columns(rows, TRAIN_COLUMNS, OPTIONAL_TRAIN_COLUMNS, "")
    table = pa.table({c: pa.array(data[c], pa.string()) for c in TRAIN_COLUMNS})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_eval_dataset(rows: list[dict], path) -> None:
    """Write MMEB-eval-schema rows (dicts keyed by ``EVAL_COLUMNS``, optionally ``n_hard``; candidate 0 = truth)
    to parquet. The ``n_hard`` column is written only when some row has it (null in the rows without).

    Contents are not checked, so test fixtures can write malformed rows for the reader to reject.
    """
    columns = EVAL_COLUMNS + tuple(c for c in OPTIONAL_EVAL_COLUMNS if any(c in row for row in rows))
    data = _columns(rows, columns, OPTIONAL_EVAL_COLUMNS, None)
    types = {"qry_text": pa.string(), "qry_img_path": pa.string(),
             "tgt_text": pa.list_(pa.string()), "tgt_img_path": pa.list_(pa.string()), "n_hard": pa.int64()}
    table = pa.table({c: pa.array(data[c], types[c]) for c in columns})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def dialogue_line(dialogue: Dialogue, image_root) -> str:
    """One jsonl line: ``{"image": path relative to image_root or "", "text", "turns": [{"q", "a"}]}``.
    ``Dialogue.meta`` is not stored."""
    rel = ""
    if dialogue.image:
        root = os.path.abspath(image_root)
        rel = os.path.relpath(os.path.abspath(dialogue.image), root)
        if rel.startswith(os.pardir):
            raise ValueError(f"image {dialogue.image} is not under image_root {root}")
        rel = Path(rel).as_posix()
    record = {"image": rel, "text": dialogue.text, "turns": [{"q": t.question, "a": t.answer} for t in dialogue.turns]}
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_dialogues(dialogues, path, image_root) -> None:
    """Write stage-1 dialogues as jsonl, one ``dialogue_line`` each."""
    lines = [dialogue_line(d, image_root) for d in dialogues]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)

    atomic_write(path, write)
