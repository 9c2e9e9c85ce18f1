"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint, result or data file; and the
one reader of the JSON records they write, which names a truncated or malformed one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .errors import ComaliteError, CorruptFileError


class WriteError(ComaliteError, OSError):
    """A file that could not be written (disk full, no permission). An ``OSError`` too, so callers that can
    do without the file (a cache) still catch it as one."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden temporary sibling of ``path``, then rename it onto ``path``.

    The temporary name starts with a dot so that folder globs (``test*.parquet``) never pick it up. A write that
    fails (a full disk: ``OSError``, or torch's ``RuntimeError`` from ``torch.save``) raises ``WriteError`` naming
    ``path``; the temporary file is removed and an earlier ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except ComaliteError:
        raise
    except (OSError, RuntimeError) as err:
        why = " ".join(str(getattr(err, "strerror", None) or err or type(err).__name__).split())
        kept = "the earlier file is kept as it was" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: could not be written ({why[:300]}): disk full? Free some space (or write "
                         f"elsewhere) and run the same command again; {kept}") from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(data, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def read_json_object(path: Path, what: str, fix: str, error: type[Exception] = CorruptFileError) -> dict:
    """``path``'s JSON object (a run record, a result, a dataset description); a malformed, non-UTF-8 or
    non-object file raises ``error`` naming it, ``what`` it should hold and the ``fix``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: holds a JSON {type(value).__name__}, not {what}; {fix}")
    return value
