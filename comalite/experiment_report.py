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
    """The summary as markdown: the pre-registered primary comparisons first (when the pairs part ran), then
    every group of runs, mean +- std (percent), and the paired differences against contrastive-only (exploratory:
    not corrected for their number)."""
    lines = ["# Does compression help? Miniature results (Precision@1, %)", "",
             f"Preset `{meta['preset']}`, seeds {meta['seeds']}, {meta['n_queries']} queries per dataset. "
             "Mean +- standard deviation over seeds; the difference is paired by seed, with a 95 % t-interval.", ""]
    if meta.get("missing"):
        shown = ", ".join(meta["missing"][:6]) + (", ..." if len(meta["missing"]) > 6 else "")
        lines += [f"**Interim report:** {meta['cells'] - len(meta['missing'])} of {meta['cells']} cells finished "
                  f"(`--finished-only`); {len(meta['missing'])} not yet ({shown}; all in `results.json`, "
                  "`meta.missing`).", ""]
    if meta.get("primary"):
        lines += primary_section(meta["primary"])
    for split in sorted({e["split"] for e in summary}):
        lines += split_section(split, [e for e in summary if e["split"] == split])
    groups = [g for g in GROUPS if g in meta["base"]]

    def row(name, values):
        return f"| {name} | " + " | ".join(f"{100 * values[g]:.1f}" for g in groups) + " |"

    lines += ["## Reference points", "", "| model | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups),
              row("chance", meta["chance"])]
    if meta.get("floor"):
        lines.append(row("floor of the base model (chance or its query-blind score, the higher)", meta["floor"]))
    lines += [row("base (untrained compression tokens)", meta["base"]), ""]
    if meta.get("equal_compute"):
        lines += equal_compute_section(meta["equal_compute"], groups)
    return "\n".join(lines)


def primary_section(primary: list[dict]) -> list[str]:
    """The pre-registered comparisons (``experiment_stats.primary_comparisons``) as a table."""
    lines = ["## Primary comparisons (pre-registered)", "",
             f"CoMa minus contrastive-only, {primary[0]['group']} Precision@1, paired by seed, at each number of "
             "distinct training pairs; p from the paired t-test, Holm-adjusted for the "
             f"{len(primary)} comparisons. Everything after this section is exploratory: its intervals are not "
             "corrected for how many there are.", "",
             "| pairs per subset | distinct training pairs | CoMa - contrastive-only (points) | p | p, Holm | seeds |",
             "|---|---:|---:|---:|---:|---:|"]
    for p in primary:
        lines.append(f"| {p['pairs'] or 'all'} | {p['train_pairs']:,.0f} | {difference_cell(p)} | {p['p']:.3f} | "
                     f"{p['p_holm']:.3f} | {p['seeds']} |")
    return [*lines, ""]


def split_section(split: str, entries: list[dict]) -> list[str]:
    """One split's runs (mean +- std) and their paired differences against contrastive-only."""
    cols = [g for g in (*GROUPS, "seen tasks", "unseen tasks") if g in entries[0]["mean"]]

    def pairs(e):
        return str(e.get("pairs") or "all")

    lines = [f"## Split: {split}", "", "| arm | variant | stage-2 steps | pairs per subset | train s | "
             + " | ".join(cols) + " |", "|---|---|---:|---:|---:|" + "---:|" * len(cols)]
    for e in entries:
        cells = [f"{100 * e['mean'][c]:.1f} +- {100 * e['std'][c]:.1f}" for c in cols]
        lines.append(f"| {e['arm']} | {e['variant'] or '-'} | {e['steps']} | {pairs(e)} | {e['train_seconds']:.0f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| arm - contrastive_only | variant | steps | pairs per subset | " + " | ".join(cols) + " |",
              "|---|---|---:|---:|" + "---:|" * len(cols)]
    for e in entries:
        if "minus_contrastive_only" in e:
            cells = [difference_cell(e["minus_contrastive_only"][c]) for c in cols]
            lines.append(f"| {e['arm']} | {e['variant'] or '-'} | {e['steps']} | {pairs(e)} | " + " | ".join(cells)
                         + " |")
    return [*lines, ""]


def equal_compute_section(eq: dict, groups: list[str]) -> list[str]:
    """CoMa against contrastive-only given stage 1's compute as more stage-2 steps. Reports written before
    compute was counted (``stage1_seconds``) read as they were written."""
    d = eq["coma_minus_longer_contrastive_only"]
    head = "| pairs per subset | " + " | ".join(groups) + " |"
    if "stage1_seconds" in eq:  # the clock's version: one comparison on all pairs
        why = (f"CoMa (stage 1 + stage 2) trained {eq['stage1_seconds']:.0f} s longer than contrastive-only; spent "
               f"on stage 2 instead, contrastive-only runs {eq['contrastive_only_steps']} steps. CoMa minus that run:")
        d = {"0": d}
    else:
        why = (f"Stage 1 pushes {eq['stage1_tokens']:,.0f} tokens through the model, stage 2 "
               f"{eq['stage2_tokens_per_step']:,.0f} a step (counted, `comalite.compute`): contrastive-only given "
               f"stage 1's tokens as more steps runs {eq['contrastive_only_steps']}. CoMa minus that run:")
    if not d:  # an interim report before any equal-compute cell finished
        return ["## Equal total compute", "", why, "", "(no equal-compute cell finished yet)", ""]
    lines = ["## Equal total compute", "", why, "", head, "|---|" + "---:|" * len(groups)]
    for cap, diff in d.items():
        lines.append(f"| {'all' if cap == '0' else cap} | " + " | ".join(difference_cell(diff[g]) for g in groups)
                     + " |")
    return [*lines, ""]


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
