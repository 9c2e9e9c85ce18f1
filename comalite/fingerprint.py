"""Content hashes: what caches and run records are keyed by (files, tensors, settings)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FINGERPRINT_BYTES = 64 * 2**20  # files up to this size are hashed by content, larger ones by size and mtime


def digest(value) -> str:
    """A short stable hash of any JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """A file's content hash (or, above ``FINGERPRINT_BYTES``, its size and modification time)."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size > FINGERPRINT_BYTES:
        return f"size{stat.st_size}-mtime{stat.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def files_fingerprint(paths) -> str:
    """One hash over several files, by name and content."""
    return digest([[Path(p).name, file_fingerprint(p)] for p in sorted(map(str, paths))])


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors' exact values (adapter weights, compression rows)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
