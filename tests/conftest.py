"""Shared fixtures: an offline, seeded miniature of the whole pipeline, built once per test session.

Everything lives under temporary folders (``COMALITE_HOME`` for runs, ``COMALITE_DATA`` for data): the
``tiny-smoke`` preset's small ShapesWorld and its briefly trained tiny VLM (it only has to be a working
Qwen2-VL checkpoint; the repository ships it in ``data/tiny-vlm-smoke``, copied in, built only if absent). One torch thread per process
(``COMALITE_CPU_THREADS=1``): notebook kernels and a demo may run beside the tests on two cores.
"""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="comalite-tests-"))
if not os.environ.get("COMALITE_KEEP_TEST_HOME"):  # set it to inspect a session's runs afterwards
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["COMALITE_HOME"] = str(_HOME / "home")
# COMALITE_TEST_DATA: a data folder an earlier session built (smoke ShapesWorld + tiny VLM), to iterate faster.
os.environ["COMALITE_DATA"] = os.environ.get("COMALITE_TEST_DATA") or str(_HOME / "data")
_SHIPPED_SMOKE = Path(__file__).resolve().parent.parent / "data" / "tiny-vlm-smoke"
if not os.environ.get("COMALITE_TEST_DATA") and _SHIPPED_SMOKE.is_dir():
    # The repository's smoke VLM (checksummed): every machine tests the same weights, and no session pays
    # its build; tests/test_benchmarks.py still runs the build itself.
    shutil.copytree(_SHIPPED_SMOKE, _HOME / "data" / _SHIPPED_SMOKE.name)
os.environ["COMALITE_CPU_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_HOME / "hf"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", str(_HOME / "mpl"))
os.environ.setdefault("TQDM_DISABLE", "1")

REPO_DIR = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_DIR / "benchmarks"


def make_config(*overrides: str, out: Path | None = None):
    """The ``tiny-smoke`` preset (the session's small data); ``out`` is the run folder."""
    from comalite.config import load_config

    sets = ([f"out_dir={out}"] if out is not None else []) + list(overrides)  # a test's own out_dir wins
    return load_config("tiny-smoke", sets)


@pytest.fixture(scope="session")
def tiny_home() -> Path:
    """Builds (once) the smoke-mode ShapesWorld and tiny VLM that the name ``tiny-smoke`` resolves to."""
    from comalite.pipeline import ensure_backbone

    ensure_backbone(make_config())
    return Path(os.environ["COMALITE_DATA"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_home) -> Path:
    return tiny_home / "tiny-vlm-smoke"


@pytest.fixture(scope="session")
def data_root(tiny_home) -> Path:
    from comalite.data.sources import ensure_data

    return ensure_data(make_config())


@pytest.fixture
def tiny_config(tmp_path, tiny_home):
    """``tiny_config(*overrides)``: the tiny preset on the session data, writing into this test's tmp dir."""
    return lambda *overrides: make_config(*overrides, out=tmp_path / "run")


@pytest.fixture
def bench(monkeypatch):
    """``bench(name)`` imports ``benchmarks/<name>.py`` (importable by the benchmarks' worker processes too)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model loads: the error depends only on settings and folders."""
    from cli_checks import refuse_model_loads

    refuse_model_loads(monkeypatch)
