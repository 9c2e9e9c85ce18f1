"""A report on a local MMEB folder: the first thing to run on real data.

``check_folder(root)`` finds every dataset folder under ``root`` (MMEB-train subsets hold ``original*``
files, MMEB-eval datasets ``test*`` files), reads each one fully with the same readers the stages use
(every column, every row, every image path) and returns one row per dataset: its kind, rows, distinct
images, candidates per query, and the first problem found, if any, with the file, row and fix.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from .io import read_eval_dataset, read_train_subset
from .sources import dataset_folders, holds_split

KINDS = {"train": "original", "eval": "test"}


def check_folder(root: str | Path, *, image_root: str | Path | None = None) -> list[dict]:
    """One row per dataset under ``root`` (see the module docstring); ``image_root`` defaults to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder. Give the folder that holds one sub-folder per dataset.")
    image_root = Path(image_root) if image_root else root
    rows = []
    names = dataset_folders(root, *KINDS.values())
    for kind, split in KINDS.items():
        for name in (n for n in names if holds_split(root / n, split)):
            row = {"dataset": name, "kind": kind, "rows": 0, "images": 0, "candidates": "", "problem": ""}
            try:
                if kind == "train":
                    pairs = read_train_subset(root / name, image_root, subset=name)
                    items = [x for p in pairs for x in (p.query, p.positive, p.negative) if x is not None]
                    row["rows"] = len(pairs)
                    if not pairs:
                        raise DataFormatError(f"{root / name}: no rows, so nothing to train on. Write the subset's "
                                              "pairs into it or remove the folder.")
                else:
                    data = read_eval_dataset(root, name, image_root=image_root)
                    items = [x for q in data.queries for x in (q.query, *q.candidates)]
                    counts = [len(q.candidates) for q in data.queries]
                    row["rows"] = len(data.queries)
                    row["candidates"] = f"{min(counts)}-{max(counts)}" if counts else ""
                row["images"] = len({x.image for x in items if x.image})
            except DataFormatError as err:
                row["problem"] = str(err)
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{root}: no dataset folders (sub-folders with original*.parquet or test*.parquet "
                              "files). See data/README.md for the layout.")
    return rows
