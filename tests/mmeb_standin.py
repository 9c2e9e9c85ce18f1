"""A stand-in for local copies of MMEB-train and MMEB-eval, built from the session's smoke ShapesWorld.

The folders are laid out as the hub's copies are (``data/README.md``): real subset and dataset names, the
hub's shard file names, the unzipped images under ``images/<name>/``, image paths in the files relative to
the folder, and the ``.cache/`` folder ``huggingface-cli download --local-dir`` leaves behind. Only the
contents are ShapesWorld's, so every command of the real recipe can run on them with the tiny VLM.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from comalite.data.writers import write_eval_dataset, write_train_subset

TRAIN = {"ImageNet_1K": "SW-Object", "N24News": "SW-Count", "MSCOCO_i2t": "SW-I2T", "MSCOCO_t2i": "SW-T2I",
         "OK-VQA": "SW-VQA"}
"""MMEB-train subset -> the ShapesWorld training subset whose rows it holds."""
EVAL = {"ImageNet-1K": "SW-Object", "N24News": "SW-Count", "VOC2007": "SW-Object-Heldout",
        "MSCOCO_t2i": "SW-T2I"}
"""MMEB-eval dataset -> the ShapesWorld evaluation dataset whose rows it holds."""
USER_DATASET = ("Digits", "SW-Count-Outline")
"""A dataset of one's own in the MMEB-eval layout (no dataset.json: tests add what they need)."""
TRAIN_ROWS = 32
TRAIN_SHARD = "original-00000-of-00001.parquet"
EVAL_SHARD = "test-00000-of-00001.parquet"
TRAIN_PATHS = ("qry_image_path", "pos_image_path", "neg_image_path")
EVAL_PATHS = ("qry_img_path", "tgt_img_path")


def _moved(rel: str, images: Path, folder: Path, name: str) -> str:
    """Copy ``images/rel`` to ``folder/images/<name>/`` and return its path relative to ``folder``."""
    if not rel:
        return rel
    target = Path("images") / name / Path(rel).name
    if not (folder / target).exists():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / rel, folder / target)
    return target.as_posix()


def _hub_cache(folder: Path, names: list[str], shard: str) -> None:
    """What ``huggingface-cli download --local-dir`` leaves: ``.cache/huggingface`` with a metadata file per
    downloaded file and a download that never finished; and, so that only the rule "hidden folders are not
    datasets" can skip it, a file named like a shard right in ``.cache``."""
    cache = folder / ".cache" / "huggingface"
    (cache / "download").mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n")
    for name in names:
        (cache / "download" / name).mkdir(exist_ok=True)
        (cache / "download" / name / f"{shard}.metadata").write_text("0123abcd\n\"etag\"\n1700000000.0\n")
    (cache / "download" / names[0] / f"{shard}.incomplete").write_bytes(b"PAR1 half a download")
    (folder / ".cache" / shard).write_bytes(b"not a parquet file")


def build(data_root: Path, out: Path) -> tuple[Path, Path]:
    """``out/MMEB-train`` and ``out/MMEB-eval`` from the ShapesWorld under ``data_root``; returns both."""
    images = data_root / "images"
    train, evaluation = out / "MMEB-train", out / "MMEB-eval"
    for name, source in TRAIN.items():
        rows = pq.read_table(data_root / "train" / source / "original.parquet").to_pylist()[:TRAIN_ROWS]
        for row in rows:
            row.update({c: _moved(row[c], images, train, name) for c in TRAIN_PATHS})
        write_train_subset(rows, train / name / TRAIN_SHARD)
    for name, source in {**EVAL, USER_DATASET[0]: USER_DATASET[1]}.items():
        rows = pq.read_table(data_root / "eval" / source / "test.parquet").to_pylist()
        for row in rows:
            row["qry_img_path"] = _moved(row["qry_img_path"], images, evaluation, name)
            row["tgt_img_path"] = [_moved(p, images, evaluation, name) for p in row["tgt_img_path"]]
        write_eval_dataset(rows, evaluation / name / EVAL_SHARD)
    _hub_cache(train, list(TRAIN), TRAIN_SHARD)
    _hub_cache(evaluation, list(EVAL), EVAL_SHARD)
    return train, evaluation


def readme_commands(readme: Path, heading: str = "### The real recipe on one GPU") -> list[list[str]]:
    """The ``comalite`` commands of the first ```bash block under ``heading``, each as its argument list
    (continuation lines joined, ``comalite`` dropped)."""
    text = readme.read_text()
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line) for line in block.splitlines() if line.strip()]
    assert all(c[0] == "comalite" for c in commands), commands
    return [c[1:] for c in commands]


def at(argv: list[str], folder: Path) -> list[str]:
    """``argv`` with the ``/data`` folder of the README replaced by ``folder``."""
    return [re.sub(r"(?<![\w.])/data(?=/)", str(folder), a) for a in argv]
