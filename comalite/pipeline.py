"""The whole recipe, step by step, and the models it compares by name: the one orchestrator that the
command line, the demo and the notebooks share.

``ensure_stage(cfg, stage)`` makes sure a stage's result exists for this config: it builds what is missing
below it (ShapesWorld, the smoke tiny VLM, stage 1 before CoMa's stage 2), reuses a finished run of the same
settings and inputs, resumes an interrupted one, and refuses a folder made from other ones unless
``overwrite``. ``run_all(cfg)`` is the demo: stage 1 -> stage 2 (CoMa) -> contrastive-only baseline at the
same contrastive budget -> MMEB-protocol evaluation of all of them side by side.

Model names understood by ``embedding_model``: ``base`` (the backbone, untrained compression tokens),
``stage1``, ``stage2`` (CoMa), ``contrastive_only``, or the path of any result folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

from .backbone import load_backbone
from .checkpoints import named_checkpoint_dir, resolve_checkpoint
from .config import Config, load_config
from .data.sources import data_source, ensure_data, eval_datasets, train_pairs
from .distributed import barrier, is_writer
from .embedding import EmbeddingModel
from .errors import CheckpointError, ChecksumError
from .eval import evaluate
from .eval.report import check_saved, save_results
from .eval.registry import dataset_info
from .paths import data_dir
from .prefetch import resolve_workers
from .result import read_result
from .runs import run_lock
from .stage1 import run_stage1
from .stage2 import check_batches, run_stage2, split_heldout
from .stages import STAGE1, STAGES, get_stage
from .tiny.build import TinyConfig, build_tiny_vlm

log = logging.getLogger(__name__)
MODEL_NAMES = ("base", "stage1", "contrastive_only", "stage2")
TINY_BUILDS = {"tiny": ("tiny", TinyConfig), "tiny-smoke": ("tiny-smoke", TinyConfig.smoke)}
"""Checkpoints built by ``comalite build-tiny``: backbone name -> (preset whose data stage 0 reads, recipe)."""


def ensure_backbone(cfg: Config) -> Path | str:
    """The config's checkpoint, building the tiny VLM first when it is a named one that is missing (no folder
    or no config.json). One that is there but differs from its CHECKSUMS is an error (``ChecksumError``), never
    rebuilt: a rebuild would silently replace tracked files, and take an hour for ``tiny``."""
    try:
        return resolve_checkpoint(cfg.model.backbone)
    except ChecksumError:
        raise
    except CheckpointError:
        if cfg.model.backbone not in TINY_BUILDS:
            raise
    with run_lock(data_dir() / ".building"):  # two processes must not build into one folder at once
        try:
            return resolve_checkpoint(cfg.model.backbone)
        except ChecksumError:
            raise
        except CheckpointError:
            return build_tiny(cfg.model.backbone)


def build_tiny(name: str = "tiny") -> Path:
    """Build the tiny VLM called ``name`` (``tiny`` or ``tiny-smoke``) into ``data/``, replacing it."""
    preset, recipe = TINY_BUILDS[name]
    out = named_checkpoint_dir(name)
    log.warning("building the %s VLM into data/%s (%s on a CPU)", name, out.name,
                "a minute" if name == "tiny-smoke" else "an hour")
    data_cfg = load_config(preset)
    ensure_data(data_cfg)
    return build_tiny_vlm(out, recipe(), data_cfg=data_cfg)


def stage_config(cfg: Config, stage: str) -> Config:
    """``cfg`` as the given stage runs it: ``contrastive_only`` is stage 2 started from the backbone."""
    init = get_stage(stage).init
    if init is None:
        return cfg
    return dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, init=init))


def prepare(cfg: Config) -> None:
    """Build what comalite generates and is missing (the data source's, e.g. ShapesWorld; the tiny checkpoint):
    once, by rank 0 when several processes run. Real data is never demanded here: each step asks for the folders
    it reads."""
    if is_writer():
        data_source(cfg).prepare()
        ensure_backbone(cfg)
    barrier()


def ensure_stage(cfg: Config, stage: str, *, overwrite: bool = False) -> Path:
    """The finished result folder of ``stage`` for ``cfg``, running it (and what it needs) if missing."""
    cfg = stage_config(cfg, stage)
    prepare(cfg)
    ensure_data(cfg)  # training reads data.root: ask for it before anything else
    if stage == STAGE1.name:
        return run_stage1(cfg, overwrite=overwrite)
    inherits = get_stage(stage).inherits
    if inherits:  # a bad training file or stage-2 setting is reported now, not after stage 1 has trained
        check_batches(cfg, split_heldout(train_pairs(cfg))[0])
        ensure_stage(cfg, inherits)
    return run_stage2(cfg, overwrite=overwrite)


def embedding_model(cfg: Config, name: str) -> EmbeddingModel:
    """An embedding model by name (see module doc). Stages are made sure of first; a result folder brings
    its own pooling and model settings."""
    workers = resolve_workers(cfg.data.workers, cfg.model.device)
    if name == "base":
        prepare(cfg)
        backbone = load_backbone(cfg.model, train_adapter=None, train_compression=False)
        return EmbeddingModel(backbone.eval(), "base", pooling=cfg.stage2.pooling, batch_size=cfg.eval.batch_size,
                              workers=workers)
    folder = ensure_stage(cfg, name) if name in STAGES else Path(name)
    return EmbeddingModel.load(folder, name=name, batch_size=cfg.eval.batch_size, workers=workers,
                               device=cfg.model.device, cpu_threads=cfg.model.cpu_threads)


def evaluate_models(cfg: Config, names: list[str] | tuple[str, ...] = MODEL_NAMES, *,
                    overwrite: bool = False) -> dict:
    """Evaluate the named models on the config's eval datasets; writes ``<run_dir>/eval/results.{json,md}``
    and returns what it wrote.

    The folder's lock is held from the start (a second evaluation into it is refused at once, before any
    model loads) until the results are written. Results already there for the same datasets and sampling
    are merged: these models' columns are replaced, the other models' kept. Other datasets or sampling are
    refused before any model loads, unless ``overwrite`` (then replaced); see ``comalite.eval.report``."""
    out = cfg.run_dir() / "eval"
    with run_lock(out) if is_writer() else contextlib.nullcontext():
        prepare(cfg)
        datasets = [(dataset_info(d, cfg.eval.meta_tasks), d) for d in eval_datasets(cfg)]
        sampling = {"limit": cfg.eval.max_queries or None, "seed": cfg.eval.seed}
        if is_writer():
            rows = {info.name: {"meta_task": info.meta_task, "split": info.split, "source": info.source,
                                "n_queries": len(data.queries)} for info, data in datasets}
            check_saved(out, rows, sampling, models=names, overwrite=overwrite)
        models = [embedding_model(cfg, name) for name in names]
        results = evaluate(models, datasets, cache_dir=out / "cache", batch_size=cfg.eval.batch_size, **sampling)
        if is_writer():
            results = save_results(results, out, overwrite=overwrite)
        return results


def run_all(cfg: Config, *, overwrite: bool = False) -> dict:
    """Stage 1, stage 2, the contrastive-only baseline and the evaluation table, reusing what is done."""
    for stage in STAGES:
        ensure_stage(cfg, stage, overwrite=overwrite)
    return evaluate_models(cfg, overwrite=overwrite)


def tiny_report(cfg: Config) -> dict | None:
    """The tiny VLM's build report (``tiny_report.json``: what its ViT tokens hold, its held-out answers by
    question type against the image-blind baseline), or None for any other backbone."""
    if cfg.model.backbone not in TINY_BUILDS:
        return None
    return json.loads((Path(ensure_backbone(cfg)) / "tiny_report.json").read_text())


def stage_result(cfg: Config, stage: str) -> dict:
    """``result.json`` of ``stage`` for ``cfg`` (run first if missing)."""
    return read_result(ensure_stage(cfg, stage))
