"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint, result or data file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden temporary sibling of ``path``, then rename it onto ``path``.

    The temporary name starts with a dot so that folder globs (``test*.parquet``) never pick it up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(data, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))
