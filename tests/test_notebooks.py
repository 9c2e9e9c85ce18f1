"""Every lesson notebook runs top to bottom in smoke mode and passes its own asserts.

Each notebook is executed with nbclient in a fresh ``python3`` kernel of this interpreter (the venv), with
an injected ``SMOKE = True`` after its ``parameters`` cell, in a scratch working directory (paths must come
from the package, never from the working directory). The kernel inherits this session's environment, so
it works under the session's ``COMALITE_HOME`` on the smoke-mode tiny VLM and data (``tiny_home``).
The notebooks run in order and share the smoke run folder: later ones reuse the stages earlier ones ran.
Each notebook checks its key numbers with ``assert`` in its own cells; any error fails the test.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO_DIR = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600  # seconds per cell; smoke notebooks take about a minute in all


def _render_module():
    spec = importlib.util.spec_from_file_location("render_notebooks", REPO_DIR / "scripts" / "render_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()
NOTEBOOKS = render.notebooks()
EXPECTED = ["01_data", "02_stage1_compression", "03_stage2_contrastive", "04_mmeb_subsets", "05_embedding_space"]


def test_the_numbered_series_is_complete():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_the_kernel_is_this_python():
    assert Path(render.kernel_python()).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tiny_home, tmp_path, capsys):
    nb, seconds = render.execute(path, smoke=True, timeout=CELL_TIMEOUT, cwd=tmp_path, inject=True)
    with capsys.disabled():  # shown even without -s
        print(f"\n{path.name}: {seconds:.1f} s (smoke mode)")
    assert not list(tmp_path.iterdir()), "the notebook wrote into its working directory"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
