"""Shared fixtures: an offline, seeded miniature of the whole pipeline, built once per test session.

Everything lives under a temporary ``COMALITE_HOME``: a small ShapesWorld and a tiny VLM whose stage 0 is
short (it only has to be a working Qwen2-VL checkpoint; the full build is the demo's job).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="comalite-tests-"))
if not os.environ.get("COMALITE_KEEP_TEST_HOME"):  # set it to inspect a session's runs afterwards
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["COMALITE_HOME"] = str(_HOME / "home")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_HOME / "hf"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", str(_HOME / "mpl"))
os.environ.setdefault("TQDM_DISABLE", "1")

def make_config(*overrides: str, out: Path | None = None):
    """The tiny preset in smoke mode (the session's small data); ``out`` is the run folder."""
    from comalite.config import load_config

    sets = ([f"out_dir={out}"] if out is not None else []) + list(overrides)  # a test's own out_dir wins
    return load_config("tiny", sets, smoke=True)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to share, and on a busy 2-core machine two threads spin
    against other processes (a GradCache step measured 10-20x slower): the tiny preset's cpu_threads=1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_home() -> Path:
    """Builds (once) the smoke-mode ShapesWorld and tiny VLM that the preset name ``tiny-smoke`` resolves to."""
    from comalite.config import home_dir
    from comalite.tiny import ensure_tiny_vlm

    ensure_tiny_vlm(smoke=True)
    return home_dir()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_home) -> Path:
    return tiny_home / "tiny-vlm-smoke"


@pytest.fixture(scope="session")
def data_root(tiny_home) -> Path:
    from comalite.datasets import ensure_data

    return ensure_data(make_config())


@pytest.fixture
def tiny_config(tmp_path, tiny_home):
    """``tiny_config(*overrides)``: the tiny preset on the session data, writing into this test's tmp dir."""
    return lambda *overrides: make_config(*overrides, out=tmp_path / "run")
