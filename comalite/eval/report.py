"""Reports of an evaluation: ``results.json`` and a markdown table, one row per dataset, then aggregates.

A folder's results are never replaced silently: saving into a folder that already holds an evaluation of
the same datasets (same sizes, same sampling) MERGES: the models being saved replace their own columns,
every other model's are kept. A folder holding an evaluation of other datasets or sampling is refused
(``RunConflictError``, with the differences) unless ``overwrite``."""
from __future__ import annotations

import json
from pathlib import Path

from comalite.atomic import atomic_write_text
from comalite.errors import RunConflictError
from comalite.eval.registry import MMEB_V1_NAMES
from comalite.records import META_TASKS

RESULTS_FILE = "results.json"


def _saved(out_dir: str | Path) -> dict | None:
    """The evaluation saved in ``out_dir`` (None when there is none); one that is not an evaluation's
    ``results.json`` is a RunConflictError."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if not all(k in saved for k in ("models", "datasets", "sampling", "scores", "aggregates", "details")):
            raise ValueError("keys missing")
    except (ValueError, OSError, TypeError) as err:
        raise RunConflictError(f"{path} is not the results.json of a comalite evaluation ({err}): move it away, "
                               "evaluate into another folder (--set out_dir=... or --set name=...), or pass "
                               "--overwrite to replace it") from None
    return saved


def _conflict(path: Path, lines: list[str]) -> RunConflictError:
    return RunConflictError(
        f"{path} holds an evaluation of other datasets or sampling (its other models' scores would not be "
        "comparable in one table):\n  " + "\n  ".join(lines) + "\nEither evaluate into another folder (--set "
        "out_dir=... or --set name=...), or pass --overwrite to replace those results.")


KNOWN_BEFORE_MODELS = ("meta_task", "split", "source", "n_queries")
"""The fields of a dataset's table row that are known before any model loads (``check_saved`` compares them)."""


def check_saved(out_dir: str | Path, datasets: dict[str, dict], sampling: dict, *, overwrite: bool = False) -> None:
    """Refuse early (before any model loads) an evaluation of ``datasets`` (name -> its ``KNOWN_BEFORE_MODELS``
    fields) with ``sampling`` that could not be merged with the one saved in ``out_dir`` (the module docstring)."""
    saved = None if overwrite else _saved(out_dir)
    if saved is None:
        return
    old = {row["name"]: {k: row.get(k) for k in KNOWN_BEFORE_MODELS} for row in saved["datasets"]}
    lines = _differences(old, datasets, saved["sampling"], sampling)
    if lines:
        raise _conflict(Path(out_dir) / RESULTS_FILE, lines)


def _differences(old: dict, new: dict, old_sampling: dict, new_sampling: dict) -> list[str]:
    """What differs between two evaluations: datasets (name -> size or table row) and sampling."""
    lines = []
    if set(old) != set(new):
        lines.append(f"datasets: {', '.join(sorted(old))} -> {', '.join(sorted(new))}")
    lines += [f"{name}: {old[name]} -> {new[name]}" for name in sorted(set(old) & set(new)) if old[name] != new[name]]
    lines += [f"sampling.{k}: {old_sampling.get(k)!r} -> {new_sampling.get(k)!r}"
              for k in sorted(set(old_sampling) | set(new_sampling)) if old_sampling.get(k) != new_sampling.get(k)]
    return lines


def merged_with_saved(results: dict, out_dir: str | Path, *, overwrite: bool = False) -> dict:
    """``results`` merged with the evaluation saved in ``out_dir``: the saved models keep their place and
    scores, those in ``results`` replace theirs or join at the end. ``results`` itself when nothing is saved
    or ``overwrite``; a RunConflictError when the saved one covers other datasets, sizes or sampling."""
    saved = None if overwrite else _saved(out_dir)
    if saved is None:
        return results
    rows = lambda r: {row["name"]: json.loads(json.dumps(row)) for row in r["datasets"]}  # noqa: E731
    lines = _differences(rows(saved), rows(results), saved["sampling"], results["sampling"])
    if lines:
        raise _conflict(Path(out_dir) / RESULTS_FILE, lines)
    new = results["models"]
    models = list(saved["models"]) + [m for m in new if m not in saved["models"]]
    pick = lambda m: results if m in new else saved  # noqa: E731
    merged = {"models": models, "datasets": results["datasets"], "sampling": results["sampling"],
              "chance_aggregates": results["chance_aggregates"]}
    for key in ("fingerprints", "scores", "aggregates", "details"):
        merged[key] = {m: pick(m)[key][m] for m in models if m in pick(m).get(key, {})}
    return {**results, **merged}


def save_results(results: dict, out_dir: str | Path, *, overwrite: bool = False) -> dict:
    """Write ``results.json`` and ``results.md`` (``format_table``) into ``out_dir``, each atomically,
    merged with the evaluation already saved there (``merged_with_saved``; ``overwrite`` replaces it); returns
    what was written."""
    out = Path(out_dir)
    results = merged_with_saved(results, out, overwrite=overwrite)
    json_path, md_path = out / RESULTS_FILE, out / "results.md"
    text = json.dumps(results, indent=1)
    atomic_write_text(json_path, text)
    table = format_table(results)
    atomic_write_text(md_path, table)
    return results


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
