"""Images prepared ahead of use: decoded and run through the image processor by worker threads while the
model computes.

Stage 1, both GradCache passes of stage 2 and evaluation know in advance which images they will read, in
which order: the batch of step ``s`` depends only on the seed and ``s`` (``comalite.batching``). An
``ImagePrefetcher`` follows that plan a few images ahead (``PREFETCH_FACTOR`` per worker); the sequence
builder (``comalite.sequence.add_image``) then ``take``s an image's patches instead of computing them. Only
the image work runs in the workers: tokenising and assembling examples stay in the main thread, and so do
the vision cache's lookups that decide what a batch holds, so a batch, its losses and its embeddings are
the same with any number of workers. A worker only ``peek``s the cache to skip an image already there.

Threads, not processes: PIL's decode and resize and NumPy's normalisation release the GIL for most of
their time (``benchmarks/bench_input_pipeline.py`` measures the speed-up), the processor and the vision
cache stay shared, and nothing is pickled. Patches are not pinned: the model concatenates a chunk's
patches into one new tensor before it moves to the GPU.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .data.images import load_image
from .processor import VLProcessor

PREFETCH_FACTOR = 4
"""Images kept in preparation per worker, ahead of the one in use."""

MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(setting: str, device: torch.device | str) -> int:
    """``data.workers`` as a number of threads. ``auto``: min(8, cores - 1) when the model runs on a GPU
    (``device``, as ``model.device`` names it); 0 on a CPU, where the step's own torch threads
    (``model.cpu_threads``) already use every core."""
    if setting != "auto":
        return int(setting)
    on_gpu = torch.cuda.is_available() if str(device) == "auto" else torch.device(device).type != "cpu"
    if not on_gpu:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, available_cores() - 1))


def images_of(records: Iterable) -> Iterator[tuple[str, str]]:
    """``(path, origin)`` of each record's image file in order (``EmbedInput`` or ``Dialogue``); in-memory
    images and records without an image are left out."""
    for record in records:
        if isinstance(record.image, str) and record.image:
            yield record.image, record.origin


class ImagePrefetcher:
    """Patches of the images a plan lists, prepared by ``workers`` threads (0: none, everything serial)."""

    def __init__(self, processor: VLProcessor, workers: int):
        self.processor = processor
        self.ahead = PREFETCH_FACTOR * workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="comalite-images") if workers else None
        self.pending: dict[str, deque[Future]] = {}
        self.n_pending = 0
        self.plan: Iterator[tuple[str, str]] = iter(())
        self.next_step: int | None = None

    def follow(self, plan: Iterable[tuple[str, str]]) -> None:
        """Prepare the images of ``plan`` (``(path, origin)`` in order of use), dropping the previous plan."""
        for queue in self.pending.values():
            for future in queue:
                future.cancel()
        self.pending, self.n_pending, self.next_step = {}, 0, None
        self.plan = iter(plan) if self.pool is not None else iter(())
        self._top_up()

    def at_step(self, step: int, plan_from: Callable[[int], Iterable[tuple[str, str]]]) -> None:
        """Before step ``step`` of a training loop: follow ``plan_from(step)`` (the images of step ``step`` and
        of the steps after it), unless the plan followed so far already reaches this step next."""
        if step != self.next_step:
            self.follow(plan_from(step))
        self.next_step = step + 1

    def take(self, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(patches, grid)`` of ``path`` as ``VLProcessor.encode_image`` gives them, if the plan prepared them
        (waiting for its worker); None if the plan does not hold it or the vision cache held it then. A
        worker's error (an unreadable image, named with the row that uses it) is raised here."""
        queue = self.pending.get(path)
        if not queue:
            return None
        future = queue.popleft()
        if not queue:
            del self.pending[path]
        self.n_pending -= 1
        self._top_up()
        return future.result()

    def _top_up(self) -> None:
        while self.n_pending < self.ahead:
            item = next(self.plan, None)
            if item is None:
                return
            path, origin = item
            self.pending.setdefault(path, deque()).append(self.pool.submit(self._prepare, path, origin))
            self.n_pending += 1

    def _prepare(self, path: str, origin: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        cache = self.processor.vision_cache
        if cache is not None and cache.peek(path) is not None:
            return None
        return self.processor.encode_image(load_image(path, origin))
