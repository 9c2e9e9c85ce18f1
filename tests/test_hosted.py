"""The hosted path: what ``pip install "comalite @ git+<repository>"`` gives a notebook service.

The wheel is built offline from a copy of this working tree (the files git would clone: tracked and untracked,
not ignored) and must carry ``comalite.paths.SHIPPED`` under ``comalite/shipped/``. It is installed into a
fresh virtual environment outside the repository, whose other packages come from this venv through a ``.pth``
file (no network, no second torch): there ``comalite`` is the installed copy, not the checkout, and notebooks
01 and 06 run top to bottom in smoke mode (``scripts/render_notebooks.py``'s ``execute``, as
``tests/test_notebooks.py`` runs them) from a scratch folder, on the shipped tiny VLM and report. Building,
installing and running take about 30 s on one core, so the default suite runs them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from comalite.paths import SHIPPED

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_DIR / "notebooks"
HOSTED_NOTEBOOKS = ("01_data", "06_does_compression_help")
PLACEHOLDER = "/OWNER/"
"""What the first cell's ``REPOSITORY`` holds until the project's public address is filled in."""

RUN_NOTEBOOKS = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("render_notebooks", sys.argv[1])
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)
for path in sys.argv[3:]:
    nb, seconds = render.execute(Path(path), preset=render.SMOKE_PRESET, timeout=600, cwd=Path(sys.argv[2]), inject=True)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    print(f"{Path(path).name}: {seconds:.1f} s (smoke mode, installed wheel)", flush=True)
"""
"""Run in the fresh venv: ``render_notebooks.py``, a working directory, then the notebooks to execute."""


