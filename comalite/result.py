"""Result folders: what a stage leaves behind and how the next stage (or the evaluator) loads it.

A result folder holds ``result.json`` (backbone config, the adapter stack in order, the stage's settings,
metrics and run record, written last: its presence marks a finished stage), ``adapters/<name>/`` for each
LoRA adapter of the stack, and ``compression.safetensors``. Stage 2's folder holds a copy of the stage-1
adapter it was trained on, so every result folder loads on its own.

``result.json`` also records the sha256 of every weight file it describes (``sha256``: relative path ->
hash; the adapters' weights and configs, the compression rows); ``load_result`` checks them before loading,
so a flipped byte or a truncated file is a ``CorruptFileError`` naming the file, never a silently different
model. Results written before these hashes were recorded load unverified (their safetensors files are only
checked to be complete).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .atomic import atomic_write_json, read_json_object
from .backbone import Backbone, load_backbone
from .compression import FILENAME as COMPRESSION_FILE
from .config import ModelConfig
from .errors import ComaliteError, CorruptFileError
from .fingerprint import files_fingerprint, sha256_file, verify_sha256

RESULT_FILE = "result.json"


def write_result(folder: str | Path, backbone: Backbone, *, stage: str, settings: dict, metrics: dict,
                 run: dict, inherited: str | Path | None = None) -> Path:
    """Save the trainable adapter and compression rows of ``backbone`` plus ``result.json`` into ``folder``.

    ``inherited`` is the result folder whose (frozen) adapters sit under this one; they are copied in, always
    replacing an older copy (the stage below may have been retrained). ``run`` is the run record
    (``comalite.runs``).
    """
    folder = Path(folder)
    backbone.save(folder)
    stack = []
    if inherited:
        verify_weights(inherited)  # a damaged stage-1 adapter is not copied on as if it were sound
        for name, rel in _entry(Path(inherited), read_result(inherited), "adapters", list):
            target = folder / "adapters" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(inherited) / rel, target)
            stack.append([name, f"adapters/{name}"])
    if backbone.trainable_adapter:
        stack.append([backbone.trainable_adapter, f"adapters/{backbone.trainable_adapter}"])
    atomic_write_json({"stage": stage, "model": dataclasses.asdict(backbone.config), "adapters": stack,
                       "settings": settings, "metrics": metrics, "run": run,
                       "sha256": {rel: sha256_file(folder / rel) for rel in weight_files(folder, stack)}},
                      folder / RESULT_FILE)
    return folder


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
"""The files of an adapter folder that make the model (weights and configs; not peft's README)."""


def weight_files(folder: str | Path, stack: list) -> list[str]:
    """The weight files of a result folder, relative to it: the compression rows, then each adapter's files."""
    folder = Path(folder)
    files = [COMPRESSION_FILE]
    for _, rel in stack:
        files += sorted(p.relative_to(folder).as_posix() for p in (folder / rel).rglob("*")
                        if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return files


def _redo(folder: Path, info: dict | None = None) -> str:
    stage = (info or {}).get("stage")
    stage = stage if isinstance(stage, str) else "the stage that wrote it"
    return f"delete {folder} and run {stage} again to retrain it"


def read_result(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / RESULT_FILE
    if not path.exists():
        raise ComaliteError(f"{path} not found: {folder} is not a finished comalite result folder "
                            "(did the stage finish? rerunning it resumes from its checkpoint)")
    info = read_json_object(path, "a comalite result (an object with model, adapters, ...)",
                            f"the file is truncated or corrupt: {_redo(folder)}")
    if "sha256" in info and not isinstance(info["sha256"], dict):
        raise CorruptFileError(f"{path}: its 'sha256' entry is not a mapping of file -> hash; {_redo(folder, info)}")
    return info


def _entry(folder: Path, info: dict, key: str, kind: type):
    """``info[key]``, which loading needs; a ``CorruptFileError`` naming ``result.json`` when it is missing."""
    if not isinstance(info.get(key), kind):
        raise CorruptFileError(f"{folder / RESULT_FILE}: no valid {key!r} in it, so it is not a complete comalite "
                               f"result; {_redo(folder, info)}")
    return info[key]


def verify_weights(folder: str | Path, info: dict | None = None) -> None:
    """Check a result folder's weight files against the sha256 hashes its ``result.json`` recorded.

    A missing, truncated or changed file raises ``CorruptFileError`` naming it. Results written before the
    hashes were recorded are not verified; their safetensors files are only checked to be complete."""
    folder = Path(folder)
    info = read_result(folder) if info is None else info
    result_file = folder / RESULT_FILE
    recorded = info.get("sha256")
    if recorded is None:  # an older result: at least refuse truncated weights with one line
        for rel in weight_files(folder, _entry(folder, info, "adapters", list)):
            path = folder / rel
            if path.suffix != ".safetensors" or not path.is_file():
                continue
            try:
                with safe_open(str(path), "pt"):
                    pass
            except SafetensorError as err:
                raise CorruptFileError(f"{path}: cannot read it ({err}): the file is truncated or corrupt; "
                                       f"{_redo(folder, info)}") from None
        return
    for rel, expected in recorded.items():
        verify_sha256(folder / rel, expected, result_file, _redo(folder, info), CorruptFileError)


def weights_fingerprint(folder: str | Path) -> str:
    """A hash of a result folder's weights: every adapter of its stack and its compression rows."""
    folder = Path(folder)
    files = [folder / COMPRESSION_FILE] + sorted((folder / "adapters").rglob("*.safetensors"))
    return files_fingerprint(files)


def model_config_of(folder: str | Path, **overrides) -> ModelConfig:
    """The ``ModelConfig`` a result was trained with (tuples restored), with optional overrides."""
    folder = Path(folder)
    info = read_result(folder)
    saved = dict(_entry(folder, info, "model", dict))
    try:
        saved["lora_targets"] = tuple(saved["lora_targets"])
        saved_cfg = ModelConfig(**saved)
    except (KeyError, TypeError) as err:  # a setting missing, unknown, or not a list
        raise CorruptFileError(f"{folder / RESULT_FILE}: its 'model' settings are incomplete or unknown "
                               f"({type(err).__name__}: {err}); {_redo(folder, info)}") from None
    return dataclasses.replace(saved_cfg, **overrides)


def pooling_of(folder: str | Path, info: dict | None = None) -> str:
    """The pooling a result was trained with (``settings.pooling``; stage 1 records none: ``mean``)."""
    folder = Path(folder)
    info = read_result(folder) if info is None else info
    return _entry(folder, info, "settings", dict).get("pooling", "mean")


def load_result(folder: str | Path, *, train_adapter: str | None = None, model_cfg: ModelConfig | None = None,
                train_compression: bool = False, seed: int = 0) -> Backbone:
    """Load a result folder's backbone with its whole adapter stack frozen, optionally plus a fresh
    trainable adapter on top (stage 2 starting from stage 1). Its weight files are verified first
    (``verify_weights``)."""
    folder = Path(folder)
    info = read_result(folder)
    verify_weights(folder, info)
    adapters = [(name, folder / rel) for name, rel in _entry(folder, info, "adapters", list)]
    return load_backbone(model_cfg or model_config_of(folder), adapters=adapters, train_adapter=train_adapter,
                         compression_from=folder, train_compression=train_compression, seed=seed)
