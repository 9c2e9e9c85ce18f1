"""The frozen vision tower's output, computed once per image.

In stages 1 and 2 and in evaluation the vision tower is frozen, so the merged image tokens it hands the
language model are a pure function of the image file and the image settings. Yet stage 2 encodes each image
twice per step (GradCache's two passes) and again every epoch, and evaluation encodes the same candidate
images for every model. A ``VisionCache`` keeps each image's grid and tokens, bounded by a byte budget
(least recently used out), shared by every model loaded from the same checkpoint with the same image
settings. Entries are keyed by the file's path, size and modification time, so an image rewritten in place
is encoded again. Off by default (``model.vision_cache_mb=0``); the tiny preset turns it on. Thread-safe:
``comalite.prefetch``'s workers ``peek`` while the main thread looks up and adds.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch


class VisionCache:
    """Image path -> (grid (t, h, w), merged tokens (n, H)), at most ``budget_bytes`` of tokens."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _key(path: str) -> tuple:
        stat = os.stat(path)
        return path, stat.st_size, stat.st_mtime_ns

    def get(self, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The entry of ``path`` (now the most recently used), or None."""
        key = self._key(path)
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            return entry

    def peek(self, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The entry of ``path``, or None, leaving the order of use as it is (what evicts next)."""
        key = self._key(path)
        with self.lock:
            return self.entries.get(key)

    def put(self, path: str, grid: torch.Tensor, tokens: torch.Tensor) -> None:
        key = self._key(path)
        size = tokens.numel() * tokens.element_size()
        with self.lock:
            if key in self.entries:
                return
            while self.entries and self.used + size > self.budget:
                _, (_, old) = self.entries.popitem(last=False)
                self.used -= old.numel() * old.element_size()
            if size <= self.budget:
                self.entries[key] = (grid, tokens.detach())
                self.used += size


_SHARED: dict[str, VisionCache] = {}


def shared_cache(identity: str, megabytes: int) -> VisionCache | None:
    """The process-wide cache of one vision tower (``identity``: checkpoint and image settings), or None."""
    if megabytes <= 0:
        return None
    if identity not in _SHARED:
        _SHARED[identity] = VisionCache(megabytes * 2**20)
    return _SHARED[identity]
