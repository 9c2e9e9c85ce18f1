"""Where things live: shipped and generated data, run outputs, committed figures.

Three roots, each overridable by an environment variable so tests, CI and installed copies never write
into a checkout by accident:

- ``data_dir()``: inputs. In a checkout, ``<repo>/data`` (the shipped tiny VLM, generated ShapesWorld);
  ``$COMALITE_DATA`` overrides it; an installed copy without a checkout uses ``<home>/data``.
- ``home_dir()``: outputs (one folder per run name). ``$COMALITE_HOME``, else ``<repo>/runs`` in a
  checkout, else ``~/.cache/comalite``.
- ``figures_dir()``: where full lesson runs save their figures, ``<repo>/docs/figures`` in a checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_dir() -> Path | None:
    """The checkout this package runs from (editable install or source tree), or None when installed."""
    repo = PACKAGE_DIR.parent
    return repo if (repo / "pyproject.toml").exists() and (repo / "notebooks").is_dir() else None


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
