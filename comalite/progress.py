"""Progress bars for long work, one switch for all of them: ``TQDM_DISABLE=1`` turns every comalite bar off.

``tqdm.auto`` picks the widget bar in a notebook, and that bar ignores tqdm's own environment variable,
so comalite reads it here instead of patching tqdm.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown when ``enabled`` and not switched off by ``TQDM_DISABLE``."""
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)
