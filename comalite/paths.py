"""Where things live: shipped and generated data, run outputs, committed figures.

Three roots, each overridable by an environment variable so tests, CI and installed copies never write
into a checkout by accident:

- ``data_dir()``: inputs. In a checkout, ``<repo>/data`` (the shipped tiny VLM, generated ShapesWorld);
  ``$COMALITE_DATA`` overrides it; an installed copy without a checkout uses ``<home>/data``.
- ``home_dir()``: outputs (one folder per run name). ``$COMALITE_HOME``, else ``<repo>/runs`` in a
  checkout, else ``~/.cache/comalite``.
- ``figures_dir()``: where full lesson runs save their figures, ``<repo>/docs/figures`` in a checkout.

What the lessons read from a checkout (the tiny VLMs, the committed experiment report) is listed once, in
``SHIPPED``: a built wheel carries those files under ``comalite/shipped/`` (``setup.py`` copies them), so a
``pip install`` of the repository (a hosted notebook service) has them too. ``shipped(name)`` finds one in
the checkout, else in the installed package; the package's copy is only read, never written. An installed copy
reads the tiny VLMs there in place (``checkpoints.resolve_checkpoint``) unless its data folder has its own,
instead of ``comalite build-tiny`` building them (an hour on a CPU).

This module imports only the standard library: ``setup.py`` reads ``SHIPPED`` from it by path.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "shipped"
"""Where a built wheel keeps its copy of ``SHIPPED``; absent in a checkout and an editable install."""

SHIPPED: dict[str, str] = {
    "tiny-vlm": "data/tiny-vlm",
    "tiny-vlm-smoke": "data/tiny-vlm-smoke",
    "references": "data/references",
    "experiments/does_compression_help/results.json": "docs/experiments/does_compression_help/results.json",
    "experiments/does_compression_help/results.md": "docs/experiments/does_compression_help/results.md",
}
"""What an installed copy carries of the checkout: its name under ``comalite/shipped/`` -> the checkout's path
(a folder or a file). The one list: ``setup.py`` builds the wheel from it, ``shipped`` reads it back."""


def repo_dir() -> Path | None:
    """The checkout this package runs from (editable install or source tree), or None when installed."""
    repo = PACKAGE_DIR.parent
    return repo if (repo / "pyproject.toml").exists() and (repo / "notebooks").is_dir() else None


def shipped_dir() -> Path | None:
    """The installed package's copy of ``SHIPPED`` (``comalite/shipped``), or None (a checkout, an editable
    install, or a package built without it)."""
    return SHIPPED_DIR if SHIPPED_DIR.is_dir() else None


def shipped(name: str) -> Path | None:
    """Where the item ``name`` of ``SHIPPED`` is: the checkout's file, else the installed package's copy, else
    None (an installed copy that carries none)."""
    source = SHIPPED[name]
    repo = repo_dir()
    if repo is not None:
        return repo / source
    folder = shipped_dir()
    return folder / name if folder is not None else None


def home_dir() -> Path:
    """Where runs write: ``$COMALITE_HOME``, ``<repo>/runs`` or ``~/.cache/comalite``."""
    if os.environ.get("COMALITE_HOME"):
        return Path(os.environ["COMALITE_HOME"])
    repo = repo_dir()
    return repo / "runs" if repo else Path.home() / ".cache" / "comalite"


def data_dir() -> Path:
    """Where data lives: ``$COMALITE_DATA``, ``<repo>/data`` or ``<home>/data``."""
    if os.environ.get("COMALITE_DATA"):
        return Path(os.environ["COMALITE_DATA"])
    repo = repo_dir()
    return repo / "data" if repo else home_dir() / "data"


def figures_dir() -> Path | None:
    """The committed figures (``<repo>/docs/figures``), or None outside a checkout."""
    repo = repo_dir()
    return repo / "docs" / "figures" if repo else None
