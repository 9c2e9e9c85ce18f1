"""Shared fixtures: an offline, seeded miniature of the whole pipeline, built once per test session.

Everything lives under a temporary ``COMALITE_HOME``: a small ShapesWorld and a tiny VLM whose stage 0 is
short (it only has to be a working Qwen2-VL checkpoint; the full build is the demo's job).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="comalite-tests-"))
os.environ["COMALITE_HOME"] = str(_HOME / "home")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_HOME / "hf"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", str(_HOME / "mpl"))
os.environ.setdefault("TQDM_DISABLE", "1")

TEST_DATA = ["data.n_stage1_images=360", "data.n_train_per_subset=120", "data.n_eval_queries=24",
             "data.n_candidates=8", "stage1.heldout=60"]


def make_config(*overrides: str, out: Path | None = None):
    """The tiny preset on the session's small data; ``out`` is the run folder."""
    from comalite.config import load_config

    sets = list(TEST_DATA) + list(overrides)
    if out is not None:
        sets.append(f"out_dir={out}")
    return load_config("tiny", sets)


@pytest.fixture(scope="session")
def tiny_home() -> Path:
    """Builds (once) the small ShapesWorld and the tiny VLM that the preset name ``tiny`` resolves to."""
    from comalite.config import TrainConfig, home_dir
    from comalite.tiny import TinyConfig, build_tiny_vlm

    home = home_dir()
    if not (home / "tiny-vlm" / "tiny_report.json").exists():
        tc = TinyConfig(stage0=TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_ratio=0.05, save_every=0))
        build_tiny_vlm(home / "tiny-vlm", tc, data_cfg=make_config())
    return home


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_home) -> Path:
    return tiny_home / "tiny-vlm"


@pytest.fixture(scope="session")
def data_root(tiny_home) -> Path:
    from comalite.datasets import ensure_data

    return ensure_data(make_config())


@pytest.fixture
def tiny_config(tmp_path, tiny_home):
    """``tiny_config(*overrides)``: the tiny preset on the session data, writing into this test's tmp dir."""
    return lambda *overrides: make_config(*overrides, out=tmp_path / "run")
