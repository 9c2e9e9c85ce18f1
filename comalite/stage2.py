"""Stage 2, contrastive tuning: the compression tokens' pooled states become the embedding; InfoNCE.

``run_stage2(cfg)`` starts from the stage-1 result (CoMa: the frozen stage-1 adapter under a fresh LoRA
``stage2``) or, with ``stage2.init=backbone``, from the plain backbone (the contrastive-only baseline, at
the same contrastive budget). Each optimizer step is one batch of ``stage2.train.batch_size`` pairs made
of same-subset sub-batches, encoded in GradCache chunks, so the negative pool is the whole batch while
memory is that of one chunk.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone, load_backbone
from .batching import SubBatchSampler
from .config import Config
from .data.sources import train_pairs
from .distributed import barrier, is_writer, local_share, rank, seed_chunk, world_size
from .embedding import encode
from .errors import ConfigError
from .gradcache import gradcache_step
from .loss import make_loss
from .prefetch import ImagePrefetcher, images_of, resolve_workers
from .records import TrainPair
from .result import load_result, write_result
from .runs import open_run, stage_record
from .stages import for_init
from .trainer import Trainer, seed_everything

log = logging.getLogger(__name__)
HELDOUT_FRACTION = 0.05  # of each subset's pairs, held out to measure retrieval
EVAL_BLOCK = 16      # held-out retrieval: each query against the targets of its block of 16 pairs


def split_heldout(pairs: list[TrainPair], seed: int = 0) -> tuple[list[TrainPair], list[TrainPair]]:
    """Deterministic train / held-out split: a seeded random ``HELDOUT_FRACTION`` of each subset is held
    out (at least two pairs, one where a subset has fewer than four), both parts in file order. Random, not
    every n-th row: generators often cycle their classes (ShapesWorld's counts go one, two, three, four, ...),
    and a stride would hold out a single class."""
    by_subset: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_subset.setdefault(pair.subset, []).append(i)
    held: set[int] = set()
    for k, (_, rows) in enumerate(sorted(by_subset.items())):
        # At least two where the subset allows: held-out retrieval ranks a pair against another of its subset.
        n = max(1 if len(rows) < 4 else 2, round(len(rows) * HELDOUT_FRACTION))
        held.update(rows[j] for j in np.random.default_rng([seed, k]).choice(len(rows), size=n, replace=False))
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def inbatch_accuracy(backbone: Backbone, pairs: list[TrainPair], *, pooling: str = "mean",
                     block: int = EVAL_BLOCK, batch_size: int = 64) -> dict:
    """Top-1 accuracy of each query retrieving its own target among the targets of its block of pairs
    (same subset, like training batches; blocks of ``block`` pairs, fewer where a subset holds fewer).

    Targets with the same content (a class label shared by several queries) are one target: retrieving
    any copy is right. Otherwise the argmax, which picks the first of equal vectors, would mark every
    later copy wrong and cap a perfect model far below 100 %. ``chance`` is the mean over queries of
    (copies of its target) / block size. Inputs are encoded ``batch_size`` at a time, whatever the blocks."""
    backbone.eval()
    by_subset: dict[str, list[TrainPair]] = {}
    for pair in pairs:
        by_subset.setdefault(pair.subset, []).append(pair)
    # A query alone has nothing to be confused with: blocks of one are left out.
    blocks = [b for group in by_subset.values() for b in _chunks(group, block) if len(b) >= 2]
    if not blocks:
        raise ValueError("held-out retrieval needs at least 2 held-out pairs of one subset")
    scored = [p for b in blocks for p in b]
    q = torch.cat([encode(backbone, [p.query for p in c], pooling) for c in _chunks(scored, batch_size)])
    t = torch.cat([encode(backbone, [p.positive for p in c], pooling) for c in _chunks(scored, batch_size)])
    hits, chance, start = 0, 0.0, 0
    for b in blocks:
        keys = [p.positive.key() for p in b]
        top = torch.argmax(q[start:start + len(b)] @ t[start:start + len(b)].T, dim=1).tolist()
        hits += sum(keys[j] == keys[i] for i, j in enumerate(top))
        chance += sum(keys.count(k) / len(b) for k in keys)
        start += len(b)
    return {"accuracy": hits / len(scored), "pairs": len(scored), "chance": chance / len(scored)}


def load_stage2_backbone(cfg: Config) -> Backbone:
    """CoMa: stage 1's result with a fresh ``stage2`` LoRA on top; or the plain backbone (baseline)."""
    s2 = cfg.stage2
    inherits = for_init(s2.init).inherits
    if inherits:
        return load_result(cfg.run_dir() / inherits, train_adapter="stage2", model_cfg=cfg.model,
                           train_compression=s2.train_compress_rows, seed=s2.train.seed)
    return load_backbone(cfg.model, train_adapter="stage2", train_compression=s2.train_compress_rows,
                         seed=s2.train.seed)


def stage2_dir(cfg: Config) -> Path:
    return cfg.run_dir() / for_init(cfg.stage2.init).name


def contrastive_step(backbone: Backbone, train: list[TrainPair], cfg: Config) -> Callable[[int], float]:
    """``step_fn(step) -> loss``: the forward and backward passes of one optimizer step of stage 2.

    The step's batch comes from same-subset sub-batches (``SubBatchSampler``), is encoded in GradCache chunks
    and scored with InfoNCE. Under ``torch.distributed`` every process draws the same global batch, takes its
    share (whole sub-batches), and the loss gathers every process's embeddings; dropout is seeded per chunk
    from its place in the global batch, so any number of processes computes the same update. ``data.workers``
    threads prepare the images of both passes and of the next steps ahead (``comalite.prefetch``).
    """
    s2, train_cfg = cfg.stage2, cfg.stage2.train
    sampler = SubBatchSampler([p.subset for p in train], train_cfg.batch_size, s2.sub_batch_size or None,
                              seed=train_cfg.seed)
    loss_fn = make_loss(s2)
    first_chunk = rank() * batch_geometry(cfg, len(train)).chunks_per_process  # its place in the global batch
    images = ImagePrefetcher(backbone.processor, resolve_workers(cfg.data.workers, backbone.device))

    def step_chunks(step: int) -> list[list[tuple]]:
        """The GradCache groups of step ``step``'s share: queries, targets (and hard negatives), in chunks
        ``(group, index in the global batch, inputs)``."""
        sampler.seek(step)
        batch = local_share([train[i] for i in next(iter(sampler))], "stage2.train.batch_size")

        def chunks(group: int, items: list) -> list[tuple]:
            return [(group, first_chunk + k, c) for k, c in enumerate(_chunks(items, s2.chunk_size))]

        negatives = [p.negative for p in batch if p.negative is not None] if s2.hard_negatives else []
        return [chunks(0, [p.query for p in batch]), chunks(1, [p.positive for p in batch])] + \
            ([chunks(2, negatives)] if negatives else [])

    def plan_from(step: int) -> Iterator[tuple[str, str]]:
        """The images of steps ``step``, ``step + 1``, ... in the order ``gradcache_step`` encodes them: every
        chunk of every group, twice (its two passes) unless each group is one chunk."""
        for later in itertools.count(step):
            groups = step_chunks(later)
            for _ in range(1 if all(len(group) == 1 for group in groups) else 2):
                for group in groups:
                    for _, _, items in group:
                        yield from images_of(items)

    def step_fn(step: int) -> float:
        backbone.train()
        images.at_step(step, plan_from)

        def encode_chunk(chunk: tuple) -> torch.Tensor:
            group, index, items = chunk
            seed_chunk(train_cfg.seed, step, group, index)
            return encode(backbone, items, s2.pooling, images)

        queries, targets, *negatives = step_chunks(step)
        loss = gradcache_step(encode_chunk, queries, targets, loss_fn, extra_chunks=negatives[0] if negatives else None)
        return float(loss)

    return step_fn


@dataclass(frozen=True)
class BatchGeometry:
    """How one step's global batch is cut: a share per process (whole same-subset sub-batches), each share
    into GradCache chunks numbered by their place in the global batch (``seed_chunk`` seeds dropout by it)."""

    share: int                # pairs per process
    chunks_per_process: int   # GradCache chunks of stage2.chunk_size in one share


def batch_geometry(cfg: Config, n_pairs: int) -> BatchGeometry:
    """The one place stage 2's batch geometry is computed and checked against the data and the processes."""
    s2, n = cfg.stage2, world_size()
    batch = s2.train.batch_size
    if n_pairs < batch:
        raise ConfigError(f"{n_pairs} training pairs cannot fill one batch of stage2.train.batch_size={batch}: "
                          "lower it or add data")
    share = batch // n
    if batch % n or (s2.sub_batch_size and share % s2.sub_batch_size):
        raise ConfigError(f"stage2.train.batch_size={batch} must split over {n} processes into whole "
                          f"sub-batches of stage2.sub_batch_size={s2.sub_batch_size}")
    return BatchGeometry(share=share, chunks_per_process=-(-share // s2.chunk_size))


def check_batches(cfg: Config, train: list[TrainPair]) -> None:
    """Settings stage 2 cannot run with, found before any model loads: an unknown ``stage2.loss``; fewer pairs
    than one batch; under ``torch.distributed`` a batch that does not split into whole same-subset sub-batches
    per process, or hard negatives missing for some pair (the gathered pools must have one size on every
    process)."""
    s2, n = cfg.stage2, world_size()
    make_loss(s2)  # an unknown stage2.loss
    batch_geometry(cfg, len(train))
    if n > 1 and s2.hard_negatives and any(p.negative is None for p in train):
        raise ConfigError("stage2.hard_negatives with several processes needs a negative in every training row")


def run_stage2(cfg: Config, *, overwrite: bool = False, stop_at: int | None = None) -> Path:
    """Train stage 2 into ``<run_dir>/stage2`` (or ``contrastive_only``) and return it.

    CoMa needs a finished stage 1 in the same run folder (``comalite.pipeline.ensure_stage`` runs it first).
    Resumes, reuses or refuses exactly like ``run_stage1``.
    """
    s2, train_cfg, stage = cfg.stage2, cfg.stage2.train, for_init(cfg.stage2.init)
    out = stage2_dir(cfg)
    train, heldout = split_heldout(train_pairs(cfg))
    check_batches(cfg, train)
    record = stage_record(cfg, "stage2")
    with open_run(out, record, overwrite=overwrite) as todo:
        if not todo:
            return out
        backbone = load_stage2_backbone(cfg)
        seed_everything(train_cfg.seed)
        before = inbatch_accuracy(backbone, heldout, pooling=s2.pooling)
        step_fn = contrastive_step(backbone, train, cfg)
        history = Trainer(backbone.trainable_parameters(), train_cfg, out, step_fn, desc=stage.label,
                          fingerprint=record["fingerprint"]).run(stop_at=stop_at)
        if stop_at is not None and stop_at < train_cfg.steps:
            return out
        after = inbatch_accuracy(backbone, heldout, pooling=s2.pooling)
        metrics = {"heldout_accuracy_before": before["accuracy"], "heldout_accuracy_after": after["accuracy"],
                   "heldout_pairs": after["pairs"], "chance": after["chance"], "first_loss": history[0]["loss"],
                   "last_loss": history[-1]["loss"], "steps": len(history), "train_pairs": len(train),
                   "train_seconds": sum(h["seconds"] for h in history), "summary": backbone.summary()}
        log.info("stage 2 done: %s", metrics)
        inherited = cfg.run_dir() / stage.inherits if stage.inherits else None
        if is_writer():
            write_result(out, backbone, stage="stage2", settings=dataclasses.asdict(s2), metrics=metrics,
                         run=record, inherited=inherited)
        barrier()
        return out
