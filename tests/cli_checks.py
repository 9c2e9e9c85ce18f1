"""Checks the command-line tests share: a command ends in one error line, and no model loads where only
settings and folders are at fault."""
from __future__ import annotations

import sys

import pytest

from comalite.cli import main


def cli(capsys, *argv: str, code: int = 2) -> tuple[str, str]:
    """Run ``comalite argv``; it must end with exit ``code`` and no traceback. Returns (stdout, stderr)."""
    try:
        main(list(argv))
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    assert status == code, err
    assert "Traceback" not in err
    return out, err


def cli_error(capsys, *argv: str) -> str:
    """``comalite argv`` must fail with exactly one ``comalite <cmd>: error: ...`` message; returns it (all
    lines: a run conflict lists the settings that differ)."""
    err = cli(capsys, *argv)[1]
    prefix = f"comalite {argv[0]}: error: "
    assert sum(line.startswith(prefix) for line in err.splitlines()) == 1, err
    return err[err.index(prefix) + len(prefix):]


def refuse_model_loads(monkeypatch) -> None:
    """Make any comalite module's ``load_backbone`` fail the test. Tests that run a command which may build the
    tiny-smoke VLM (it loads a model) first request ``tiny_home``, a session fixture that builds it."""
    import comalite.backbone
    import comalite.stage1_data
    import comalite.pipeline
    import comalite.result
    import comalite.stage1
    import comalite.stage2  # noqa: F401  (imported so that its name is patched too)

    original = comalite.backbone.load_backbone

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded although the error depends only on settings and folders")

    for name, module in list(sys.modules.items()):
        if name.startswith("comalite") and getattr(module, "load_backbone", None) is original:
            monkeypatch.setattr(module, "load_backbone", refuse)
