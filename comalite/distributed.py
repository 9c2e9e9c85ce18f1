"""Several processes, one result: the little comalite needs from ``torch.distributed``.

Launch any command with ``torchrun --nproc_per_node N -m comalite <command> ...``: every process runs the
same code on its share of each global batch. The trainable parameters are few (adapters and K rows), so
the engine is plain data parallelism by hand: gradients are averaged once per optimizer step
(``comalite.trainer``), contrastive embeddings are gathered so every query meets every rank's targets
(``comalite.loss``), and rank 0 alone writes files. Dropout masks are seeded per chunk from the step and the
chunk's position in the global batch (``seed_chunk``), so N processes draw exactly the masks one process
would: the update of N processes of batch B/N equals that of one process of batch B.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if cuda else "gloo")


def distributed() -> bool:
    """Whether this process is one of several ``torch.distributed`` ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def is_writer() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, results and reports."""
    return rank() == 0


def barrier() -> None:
    if distributed():
        dist.barrier()


def local_share(items: list, what: str) -> list:
    """This rank's contiguous share of a global batch (``what`` names it in the error if it does not split)."""
    n = world_size()
    if len(items) % n:
        raise ValueError(f"{what} of {len(items)} does not split over {n} processes")
    size = len(items) // n
    return items[rank() * size:(rank() + 1) * size]


def seed_chunk(seed: int, step: int, *position: int) -> None:
    """Seed torch's generators for the chunk at ``position`` (e.g. group and index in the global batch) of
    optimizer step ``step``: its dropout masks then do not depend on how many processes share the batch."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, *position]).generate_state(1)[0]))
