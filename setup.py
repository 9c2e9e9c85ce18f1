"""Build hook (the project's metadata is in pyproject.toml): a wheel carries what the lessons read from a
checkout, so that ``pip install "comalite @ git+<repository>"`` (a hosted notebook service) has the tiny VLMs
and the committed experiment report instead of building or missing them.

The list is ``comalite.paths.SHIPPED`` (read here by path: that module imports only the standard library);
each item is copied from the source tree into the built package as ``comalite/shipped/<name>``. An sdist
includes the same files, so a wheel built from it carries them too. An editable install copies nothing: it
reads the checkout's own ``data/`` and ``docs/``.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent


def shipped_items() -> dict[str, str]:
    """``comalite.paths.SHIPPED``: name under ``comalite/shipped/`` -> path in the source tree."""
    spec = importlib.util.spec_from_file_location("_comalite_paths", ROOT / "comalite" / "paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SHIPPED


def source_files(source: str) -> list[Path]:
    """The files of one shipped item (a file, or every file of a folder), relative to the source tree."""
    path = ROOT / source
    if not path.exists():
        raise FileNotFoundError(f"{source} is missing from the source tree; comalite.paths.SHIPPED lists it for "
                                "the built package (a checkout has it in git)")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [p.relative_to(ROOT) for p in files]


class BuildPyWithShipped(build_py):
    """``build_py``, then the ``SHIPPED`` items copied into the built package (not for an editable install)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "comalite" / "shipped"
        shutil.rmtree(target, ignore_errors=True)  # nothing left from an earlier build
        for name, source in shipped_items().items():
            for relative in source_files(source):
                dest = target / name / Path(relative).relative_to(source) if (ROOT / source).is_dir() else target / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / relative, dest)


class SdistWithShipped(sdist):
    """``sdist`` with the ``SHIPPED`` sources, so a wheel built from it (``python -m build``) carries them."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for source in shipped_items().values():
            for relative in source_files(source):
                dest = Path(base_dir) / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / relative, dest)


setup(cmdclass={"build_py": BuildPyWithShipped, "sdist": SdistWithShipped})
