"""Result folders: what a stage leaves behind and how the next stage (or the evaluator) loads it.

A result folder holds ``result.json`` (backbone config, the adapter stack in order, the stage's settings,
metrics and run record, written last: its presence marks a finished stage), ``adapters/<name>/`` for each
LoRA adapter of the stack, and ``compression.safetensors``. Stage 2's folder holds a copy of the stage-1
adapter it was trained on, so every result folder loads on its own.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from .atomic import atomic_write_json
from .backbone import Backbone, load_backbone
from .compression import FILENAME as COMPRESSION_FILE
from .config import ModelConfig
from .errors import ComaliteError
from .fingerprint import files_fingerprint

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
        for name, rel in read_result(inherited)["adapters"]:
            target = folder / "adapters" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(inherited) / rel, target)
            stack.append([name, f"adapters/{name}"])
    if backbone.trainable_adapter:
        stack.append([backbone.trainable_adapter, f"adapters/{backbone.trainable_adapter}"])
    atomic_write_json({"stage": stage, "model": dataclasses.asdict(backbone.config), "adapters": stack,
                       "settings": settings, "metrics": metrics, "run": run}, folder / RESULT_FILE)
    return folder


def read_result(folder: str | Path) -> dict:
    path = Path(folder) / RESULT_FILE
    if not path.exists():
        raise ComaliteError(f"{path} not found: {folder} is not a finished comalite result folder "
                            "(did the stage finish? rerunning it resumes from its checkpoint)")
    return json.loads(path.read_text())


def weights_fingerprint(folder: str | Path) -> str:
    """A hash of a result folder's weights: every adapter of its stack and its compression rows."""
    folder = Path(folder)
    files = [folder / COMPRESSION_FILE] + sorted((folder / "adapters").rglob("*.safetensors"))
    return files_fingerprint(files)


def model_config_of(folder: str | Path, **overrides) -> ModelConfig:
    """The ``ModelConfig`` a result was trained with (tuples restored), with optional overrides."""
    saved = read_result(folder)["model"]
    saved["lora_targets"] = tuple(saved["lora_targets"])
    return dataclasses.replace(ModelConfig(**saved), **overrides)


def load_result(folder: str | Path, *, train_adapter: str | None = None, model_cfg: ModelConfig | None = None,
                train_compression: bool = False, seed: int = 0) -> Backbone:
    """Load a result folder's backbone with its whole adapter stack frozen, optionally plus a fresh
    trainable adapter on top (stage 2 starting from stage 1)."""
    folder = Path(folder)
    info = read_result(folder)
    adapters = [(name, folder / rel) for name, rel in info["adapters"]]
    return load_backbone(model_cfg or model_config_of(folder), adapters=adapters, train_adapter=train_adapter,
                         compression_from=folder, train_compression=train_compression, seed=seed)
