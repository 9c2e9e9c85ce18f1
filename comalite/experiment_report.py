"""The experiment's report: its summary as markdown (``results.md``), and reading back the ``results.json`` that
``comalite experiment --out`` wrote or the one committed with this checkout."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ComaliteError
from .experiment_design import GROUPS
from .experiment_stats import difference_cell
from .paths import shipped

REPORT_FILE = "results.json"
"""The report's data (meta, summary, every run), next to ``results.md`` and ``budget_curve.png``."""


def format_report(summary: list[dict], meta: dict) -> str:
    """The summary as markdown tables: one row per group of runs, mean +- std (percent), then the paired
    differences against contrastive-only."""
    lines = ["# Does compression help? Miniature results (Precision@1, %)", "",
             f"Preset `{meta['preset']}`, seeds {meta['seeds']}, {meta['n_queries']} queries per dataset. "
             "Mean +- standard deviation over seeds; the difference is paired by seed, with a 95 % t-interval.", ""]
    for split in sorted({e["split"] for e in summary}):
        entries = [e for e in summary if e["split"] == split]
        cols = [g for g in (*GROUPS, "seen tasks", "unseen tasks") if g in entries[0]["mean"]]
        lines += [f"## Split: {split}", "", "| arm | variant | stage-2 steps | train s | " + " | ".join(cols) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(cols)]
        for e in entries:
            cells = [f"{100 * e['mean'][c]:.1f} +- {100 * e['std'][c]:.1f}" for c in cols]
            lines.append(f"| {e['arm']} | {e['variant'] or '-'} | {e['steps']} | {e['train_seconds']:.0f} | "
                         + " | ".join(cells) + " |")
        lines += ["", "| arm - contrastive_only | variant | steps | " + " | ".join(cols) + " |",
                  "|---|---|---:|" + "---:|" * len(cols)]
        for e in entries:
            if "minus_contrastive_only" in e:
                d = e["minus_contrastive_only"]
                cells = [difference_cell(d[c]) for c in cols]
                lines.append(f"| {e['arm']} | {e['variant'] or '-'} | {e['steps']} | " + " | ".join(cells) + " |")
        lines.append("")
    groups = [g for g in GROUPS if g in meta["base"]]
    lines += ["## Reference points", "", "| model | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups),
              "| chance | " + " | ".join(f"{100 * meta['chance'][g]:.1f}" for g in groups) + " |",
              "| base (untrained compression tokens) | " + " | ".join(f"{100 * meta['base'][g]:.1f}" for g in groups)
              + " |", ""]
    if meta.get("equal_compute"):
        eq = meta["equal_compute"]
        d = eq["coma_minus_longer_contrastive_only"]
        lines += ["## Equal total compute", "",
                  f"CoMa (stage 1 + stage 2) trained {eq['stage1_seconds']:.0f} s longer than contrastive-only; spent on stage 2 "
                  f"instead, contrastive-only runs {eq['contrastive_only_steps']} steps. CoMa minus that run:", "",
                  "| " + " | ".join(groups) + " |", "|" + "---:|" * len(groups),
                  "| " + " | ".join(difference_cell(d[g]) for g in groups) + " |", ""]
    return "\n".join(lines)


def committed_report() -> Path | None:
    """The report committed with the repository (``docs/experiments/does_compression_help``): the checkout's,
    else the copy an installed comalite carries (``comalite.paths.SHIPPED``); None when it carries none."""
    report = shipped(f"experiments/does_compression_help/{REPORT_FILE}")
    return report.parent if report is not None else None


def load_report(folder: str | Path | None) -> dict:
    """``results.json`` of a report folder that ``run_experiment`` (``comalite experiment --out``) wrote;
    ``None`` is what ``committed_report`` gives outside a checkout."""
    if folder is None:
        raise ComaliteError("no committed experiment report outside a checkout of the repository: give the folder "
                            "that `comalite experiment --out FOLDER` wrote (notebook 06: RESULTS = FOLDER)")
    path = Path(folder) / REPORT_FILE
    if not path.exists():
        raise ComaliteError(f"{path} does not exist: run `comalite experiment --out {folder}` first")
    report = json.loads(path.read_text())
    if "meta" not in report:
        raise ComaliteError(f"{path} is not an experiment report (an evaluation's results.json?): give the folder "
                            "that `comalite experiment --out` wrote")
    return report