def _first_code_cell(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def _source_tree(dest: Path) -> Path:
    """A copy of the working tree as a clone would have it (``git ls-files``: tracked + untracked, not ignored)."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the working tree's files")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_DIR,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_DIR / name
        if source.is_file():  # a file deleted but not yet committed is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / name)
    return dest


def _isolated_env(tmp: Path) -> dict:
    """This environment, minus anything pointing at the checkout; runs and caches under ``tmp``; offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"COMALITE_HOME": str(tmp / "home"), "COMALITE_DATA": str(tmp / "data"), "HF_HOME": str(tmp / "hf"),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLCONFIGDIR": str(tmp / "mpl"),
                "IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_CONFIG_DIR": str(tmp / "jupyter"),
                "NUMBA_CACHE_DIR": str(tmp / "numba"), "PYTHONNOUSERSITE": "1", "COMALITE_CPU_THREADS": "1",
                "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    return env


def _shipped_files(wheel_names: list[str]) -> dict[str, list[str]]:
    """Per ``SHIPPED`` item, the files the wheel holds for it (relative to the item)."""
    found = {}
    for name in SHIPPED:
        prefix = f"comalite/shipped/{name}"
        found[name] = sorted(n[len(prefix) + 1:] if n != prefix else "" for n in wheel_names
                             if n == prefix or n.startswith(prefix + "/"))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the working tree (no build isolation: this venv's setuptools)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_tree(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp)
    (built,) = (tmp / "dist").glob("comalite-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv outside the repository with the wheel installed (``--no-deps``); the dependencies are this
    venv's, seen through a ``.pth`` file. Returns its python."""
    venv = tmp_path_factory.mktemp("hosted") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_comalite_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # --ignore-installed: this venv's editable comalite is visible through the .pth; it must never be touched.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, cwd=venv.parent, env=_isolated_env(venv.parent))
    return python


def test_the_wheel_carries_what_the_lessons_read(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        found = _shipped_files(names)
        for name, source in SHIPPED.items():
            path = REPO_DIR / source
            expected = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.is_dir() else [""]
            assert found[name] == expected, f"the wheel's comalite/shipped/{name} differs from {source}"
            for relative in expected:
                inside = f"comalite/shipped/{name}" + (f"/{relative}" if relative else "")
                assert archive.read(inside) == (path / relative if relative else path).read_bytes(), inside
    assert "comalite/presets/tiny-smoke.yaml" in names
    print(f"\n{wheel.name}: {wheel.stat().st_size / 2 ** 20:.1f} MiB")


def test_an_installed_copy_finds_the_shipped_files(fresh_venv, tmp_path):
    """Not the checkout: the report and the tiny VLMs are read from the package, in place (checksums verified),
    while its data folder (``$COMALITE_DATA``) has none of its own."""
    probe = """
import json, comalite
from comalite import paths
from comalite.checkpoints import resolve_checkpoint
from comalite.experiment_report import committed_report, load_report
print(json.dumps({"module": comalite.__file__, "repo": str(paths.repo_dir()), "shipped": str(paths.shipped_dir()),
                  "report": str(committed_report()), "runs": len(load_report(committed_report())["runs"]),
                  "smoke": str(resolve_checkpoint("tiny-smoke")), "tiny": str(resolve_checkpoint("tiny"))}))
"""
    done = subprocess.run([str(fresh_venv), "-c", probe], cwd=tmp_path, env=_isolated_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    venv = fresh_venv.parent.parent
    package = Path(found["module"]).parent
    assert package.is_relative_to(venv) and not package.is_relative_to(REPO_DIR)
    assert found["repo"] == "None" and found["shipped"] == str(package / "shipped")
    assert found["report"] == str(package / "shipped" / "experiments" / "does_compression_help") and found["runs"]
    for name, folder in (("tiny-vlm-smoke", found["smoke"]), ("tiny-vlm", found["tiny"])):
        assert folder == str(package / "shipped" / name)  # not built, not copied: the wheel's own
        assert (Path(folder) / "CHECKSUMS").read_bytes() == (REPO_DIR / "data" / name / "CHECKSUMS").read_bytes()
    assert not (tmp_path / "data" / "tiny-vlm").exists()


def _installed_package(python: Path) -> Path:
    """The ``comalite`` folder installed in the fresh venv of ``python``."""
    (package,) = python.parent.parent.glob("lib/python*/site-packages/comalite")
    return package


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_notebooks_run_from_the_installed_wheel(fresh_venv, tmp_path, capsys):
    work, notebooks = tmp_path / "cwd", tmp_path / "notebooks"
    work.mkdir()
    notebooks.mkdir()
    paths = [shutil.copyfile(NOTEBOOK_DIR / f"{name}.ipynb", notebooks / f"{name}.ipynb") for name in HOSTED_NOTEBOOKS]
    package = _installed_package(fresh_venv) / "shipped"
    before = _snapshot(package)
    start = time.perf_counter()
    done = subprocess.run([str(fresh_venv), "-c", RUN_NOTEBOOKS, str(REPO_DIR / "scripts" / "render_notebooks.py"),
                           str(work), *map(str, paths)], cwd=work, env=_isolated_env(tmp_path),
                          capture_output=True, text=True, timeout=1800)
    with capsys.disabled():
        print(f"\n{done.stdout.strip()}\nboth: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert not list(work.iterdir()), "a notebook wrote into its working directory"
    assert _snapshot(package) == before, "something wrote into the installed package"
    assert not (tmp_path / "data" / "tiny-vlm-smoke").exists(), "the shipped VLM was not used: one was built"


def test_every_lesson_installs_from_the_same_repository():
    cells = {path.stem: _first_code_cell(path) for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))}
    repositories = {line for cell in cells.values() for line in cell.splitlines() if line.startswith("REPOSITORY = ")}
    assert len(repositories) == 1, f"the lessons' first cells set different REPOSITORY lines: {sorted(repositories)}"
    for name, cell in cells.items():
        assert "%pip install" in cell and "--upgrade" not in cell and " -U " not in cell, \
            f"{name}: the install must leave a runtime's torch and transformers alone where they satisfy comalite"


def test_the_placeholder_repository_stops_the_install_with_a_message():
    """Where ``import comalite`` fails, a REPOSITORY still holding the placeholder raises before ``%pip``."""
    from IPython.core.inputtransformer2 import TransformerManager

    cell = _first_code_cell(NOTEBOOK_DIR / f"{HOSTED_NOTEBOOKS[0]}.ipynb")
    if PLACEHOLDER not in cell:
        pytest.skip("REPOSITORY holds a real address")
    calls = []

    class Shell:
        def run_line_magic(self, name, line):
            calls.append((name, line))

    code = TransformerManager().transform_cell(cell)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "comalite" or k.startswith("comalite.")}
    sys.modules["comalite"] = None  # import comalite raises ImportError
    try:
        with pytest.raises(RuntimeError, match="REPOSITORY is still the placeholder"):
            exec(compile(code, "first cell", "exec"), {"get_ipython": lambda: Shell()})
    finally:
        del sys.modules["comalite"]
        sys.modules.update(saved)
    assert not calls, "pip ran although REPOSITORY is a placeholder"
