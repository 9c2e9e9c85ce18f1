"""Stage-2 batches built from single-subset sub-batches ("interleaved sub-batching", recipe section 3).

InfoNCE uses the other items of the batch as negatives. Negatives from another task are easy (a VQA
answer is never confused with a class label), so VLM2Vec-V2 builds each batch of 1024 from sub-batches
of 64 that each come from one subset: every query meets 63 same-task negatives plus many easy ones.
Its ablation found 64 best; CoMa uses it. ``sub_batch_size=None`` gives fully mixed batches, and
``sub_batch_size == batch_size`` fully homogeneous ones (one subset per batch).

How one epoch is laid out (all draws from a NumPy generator seeded with ``(seed, epoch)``):

1. Each subset's indices are shuffled and cut into sub-batches of ``sub_batch_size``.
2. What is left of each subset (fewer than ``sub_batch_size`` items: the tail of a subset, or all of a
   subset smaller than a sub-batch) goes into a leftover pool, each subset's leftovers kept together,
   the order of the subsets shuffled. The pool is cut into sub-batches too: these few "leftover
   sub-batches" (at most one per ``sub_batch_size`` leftover items, so at most one per subset) may mix
   subsets. This way no item is ever skipped for its subset being small, which dropping the tails would
   do forever to a subset smaller than a sub-batch.
3. All full sub-batches are shuffled and laid end to end; the pool's last, short piece goes at the very
   end. Batches are consecutive runs of ``batch_size // sub_batch_size`` sub-batches, so every batch but
   the last is full and aligned to sub-batches; ``drop_last`` drops that last batch if it is short.

Every index is used at most once per epoch (exactly once without ``drop_last``), and the number of
batches per epoch does not depend on the seed.

Resuming: the sampler counts the batches it has handed out. ``state_dict()`` / ``load_state_dict()``
save and restore that position; ``seek(global_step)`` places it after ``global_step`` batches counted
from epoch 0, which is what a trainer's step counter knows even when a DataLoader has prefetched
batches past it. Either way the resumed run sees exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The items of optimizer step ``step``: consecutive slices of a fresh seeded permutation per epoch.
    Depends only on its arguments, which is what makes resumed runs exact."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        out.append(int(_epoch_order(seed, epoch, n)[offset]))
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class SubBatchSampler:
    """Yields, per batch, a list of item indices; usable as a DataLoader ``batch_sampler``.

    Args:
        subset_of_each_item: the subset name of item ``i`` at position ``i`` (``TrainPair.subset``).
        batch_size: items per batch (CoMa: 1024).
        sub_batch_size: items per single-subset sub-batch (CoMa: 64); must divide ``batch_size``.
            ``None``: fully mixed batches, a plain shuffle of all items.
        seed: the layout of epoch ``e`` depends only on ``(seed, e)``.
        drop_last: drop the last batch of an epoch if it is short (keeps every batch the same size, which
            GradCache chunking and the cross-device gather want).

    Iterating runs the rest of the current epoch, then moves to the next one, so
    ``for epoch in range(n): for batch in sampler: ...`` walks through ``n`` distinct epochs.
    """

    def __init__(
        self,
        subset_of_each_item: Sequence[str],
        batch_size: int,
        sub_batch_size: int | None = 64,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sub_batch_size is not None and not (1 <= sub_batch_size <= batch_size and batch_size % sub_batch_size == 0):
            raise ValueError(f"sub_batch_size must divide batch_size={batch_size}, got {sub_batch_size}")
        names, codes = np.unique(np.asarray(subset_of_each_item, dtype=str), return_inverse=True)
        # One index array per subset, in sorted-name order so the layout does not depend on item order.
        order = np.argsort(codes, kind="stable")
        self._subsets = np.split(order, np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
        self.num_items = len(codes)
        self.batch_size = batch_size
        self.sub_batch_size = sub_batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.step = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch (every item is laid out, so this is just items over batch size)."""
        if self.drop_last:
            return self.num_items // self.batch_size
        return -(-self.num_items // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All item indices of ``epoch`` in batch order; batch ``k`` is ``[k * batch_size, (k+1) * batch_size)``."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.sub_batch_size is None:
            return rng.permutation(self.num_items)
        size = self.sub_batch_size
        full, leftovers = [], []
        for indices in self._subsets:
            shuffled = rng.permutation(indices)
            cut = len(shuffled) // size * size
            full.append(shuffled[:cut].reshape(-1, size))
            leftovers.append(shuffled[cut:])
        # Shuffle which subsets' leftovers come last, or the same ones would always land in the short piece.
        pool = np.concatenate([leftovers[i] for i in rng.permutation(len(leftovers))])
        cut = len(pool) // size * size
        sub_batches = np.concatenate(full + [pool[:cut].reshape(-1, size)])
        sub_batches = sub_batches[rng.permutation(len(sub_batches))]
        return np.concatenate([sub_batches.reshape(-1), pool[cut:]])

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order(self.epoch)
        while self.step < len(self):
            start = self.step * self.batch_size
            # Count the batch as consumed before handing it out: a state_dict() taken while the caller
            # works on it resumes after it.
            self.step += 1
            yield order[start : start + self.batch_size].tolist()
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.step = epoch, 0

    def seek(self, global_step: int) -> None:
        """Place the sampler after ``global_step`` batches counted from the start of epoch 0."""
        if len(self) == 0:
            raise ValueError("an epoch holds no batch: nothing to seek")
        self.epoch, self.step = divmod(global_step, len(self))

    def _config(self) -> dict:
        return {"num_items": self.num_items, "batch_size": self.batch_size, "sub_batch_size": self.sub_batch_size,
                "seed": self.seed, "drop_last": self.drop_last}

    def state_dict(self) -> dict:
        """The position (``epoch``, ``step``) plus the settings it is only meaningful for."""
        return {"epoch": self.epoch, "step": self.step, **self._config()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position; raises ``ValueError`` if it was saved by a sampler with other settings."""
        saved = {key: state[key] for key in self._config()}
        if saved != self._config():
            raise ValueError(f"sampler state saved with {saved}, this sampler has {self._config()}")
        self.epoch, self.step = state["epoch"], state["step"]
