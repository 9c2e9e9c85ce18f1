"""What made a run folder, and who may write into it.

Every stage folder holds ``run.json``: the resolved settings that change its result and the fingerprints
of its inputs (backbone checkpoint, data files, the stage-1 result a stage 2 starts from), plus one hash
of both. A stage asked to run into a folder compares: the same hash resumes or reuses what is there; a
different one is refused with the settings that differ and the two ways out (another ``out_dir``, or
``--overwrite``, which empties the folder first). So a number can never belong to other settings than the
ones recorded beside it.

``run_lock`` takes an exclusive ``flock`` on the folder for the whole stage: a second process started into
the same folder is refused at once, and a killed process's lock goes with it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from pathlib import Path

from .atomic import atomic_write_json, read_json_object
from .checkpoints import checkpoint_fingerprint
from .config import BOOKKEEPING, Config
from .data import sources
from .errors import ComaliteError, CorruptFileError, RunConflictError, RunLockedError
from .fingerprint import digest, files_fingerprint, images_fingerprint
from .result import RESULT_FILE, weights_fingerprint
from .stages import for_init
from .distributed import barrier, is_writer

RUN_FILE = "run.json"
LOCK_FILE = ".lock"


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested dicts."""
    a, b = (flatten(json.loads(json.dumps(r))) for r in (old, new))  # tuples and lists alike, as run.json stores them
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def make_record(settings: dict, inputs: dict) -> dict:
    """The content of ``run.json``."""
    return {"fingerprint": digest({"settings": settings, "inputs": inputs}), "settings": settings, "inputs": inputs}


def read_record(folder: str | Path) -> dict | None:
    """``folder/run.json``, or None when there is none; a truncated or malformed one is a ``CorruptFileError``."""
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.exists():
        return None
    fix = (f"the run record is truncated or corrupt: delete it and run again with --overwrite (which empties "
           f"{folder}), or run into another folder (--set out_dir=...)")
    record = read_json_object(path, "a comalite run record", fix)
    if not isinstance(record.get("fingerprint"), str):
        raise CorruptFileError(f"{path}: holds no 'fingerprint', not a comalite run record; {fix}")
    return record


def claim(folder: str | Path, record: dict, *, overwrite: bool = False) -> None:
    """Make ``folder`` the home of the run ``record`` describes, or refuse (see the module docstring)."""
    folder = Path(folder)
    old = read_record(folder)
    # A record alone (a run that failed before its first checkpoint) holds nothing to lose.
    leftovers = [p for p in folder.iterdir() if p.name not in (LOCK_FILE, RUN_FILE)] if folder.is_dir() else []
    if old is not None and old["fingerprint"] == record["fingerprint"]:
        return
    if leftovers and not overwrite:
        if old is None:
            why = "holds files of an unrecorded run (no run.json)"
        else:
            why = "holds a run made from other settings or inputs:\n  " + "\n  ".join(differences(old, record))
        raise RunConflictError(
            f"{folder} {why}\nEither run into another folder (--set out_dir=... or --set name=...), or pass "
            "--overwrite to delete that run and start this one there.")
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    atomic_write_json(record, folder / RUN_FILE)


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")
    except OSError as err:
        raise ComaliteError(f"cannot write into the run folder {folder} ({err.strerror}): choose a writable "
                            "out_dir (--set out_dir=...) or set COMALITE_HOME") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(f"{folder} is in use by {owner}: wait for it to finish, or run into another "
                             "folder (--set out_dir=...)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    try:
        yield folder
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _result_settings(section) -> dict:
    return {k: v for k, v in flatten(dataclasses.asdict(section)).items() if k.split(".")[-1] not in BOOKKEEPING}


def stage_record(cfg: Config, stage: str) -> dict:
    """The run record of ``stage`` (``stage1``, or ``stage2`` for either init) under ``cfg``: its settings and
    the fingerprints of its backbone, its data files, the images it reads (each one's path relative to the
    image root and content: ``fingerprint.images_fingerprint``) and, for CoMa's stage 2, the stage-1 weights.

    ``image_root`` (where the images were read from) is recorded beside the fingerprint, not in it: a
    content-identical copy of the images in another folder reuses the run, other images are refused, and
    the refusal names both folders."""
    settings = {"model": _result_settings(cfg.model), stage: _result_settings(getattr(cfg, stage))}
    files = sources.stage1_files(cfg) if stage == "stage1" else sources.train_files(cfg)
    root, images = sources.stage_images(cfg, stage)
    inputs = {"backbone": checkpoint_fingerprint(cfg.model.backbone), "data": files_fingerprint(files),
              "images": images_fingerprint(images, root)}
    inherits = for_init(cfg.stage2.init).inherits if stage == "stage2" else None
    if inherits:
        inputs[inherits] = weights_fingerprint(cfg.run_dir() / inherits)
    return {**make_record(settings, inputs), "image_root": str(Path(root).resolve())}


@contextlib.contextmanager
def open_run(folder: str | Path, record: dict, *, overwrite: bool = False):
    """Lock ``folder`` and claim it for ``record`` (see ``claim``); yields whether the stage still has to run
    (False when its finished result is already there). Under ``torch.distributed`` rank 0 locks and claims,
    and every rank sees the same answer."""
    folder = Path(folder)
    with run_lock(folder) if is_writer() else contextlib.nullcontext():
        if is_writer():
            claim(folder, record, overwrite=overwrite)
        barrier()
        yield not (folder / RESULT_FILE).exists()
