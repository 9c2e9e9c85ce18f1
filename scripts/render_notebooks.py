#!/usr/bin/env python
"""Run the lesson notebooks top to bottom; a full render writes them back with their outputs.

    .venv/bin/python scripts/render_notebooks.py --fresh   # every notebook on the full tiny preset, from empty
                                                           # run folders, written back in place with outputs
    .venv/bin/python scripts/render_notebooks.py 02 03     # only the notebooks whose names start with these
    .venv/bin/python scripts/render_notebooks.py --smoke   # the quick check (PRESET = "tiny-smoke"); writes no
                                                           # notebook or figure into the repository
    .venv/bin/python scripts/render_notebooks.py --smoke --out /tmp/nb 02   # ... keeping the executed copies

Each notebook runs in a fresh ``python3`` kernel of this interpreter, with its ``parameters`` cell set to
``PRESET = ...`` and ``OVERRIDES = [...]`` (``--preset``, ``--set``; ``--smoke`` is ``--preset tiny-smoke``).
Where figures go is ``comalite.lesson``'s rule: the full ``tiny`` preset without overrides saves them into
``docs/figures/`` and only that render is written back in place; any other one needs ``--out`` to keep its
executed notebooks (its figures stay in its run folder). The notebooks share the run folder
(``$COMALITE_HOME/<run name>``, default ``<repo>/runs/tiny``): a stage an earlier notebook finished is reused.
Without ``--fresh`` they also reuse what an earlier run (``comalite demo``, an older render) left there;
``--fresh`` deletes the preset's run folders first (``<run>`` and the ablation's ``<run>-nomask``; never the
data or the tiny VLM), so that every output comes from one run. The first full render also builds
ShapesWorld and the tiny VLM if they are missing.

``tests/test_notebooks.py`` uses ``execute`` from here to run every notebook in smoke mode.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_DIR / "notebooks"
KERNEL = "python3"
SMOKE_PRESET = "tiny-smoke"
COMMITTED_PRESET = "tiny"  # comalite.lesson.COMMITTED_PRESET (not imported: this module must load without torch)


def notebooks(prefixes: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The numbered lesson notebooks in order, optionally only those whose names start with a prefix."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]


def kernel_python() -> str:
    """The interpreter the ``python3`` kernel will run: it must be this one (the venv), not another Python
    that happens to have a kernel spec."""
    from jupyter_client.manager import KernelManager

    return KernelManager(kernel_name=KERNEL).format_kernel_cmd()[0]


def parameters_cell(nb) -> int:
    """Index of the notebook's one cell tagged ``parameters``."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def set_parameters(source: str, values: dict) -> str:
    """The parameters cell's source with each ``NAME = ...`` (or ``NAME: type = ...``) line set to
    ``values[NAME]``; comments and annotations are kept."""
    for name, value in values.items():
        pattern = re.compile(rf"^({name}\s*(?::[^=\n]*)?=).*$", re.MULTILINE)
        if not pattern.search(source):
            raise ValueError(f"the parameters cell has no '{name} = ...' line")
        source = pattern.sub(lambda m: f"{m[1].rstrip()} {_literal(value)}", source, count=1)
    return source


def _literal(value) -> str:
    """Python source of a parameter value, strings in double quotes (``json.dumps``: a str or a list of str)."""
    return json.dumps(value)


def kernel_env() -> dict:
    """The kernel's environment: this process's (``COMALITE_HOME`` included), inline plots, no progress bars."""
    env = dict(os.environ)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["TQDM_DISABLE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def execute(path: Path, *, preset: str = COMMITTED_PRESET, overrides: list[str] | tuple[str, ...] = (),
            timeout: int = 3600, cwd: Path | None = None, inject: bool = False, check_kernel: bool = True):
    """Run one notebook in a fresh kernel; returns ``(executed notebook, seconds)``. Raises nbclient's
    ``CellExecutionError`` on the first failing cell.

    ``inject=False`` rewrites the ``parameters`` cell itself (what a render commits); ``inject=True`` leaves
    it alone and adds an ``injected-parameters`` cell after it (papermill's way; what the test does).
    ``check_kernel`` also makes the first code cell assert that the kernel runs this very interpreter.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    index = parameters_cell(nb)
    values = {"PRESET": preset, "OVERRIDES": list(overrides)}
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
    try:
        client.execute(env=kernel_env())
    finally:
        if check is not None:
            nb.cells.remove(check)
    seconds = time.perf_counter() - start
    count = 0
    for c in nb.cells:  # number the cells from 1 again (without the check cell)
        if c.cell_type == "code" and c.get("execution_count"):
            count += 1
            c.execution_count = count
            for out in c.get("outputs", []):
                if "execution_count" in out:
                    out["execution_count"] = count
    return nb, seconds


def run_folders(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The run folders a render of ``preset`` writes: the lessons' run and the stage-1 ablation's."""
    from comalite.lesson import lesson_config

    run = lesson_config(preset, overrides).run_dir()
    return [run, run.with_name(f"{run.name}-nomask")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help=f'the quick check: PRESET = "{SMOKE_PRESET}"; writes nothing into the repository')
    parser.add_argument("--preset", help=f"PRESET (default: {COMMITTED_PRESET})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="one entry of OVERRIDES (repeatable)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--out", type=Path, help="write the executed notebooks here instead of in place")
    parser.add_argument("--fresh", action="store_true",
                        help="first delete the preset's run folders (<run> and <run>-nomask; data and VLM are kept)")
    args = parser.parse_args(argv)
    if args.smoke and args.preset not in (None, SMOKE_PRESET):
        parser.error(f"--smoke is --preset {SMOKE_PRESET}; give one of them")
    preset = SMOKE_PRESET if args.smoke else args.preset or COMMITTED_PRESET
    in_place = preset == COMMITTED_PRESET and not args.overrides and args.out is None
    if args.out is None and not in_place and not args.smoke:
        parser.error(f"only the full {COMMITTED_PRESET} preset without --set is written back in place; "
                     "give --out to keep the executed notebooks of this one")

    import nbformat

    paths = notebooks(args.only)
    if not paths:
        parser.error(f"no notebook in {NOTEBOOK_DIR} matches {args.only}")
    print(f"kernel '{KERNEL}' runs {kernel_python()}; COMALITE_HOME={os.environ.get('COMALITE_HOME', '(default)')}")
    if args.fresh:
        import shutil

        for folder in run_folders(preset, args.overrides):
            if folder.exists():
                print(f"removing {folder}")
                shutil.rmtree(folder)
    total = 0.0
    for path in paths:
        label = " ".join([preset, *args.overrides])
        print(f"{path.name}: running ({label}) ...", flush=True)
        nb, seconds = execute(path, preset=preset, overrides=args.overrides, timeout=args.timeout)
        total += seconds
        target = args.out / path.name if args.out else (path if in_place else None)
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
        print(f"{path.name}: {seconds:.0f} s" + (f" -> {target}" if target else ""), flush=True)
    print(f"all {len(paths)} notebooks: {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
