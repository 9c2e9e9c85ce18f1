"""The whole recipe on one preset, and the models it compares, by name.

``run_all(cfg)`` is the demo: data -> stage 1 -> stage 2 (CoMa) -> contrastive-only baseline at the same
contrastive budget -> MMEB-protocol evaluation of all of them side by side. Each step resumes from what a
previous run left, so rerunning after an interruption only does what is missing.

Model names understood by ``embedding_model``: ``base`` (the backbone, untrained compression tokens),
``stage1``, ``stage2`` (CoMa), ``contrastive_only``, or the path of any result folder.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .config import Config
from .embedding import EmbeddingModel

log = logging.getLogger(__name__)
MODEL_NAMES = ("base", "stage1", "contrastive_only", "stage2")


def embedding_model(cfg: Config, name: str) -> EmbeddingModel:
    """An embedding model by name (see module doc), with the preset's pooling and batch size."""
    pooling, batch = cfg.stage2.pooling, cfg.eval.batch_size
    if name == "base":
        from .backbone import load_backbone

        backbone = load_backbone(cfg.model, train_adapter=None, train_compression=False)
        return EmbeddingModel(backbone.eval(), "base", pooling=pooling, batch_size=batch)
    folder = cfg.run_dir() / name if name in MODEL_NAMES else Path(name)
    return EmbeddingModel.load(folder, name=name, pooling=pooling, batch_size=batch,
                               device=cfg.model.device, dtype=cfg.model.dtype)


def evaluate_models(cfg: Config, names: list[str] | tuple[str, ...] = MODEL_NAMES) -> dict:
    """Evaluate the named models on the config's eval datasets; writes ``<run_dir>/eval/results.{json,md}``."""
    from .datasets import eval_datasets
    from .evaluate import evaluate
    from .mmeb import get_dataset_info

    datasets = [(get_dataset_info(d.name), d) for d in eval_datasets(cfg)]
    out = cfg.run_dir() / "eval"
    models = [embedding_model(cfg, name) for name in names]
    return evaluate(models, datasets, out_dir=out, cache_dir=out / "cache", batch_size=cfg.eval.batch_size,
                    limit=cfg.eval.max_queries or None, seed=cfg.eval.seed)


def run_all(cfg: Config) -> dict:
    """Stage 1, stage 2, the contrastive-only baseline and the evaluation table, resuming where possible."""
    from .datasets import ensure_data
    from .result import RESULT_FILE
    from .stage1 import run_stage1
    from .stage2 import run_stage2

    ensure_data(cfg)
    run = cfg.run_dir()
    if not (run / "stage1" / RESULT_FILE).exists():
        run_stage1(cfg)
    if not (run / "stage2" / RESULT_FILE).exists():
        run_stage2(cfg)
    baseline = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, init="backbone"))
    if not (run / "contrastive_only" / RESULT_FILE).exists():
        run_stage2(baseline)
    return evaluate_models(cfg)
