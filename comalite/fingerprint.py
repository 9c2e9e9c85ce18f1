"""Content hashes: what caches and run records are keyed by (files, images, tensors, settings).

Images are keyed by what they hold, never by their name or modification time alone: ``image_hashes`` reads
each image's bytes. A stage's run record remembers the hashes it computed in a small JSON file
(``ContentHashes``, ``<COMALITE_HOME>/.content-hashes.json``) by (path, size, mtime_ns, inode), so a rerun
over many images does not read them all again; every call still re-reads up to ``RECHECK_BYTES`` of
remembered files (all of them for small data such as the tiny presets', a random sample otherwise), so a
rewrite that kept a file's size and modification time is found, and then every image is hashed again.
The evaluation cache re-reads every image each time (``verify_all``): its key is exact.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .atomic import atomic_write_json
from .paths import home_dir

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 64 * 2**20  # files up to this size are hashed by content, larger ones by size and mtime


def digest(value) -> str:
    """A short stable hash of any JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    """The full sha256 of a file's content, read in 1 MiB blocks (the one place files are hashed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, listing: Path, fix: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` when it is missing or its sha256 is not the ``expected`` one that
    ``listing`` (a ``CHECKSUMS`` file, a ``result.json``) records; ``fix`` says what to do."""
    if not path.is_file():
        raise error(f"{path} is missing (listed in {listing}): {fix}")
    found = sha256_file(path)
    if found != expected:
        raise error(f"{path} is corrupt or was changed: its sha256 is {found}, {listing} expects {expected}: {fix}")


def file_fingerprint(path: str | Path) -> str:
    """A file's content hash (or, above ``FINGERPRINT_BYTES``, its size and modification time)."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size > FINGERPRINT_BYTES:
        return f"size{stat.st_size}-mtime{stat.st_mtime_ns}"
    return sha256_file(path)[:16]


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


# ----------------------------------------------------------------------------- images, by content

HASHES_FILE = ".content-hashes.json"
"""The remembered image hashes, in ``home_dir()`` (``$COMALITE_HOME``): ``{"files": {path: [size,
mtime_ns, inode, hash]}}``. Only a cache: deleting it costs one more read of the images."""

RECHECK_BYTES = 256 * 2**20
"""How many bytes of remembered files ``image_hashes`` re-reads per call to check the memory still holds."""

MISSING = "missing"
"""The hash of a file that cannot be read (the readers have already refused a missing image)."""

_THREADS = 8  # hashlib and file reads release the GIL: a few threads hide the latency of cold reads


def content_hash(path: str | Path) -> str:
    """The hash of a file's whole content (any size), or ``MISSING``."""
    try:
        return sha256_file(path)[:16]
    except OSError:
        return MISSING


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class ContentHashes:
    """Content hashes remembered by (path, size, mtime_ns, inode) in a JSON file, written atomically (a
    concurrent writer's entries are merged in, and losing some only costs a re-read)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else home_dir() / HASHES_FILE
        self.files = self._read()
        self.fresh: dict[str, list] = {}

    def _read(self) -> dict[str, list]:
        try:
            files = json.loads(self.path.read_text())["files"]
            return files if isinstance(files, dict) else {}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def get(self, path: str, stat: list[int]) -> str | None:
        entry = self.files.get(path)
        return entry[3] if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stat else None

    def put(self, path: str, stat: list[int], value: str) -> None:
        if value != MISSING and self.files.get(path) != [*stat, value]:
            self.files[path] = self.fresh[path] = [*stat, value]

    def save(self) -> None:
        if not self.fresh:
            return
        files = self._read()
        files.update(self.fresh)
        try:
            atomic_write_json({"version": 1, "files": files}, self.path)
        except OSError as err:  # a read-only home: the hashes are simply computed again next time
            log.warning("cannot remember image hashes in %s (%s)", self.path, err)
        self.fresh = {}


def _hash_all(paths: list[str]) -> list[str]:
    if len(paths) < 64:
        return [content_hash(p) for p in paths]
    with ThreadPoolExecutor(min(_THREADS, len(paths))) as pool:
        return list(pool.map(content_hash, paths, chunksize=32))


def image_hashes(paths, *, verify_all: bool = False, store: ContentHashes | None = None,
                 recheck_bytes: int = RECHECK_BYTES) -> dict[str, str]:
    """``{path: content hash}`` for each distinct path (``MISSING`` for a file that cannot be read).

    ``verify_all`` reads every file. Otherwise a file whose (size, mtime_ns, inode) matches ``store``'s
    entry (default: the one in ``home_dir()``) takes the remembered hash, except the remembered files
    re-read as a check: all of them when they total at most ``recheck_bytes``, else a random sample that
    fits. A checked file whose content changed (a rewrite that kept size and mtime) means the memory cannot
    be trusted: every file is then read."""
    paths = sorted({os.path.abspath(str(p)) for p in paths})
    if verify_all:
        return dict(zip(paths, _hash_all(paths)))
    store = store if store is not None else ContentHashes()
    stats = {p: _stat(p) for p in paths}
    remembered = {p: store.get(p, s) for p, s in stats.items() if s is not None}
    remembered = {p: h for p, h in remembered.items() if h is not None}
    check = list(remembered)
    if sum(stats[p][0] for p in check) > recheck_bytes:
        random.shuffle(check)  # unseeded: successive runs check other files
        budget, sample = recheck_bytes, []
        for p in check:
            if stats[p][0] <= budget:
                sample.append(p)
                budget -= stats[p][0]
        check = sample
    todo = [p for p in paths if p not in remembered] + check
    hashes = dict(zip(todo, _hash_all(todo)))
    fooled = [p for p in check if hashes[p] != remembered[p]]
    if fooled:
        log.warning("%s changed without its size or modification time changing (%d of %d checked files): "
                    "reading all %d images again", fooled[0], len(fooled), len(check), len(paths))
        rest = [p for p in remembered if p not in hashes]
        hashes.update(zip(rest, _hash_all(rest)))
    out = {p: hashes.get(p) or remembered[p] for p in paths}
    for p, value in hashes.items():
        if stats[p] is not None:
            store.put(p, stats[p], value)
    store.save()
    return out


def images_fingerprint(paths, root: str | Path, *, store: ContentHashes | None = None,
                       recheck_bytes: int = RECHECK_BYTES) -> dict:
    """``{"count", "content"}``: how many distinct images, and one hash of each one's path relative to
    ``root`` and content. A content-identical copy of the images under another root has the same one."""
    hashes = image_hashes(paths, store=store, recheck_bytes=recheck_bytes)
    root = os.path.abspath(str(root))
    return {"count": len(hashes),
            "content": digest(sorted([os.path.relpath(p, root), h] for p, h in hashes.items()))}
