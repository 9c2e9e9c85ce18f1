"""Reports of an evaluation: ``results.json`` and a markdown table, one row per dataset, then aggregates."""
from __future__ import annotations

import json
from pathlib import Path

from comalite.atomic import atomic_write_text
from comalite.eval.registry import MMEB_V1_NAMES
from comalite.records import META_TASKS


def save_results(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (``format_table``) into ``out_dir``, each atomically."""
    out = Path(out_dir)
    json_path, md_path = out / "results.json", out / "results.md"
    text = json.dumps(results, indent=1)
    atomic_write_text(json_path, text)
    table = format_table(results)
    atomic_write_text(md_path, table)
    return json_path, md_path


def _describe_datasets(rows: list[dict]) -> str:
    """One sentence saying which datasets the table covers (of MMEB's 36, ShapesWorld, others)."""
    parts = []
    mmeb = [r["name"] for r in rows if r["source"] == "mmeb"]
    if mmeb:
        missing = [n for n in MMEB_V1_NAMES if n not in mmeb]
        text = f"{len(mmeb)} of the 36 MMEB-V1 datasets"
        if missing:
            text += f" (missing: {', '.join(missing)}; aggregates are not comparable to published ones)"
        elif len(mmeb) < len(rows):
            text += " (the aggregates also average the datasets below: not comparable to published ones)"
        parts.append(text)
    labels = {"shapesworld": "ShapesWorld dataset", "user": "dataset of your own"}
    for source in sorted({r["source"] for r in rows} - {"mmeb"}):
        n = sum(r["source"] == source for r in rows)
        label = labels.get(source, f"{source} dataset")
        parts.append(f"{n} {label}" if n == 1 else f"{n} {label.replace('dataset', 'datasets', 1)}")
    return "Datasets: " + "; ".join(parts) + "."


def format_table(results: dict) -> str:
    """``results`` (from ``evaluate``) as a markdown report: one row per dataset, grouped by meta-task,
    then the aggregate rows; columns: meta-task, split, queries, candidates, chance, then one per model."""
    models = results["models"]
    rows = results["datasets"]
    sampling = results["sampling"]
    if sampling.get("limit") is not None:  # a seed alone samples nothing: the reader keeps every row
        sampled = f"Queries sampled per dataset: up to {sampling['limit']}, seed {sampling['seed']}."
    else:
        sampled = "All queries of each dataset (no sampling)."
    lines = [
        "# Evaluation results: Precision@1 (%)",
        "",
        _describe_datasets(rows) + " " + sampled,
        "Aggregates are unweighted means over datasets. A tie for the top score earns 1/(tied candidates).",
        "",
        "| dataset | meta-task | split | queries | candidates (min/mean/max) | chance | " + " | ".join(models) + " |",
        "|---|---|---|---:|---|---:|" + "---:|" * len(models),
    ]
    labels = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval",
              "grounding": "Grounding", "overall": "Overall"}

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    for task in META_TASKS:
        for row in (r for r in rows if r["meta_task"] == task):
            c = row["candidates"]
            cells = [pct(results["scores"][m][row["name"]]) for m in models]
            lines.append(
                f"| {row['name']} | {labels[task]} | {row['split']} | {row['n_queries']} | "
                f"{c['min']}/{c['mean']:.0f}/{c['max']} | {pct(row['chance'])} | " + " | ".join(cells) + " |"
            )
    counts = {g: 0 for g in results["chance_aggregates"]}
    for row in rows:
        for group in (row["meta_task"], row["split"], "overall"):
            counts[group] += 1
    for group, chance in results["chance_aggregates"].items():
        cells = [pct(results["aggregates"][m][group]) for m in models]
        lines.append(
            f"| **{labels.get(group, group)}** (mean of {counts[group]}) | | | | | {pct(chance)} | "
            + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
