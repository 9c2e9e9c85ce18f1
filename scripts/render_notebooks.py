#!/usr/bin/env python
"""Regenerate the committed lesson notebooks, outputs included, from a real tiny-preset run.

    .venv/bin/python scripts/render_notebooks.py --fresh   # every notebook, SMOKE = False (full tiny preset),
                                                           # after removing the preset's old run folders
    .venv/bin/python scripts/render_notebooks.py 02 03     # only the notebooks whose names start with these
    .venv/bin/python scripts/render_notebooks.py --smoke   # quick check in smoke mode; writes nothing in the repo

Each notebook runs top to bottom in a fresh ``python3`` kernel of this interpreter, with its ``parameters``
cell set to ``SMOKE = ...`` / ``PRESET = ...``. A full render writes the notebook back in place with its
outputs, and the notebooks save their figures into ``docs/figures/``; ``--smoke`` writes nothing in the
repository (executed copies go to ``--out`` if given). The notebooks share the run folder
(``$COMALITE_HOME/tiny``, default ``<repo>/runs/tiny``): a stage an earlier notebook finished is reused.
Without ``--fresh`` they also reuse what an earlier run (``comalite demo``, an older render) left there;
``--fresh`` deletes the run folders first (not the data or the tiny VLM), so every output comes from one
run. The first full render also builds ShapesWorld and the tiny VLM if missing (10-20 minutes on a laptop
CPU); a full render takes about half an hour more.

``tests/test_notebooks.py`` uses ``execute`` from here to run every notebook in smoke mode.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_DIR / "notebooks"
KERNEL = "python3"


def notebooks(prefixes: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The numbered lesson notebooks in order, optionally only those whose names start with a prefix."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]


def kernel_python() -> str:
    """The interpreter the ``python3`` kernel will run: it must be this one (the venv), not another Python
    that happens to have a kernel spec."""
    from jupyter_client.manager import KernelManager

    return KernelManager(kernel_name=KERNEL).format_kernel_cmd()[0]


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def set_parameters(source: str, values: dict) -> str:
    """The parameters cell's source with each ``NAME = ...`` line set to ``values[NAME]`` (comments kept)."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name}\s*=.*$", re.MULTILINE)
        if not pattern.search(source):
            raise ValueError(f"the parameters cell has no '{name} = ...' line")
        source = pattern.sub(f"{name} = {_literal(value)}", source, count=1)
    return source


def _literal(value) -> str:
    return '"' + value + '"' if isinstance(value, str) else repr(value)


def kernel_env() -> dict:
    """The kernel's environment: this process's (``COMALITE_HOME`` included), inline plots, no progress bars."""
    env = dict(os.environ)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["TQDM_DISABLE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def execute(path: Path, *, smoke: bool, preset: str = "tiny", timeout: int = 3600, cwd: Path | None = None,
            inject: bool = False, check_kernel: bool = True):
    """Run one notebook in a fresh kernel; returns ``(executed notebook, seconds)``. Raises nbclient's
    ``CellExecutionError`` on the first failing cell.

    ``inject=False`` rewrites the ``parameters`` cell itself (what a render commits); ``inject=True`` leaves
    it alone and adds an ``injected-parameters`` cell after it (papermill's way; what the test does).
    ``check_kernel`` also makes the first code cell assert that the kernel runs this very interpreter.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    index = _parameters_cell(nb)
    values = {"SMOKE": smoke, "PRESET": preset}
    if inject:
        cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {_literal(v)}" for k, v in values.items()))
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(index + 1, cell)
    else:
        nb.cells[index].source = set_parameters(nb.cells[index].source, values)
    check = None
    if check_kernel:
        check = nbformat.v4.new_code_cell(f"import sys as _sys\nassert _sys.prefix == {sys.prefix!r}, _sys.executable")
        nb.cells.insert(0, check)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    start = time.perf_counter()
    client.execute(env=kernel_env())
    seconds = time.perf_counter() - start
    if check is not None:
        nb.cells.remove(check)
        count = 0
        for c in nb.cells:  # number the remaining cells from 1 again
            if c.cell_type == "code" and c.get("execution_count"):
                count += 1
                c.execution_count = count
                for out in c.get("outputs", []):
                    if "execution_count" in out:
                        out["execution_count"] = count
    return nb, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="quick check in smoke mode; writes nothing in the repo")
    parser.add_argument("--preset", default="tiny", help="PRESET parameter (default: tiny)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--out", type=Path, help="write executed copies here instead of in place")
    parser.add_argument("--fresh", action="store_true",
                        help="first delete the preset's run folders (<run> and <run>-nomask; data and VLM are kept)")
    args = parser.parse_args(argv)

    import nbformat

    paths = notebooks(args.only)
    if not paths:
        parser.error(f"no notebook in {NOTEBOOK_DIR} matches {args.only}")
    python = kernel_python()
    print(f"kernel '{KERNEL}' runs {python}; COMALITE_HOME={os.environ.get('COMALITE_HOME', '(default)')}")
    if args.fresh:
        import shutil

        from comalite.config import load_config

        run = load_config(args.preset, smoke=args.smoke).run_dir()
        for folder in (run, run.with_name(run.name + "-nomask")):
            if folder.exists():
                print(f"removing {folder}")
                shutil.rmtree(folder)
    total = 0.0
    for path in paths:
        print(f"{path.name}: running ({'smoke' if args.smoke else 'full'} {args.preset}) ...", flush=True)
        nb, seconds = execute(path, smoke=args.smoke, preset=args.preset, timeout=args.timeout)
        total += seconds
        target = args.out / path.name if args.out else (None if args.smoke else path)
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
        print(f"{path.name}: {seconds:.0f} s" + (f" -> {target}" if target else ""), flush=True)
    print(f"all {len(paths)} notebooks: {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
