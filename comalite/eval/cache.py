"""A resumable on-disk cache of embeddings, keyed by what they depend on: the model and the inputs.

Layout::

    cache_dir/<model fingerprint>/<dataset slug>-<inputs fingerprint>/rows_<start>-<stop>.npy

The model fingerprint (``Embedder.fingerprint``) changes whenever the embeddings could: other weights,
pooling, image size, K. The inputs fingerprint hashes the ordered distinct inputs: texts and each image
file's content, read anew on every call (``comalite.fingerprint.image_hashes(verify_all=True)``): an image
rewritten at the same path, even to the same size with its modification time put back, is a new input, and
a content-identical copy of the images in another folder is the same one. Each
``rows_*`` file holds the embeddings of distinct inputs ``start..stop-1``, written atomically, one per
encoded batch, so an interrupted run resumes with only the missing rows, whatever either run's batch size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch.distributed as dist

from comalite.atomic import atomic_write
from comalite.distributed import barrier, distributed, is_writer, rank, world_size
from comalite.fingerprint import image_hashes
from comalite.progress import progress_bar
from comalite.records import EmbedInput

log = logging.getLogger(__name__)

NORM_TOL = 1e-3
"""How far from 1 an embedding's L2 norm may be before the embedder is rejected as not normalised."""

_CHUNK = re.compile(r"rows_(\d+)-(\d+)\.npy")


def slug(text: str) -> str:
    """A short file-system-safe name that stays unique: readable tail + hash of the full text."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-48:]
    return f"{readable}-{digest}" if readable else digest


def inputs_fingerprint(inputs: list[EmbedInput]) -> str:
    """A hash of the ordered inputs: texts and each image file's content (every image is read again)."""
    hashes = image_hashes({item.image for item in inputs if item.image}, verify_all=True)
    keys = [[item.text, hashes[os.path.abspath(item.image)] if item.image else ""] for item in inputs]
    return hashlib.sha256(json.dumps(keys, ensure_ascii=False).encode()).hexdigest()[:16]


def cache_folder(cache_dir: str | Path | None, model_fingerprint: str, dataset: str,
                 inputs: list[EmbedInput], inputs_key: str | None = None) -> Path | None:
    """``cache_dir/<model fingerprint>/<dataset>-<inputs fingerprint>`` (``inputs_key`` when the caller
    computed it already), or None when caching is off."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / slug(model_fingerprint) / f"{slug(dataset)}-{inputs_key or inputs_fingerprint(inputs)}"


def _load_chunks(folder: Path, n: int) -> dict[int, np.ndarray]:
    """The cached chunks in ``folder`` by start row; unreadable or inconsistent files are ignored."""
    chunks = {}
    for path in sorted(folder.glob("rows_*.npy")):
        match = _CHUNK.fullmatch(path.name)
        if not match:
            continue
        lo, hi = int(match[1]), int(match[2])
        try:
            array = np.load(path)
        except (OSError, ValueError) as err:  # atomic writes make this rare; re-encode rather than fail
            log.warning("ignoring unreadable cache file %s: %s", path, err)
            continue
        if 0 <= lo < hi <= n and array.shape[0] == hi - lo:
            chunks[lo] = array
    return chunks


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save on a path would append ".npy" to the temp name
        np.save(fh, array)


def _missing_batches(done: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``batch_size`` rows covering every row not yet ``done``."""
    batches = []
    i, n = 0, len(done)
    while i < n:
        if done[i]:
            i += 1
            continue
        j = i
        while j < n and not done[j] and j - i < batch_size:
            j += 1
        batches.append((i, j))
        i = j
    return batches


def checked_embeddings(embedder, batch: list[EmbedInput]) -> np.ndarray:
    """``embedder.embed(batch)`` as float32, after checking its shape and that rows are unit vectors."""
    out = np.asarray(embedder.embed(batch), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise ValueError(f"{embedder.name}: embed() returned shape {out.shape} for {len(batch)} inputs")
    norms = np.linalg.norm(out, axis=1)
    if not np.all(np.abs(norms - 1.0) <= NORM_TOL):
        raise ValueError(
            f"{embedder.name}: embed() must return L2-normalised rows (cosine = dot product); "
            f"got norms from {norms.min():.4g} to {norms.max():.4g}"
        )
    return out


def cached_embeddings(embedder, inputs: list[EmbedInput], cache: Path | None, batch_size: int, progress: bool,
                      desc: str) -> tuple[np.ndarray, int]:
    """Embeddings of all ``inputs`` (cached rows loaded, the rest encoded and cached) and how many were encoded.

    Under ``torch.distributed`` the missing batches are dealt out to the processes and the embeddings gathered:
    every process returns the same array, the one a single process would compute."""
    # Every process reads the cache as it stands before any of them writes to it: a process that listed it after
    # another's first write would deal the batches out differently, and some rows would be encoded by nobody.
    barrier()
    chunks = _load_chunks(cache, len(inputs)) if cache is not None and cache.is_dir() else {}
    barrier()
    done = np.zeros(len(inputs), dtype=bool)
    for lo, array in chunks.items():
        done[lo : lo + len(array)] = True
    todo = _missing_batches(done, batch_size)[rank()::world_size()]
    prepare = getattr(embedder, "prepare", None)  # an embedder that reads ahead (EmbeddingModel) is told the plan
    if prepare is not None:
        prepare([item for lo, hi in todo for item in inputs[lo:hi]])
    fresh = {}
    for lo, hi in progress_bar(todo, enabled=progress and is_writer() and bool(todo), desc=f"{embedder.name} / {desc}",
                               unit="batch"):
        array = checked_embeddings(embedder, inputs[lo:hi])
        if cache is not None:
            atomic_write(cache / f"rows_{lo:07d}-{hi:07d}.npy", lambda tmp: _save_npy(tmp, array))
        fresh[lo] = array
    if distributed():
        shares = [None] * world_size()
        dist.all_gather_object(shares, fresh)
        fresh = {lo: array for share in shares for lo, array in share.items()}
    chunks.update(fresh)
    n_encoded = sum(len(array) for array in fresh.values())
    # Overlapping cached chunks (from runs with other batch sizes) hold the same rows: any copy will do.
    dims = {array.shape[1] for array in chunks.values()}
    if len(dims) != 1:
        raise ValueError(f"{embedder.name}: inconsistent embedding sizes {sorted(dims)} in the cache at {cache}")
    embeddings = np.empty((len(inputs), dims.pop()), dtype=np.float32)
    for lo, array in sorted(chunks.items()):
        embeddings[lo : lo + len(array)] = array
    return embeddings, n_encoded
