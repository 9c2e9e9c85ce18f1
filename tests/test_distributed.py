"""Several processes give what one process gives: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one
process, for a stage-1 step with accumulation, a stage-2 GradCache step (dropout on in both) and an
evaluation. Each side runs the real command line in its own processes on the session's tiny-smoke model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")]


def _comalite(out: Path, processes: int, *args: str) -> None:
    """``comalite <args>`` into ``out``, as one process or under torchrun with ``processes`` ranks."""
    launch = ([str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", "-m", "comalite"] if processes > 1
              else [sys.executable, "-m", "comalite"])
    env = {**os.environ, "COMALITE_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *args, "--preset", "tiny-smoke", "--set", f"out_dir={out}"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _updated(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["params"]


def _assert_same_update(one: Path, two: Path, before: dict[str, torch.Tensor]) -> None:
    """The two runs moved every parameter the same way: their updates agree to 1e-5 of the update's size."""
    a, b = _updated(one), _updated(two)
    assert a.keys() == b.keys() == before.keys()
    delta_a = torch.cat([(a[k] - before[k]).flatten() for k in sorted(a)])
    delta_b = torch.cat([(b[k] - before[k]).flatten() for k in sorted(b)])
    assert delta_a.norm() > 0
    assert (delta_a - delta_b).norm() <= 1e-5 * delta_a.norm()


STAGE2 = ["stage2.init=backbone", "stage2.train.steps=1", "stage2.train.batch_size=16", "stage2.sub_batch_size=8",
          "stage2.chunk_size=4", "stage2.train.lr=1e-3", "stage2.train.warmup_ratio=0"]
STAGE1 = ["stage1.train.steps=1", "stage1.train.batch_size=8", "stage1.train.grad_accum=2", "stage1.train.lr=1e-3",
          "stage1.train.warmup_ratio=0"]


def _initial(stage: str, sets: list[str]) -> dict[str, torch.Tensor]:
    """The trainable parameters before the first step (the seeded initialisation both runs start from)."""
    from comalite.config import load_config
    from comalite.stage1 import load_stage1_backbone
    from comalite.stage2 import load_stage2_backbone

    cfg = load_config("tiny-smoke", sets)
    backbone = load_stage1_backbone(cfg) if stage == "stage1" else load_stage2_backbone(cfg)
    return {name: p.detach().clone() for name, p in backbone.trainable_parameters().items()}


@pytest.mark.parametrize("stage, sets, folder", [("stage2", STAGE2, "contrastive_only"), ("stage1", STAGE1, "stage1")])
def test_two_processes_update_like_one(tiny_home, tmp_path, stage, sets, folder):
    args = [stage, *[x for s in sets for x in ("--set", s)]]
    _comalite(tmp_path / "one", 1, *args)
    _comalite(tmp_path / "two", 2, *args)
    _assert_same_update(tmp_path / "one" / folder, tmp_path / "two" / folder, _initial(stage, sets))
    one = json.loads((tmp_path / "one" / folder / "history.json").read_text())
    two = json.loads((tmp_path / "two" / folder / "history.json").read_text())
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert {p.name for p in (tmp_path / "two" / folder).iterdir()} == {p.name for p in (tmp_path / "one" / folder).iterdir()}


def test_distributed_evaluation_equals_one_process(tiny_home, tmp_path):
    args = ["eval", "--models", "base", "--set", "eval.datasets=SW-Count,SW-Object,SW-T2I", "--set", "eval.batch_size=4"]
    _comalite(tmp_path / "one", 1, *args)
    _comalite(tmp_path / "two", 2, *args)
    one = json.loads((tmp_path / "one" / "eval" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "eval" / "results.json").read_text())
    assert two["scores"] == one["scores"]
    assert {d: r["ranks"] for d, r in two["details"]["base"].items()} == \
        {d: r["ranks"] for d, r in one["details"]["base"].items()}
