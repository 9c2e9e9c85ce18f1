"""Reports of an evaluation: ``results.json`` and a markdown table, one row per dataset, then aggregates.

A folder's results are never replaced silently: saving into a folder that already holds an evaluation of
the same datasets (same sizes, same sampling) MERGES: the models being saved replace their own columns,
every other model's are kept. A folder holding an evaluation of other datasets or sampling is refused
(``RunConflictError``, with the differences) unless ``overwrite``, or unless every model it holds is being
evaluated again (nothing of it would be kept: a rebuilt evaluation set re-scores a run in place)."""
from __future__ import annotations

import json
from pathlib import Path

from comalite.atomic import atomic_write_text
from comalite.errors import RunConflictError
from comalite.eval.metric import at_chance
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


def _replaces(saved: dict, models) -> bool:
    """Whether an evaluation of ``models`` leaves nothing of ``saved`` to keep (it holds no other model)."""
    return set(saved["models"]) <= set(models)


def check_saved(out_dir: str | Path, datasets: dict[str, dict], sampling: dict, *, models=(),
                overwrite: bool = False) -> None:
    """Refuse early (before any model loads) an evaluation of ``models`` on ``datasets`` (name -> its
    ``KNOWN_BEFORE_MODELS`` fields) with ``sampling`` that could not be merged with the one saved in ``out_dir``
    (the module docstring)."""
    saved = None if overwrite else _saved(out_dir)
    if saved is None or _replaces(saved, models):
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
    scores, those in ``results`` replace theirs or join at the end. ``results`` itself when nothing is saved,
    when ``results`` re-scores every saved model, or ``overwrite``; a RunConflictError when the saved one covers
    other datasets, sizes or sampling."""
    saved = None if overwrite else _saved(out_dir)
    if saved is None or _replaces(saved, results["models"]):
        return results
    rows = lambda r: {row["name"]: json.loads(json.dumps(row)) for row in r["datasets"]}  # noqa: E731
    old, new = rows(saved), rows(results)
    for name in set(old) & set(new):  # a field one side lacks (saved before it existed) is not a difference
        common = old[name].keys() & new[name].keys()
        old[name], new[name] = ({k: row[k] for k in common} for row in (old[name], new[name]))
    lines = _differences(old, new, saved["sampling"], results["sampling"])
    if lines:
        raise _conflict(Path(out_dir) / RESULTS_FILE, lines)
    new = results["models"]
    models = list(saved["models"]) + [m for m in new if m not in saved["models"]]
    pick = lambda m: results if m in new else saved  # noqa: E731
    merged = {"models": models, "datasets": results["datasets"], "sampling": results["sampling"],
              "chance_aggregates": results["chance_aggregates"]}
    for key in ("fingerprints", "scores", "aggregates", "floors", "floor_aggregates", "details"):
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


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding",
          "overall": "Overall"}


def format_table(results: dict) -> str:
    """``results`` (from ``evaluate``) as a markdown report: one row per dataset, grouped by meta-task,
    then the aggregate rows; columns: meta-task, split, queries, candidates, chance, then one per model (a
    ``*`` marks a score within noise of that model's floor, ``metric.at_chance``). Then, for the models
    evaluated with floors (results saved before them have none), each one's floor per dataset, and for the
    datasets whose candidates hold near-copies of the truth, 'finds the scene' and 'reads the detail'."""
    models = results["models"]
    rows = results["datasets"]
    sampling = results["sampling"]
    if sampling.get("limit") is not None:  # a seed alone samples nothing: the reader keeps every row
        sampled = f"Queries sampled per dataset: up to {sampling['limit']}, seed {sampling['seed']}."
    else:
        sampled = "All queries of each dataset (no sampling)."
    details = results.get("details", {})
    floored = [m for m in models if m in results.get("floor_aggregates", {})]
    lines = [
        "# Evaluation results: Precision@1 (%)",
        "",
        _describe_datasets(rows) + " " + sampled,
        "Aggregates are unweighted means over datasets. A tie for the top score earns 1/(tied candidates).",
    ]
    if floored:
        lines.append("A score marked * is within noise of that model's floor (next table): no better than the "
                     "model would do ignoring the query.")
    lines += [
        "",
        "| dataset | meta-task | split | queries | candidates (min/mean/max) | chance | " + " | ".join(models) + " |",
        "|---|---|---|---:|---|---:|" + "---:|" * len(models),
    ]

    def score(m: str, name: str) -> str:
        result = details.get(m, {}).get(name)
        mark = "*" if m in floored and result and "floor" in result and at_chance(result) else ""
        return _pct(results["scores"][m][name]) + mark

    for task in META_TASKS:
        for row in (r for r in rows if r["meta_task"] == task):
            c = row["candidates"]
            lines.append(
                f"| {row['name']} | {LABELS[task]} | {row['split']} | {row['n_queries']} | "
                f"{c['min']}/{c['mean']:.0f}/{c['max']} | {_pct(row['chance'])} | "
                + " | ".join(score(m, row["name"]) for m in models) + " |"
            )
    counts = {g: 0 for g in results["chance_aggregates"]}
    for row in rows:
        for group in (row["meta_task"], row["split"], "overall"):
            counts[group] += 1
    for group, chance in results["chance_aggregates"].items():
        cells = [_pct(results["aggregates"][m][group]) for m in models]
        lines.append(
            f"| **{LABELS.get(group, group)}** (mean of {counts[group]}) | | | | | {_pct(chance)} | "
            + " | ".join(cells) + " |"
        )
    if floored:
        lines += _floor_table(results, floored, counts)
    if any(row.get("near_copies") for row in rows) and floored:
        lines += _near_copy_table(results, floored)
    return "\n".join(lines) + "\n"


def _section(title: str, text: str, columns: list[str]) -> list[str]:
    """A titled markdown table's opening lines: the title, its explanation, the header (first column left-aligned)."""
    return ["", f"## {title}", "", text, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


def _floor_table(results: dict, models: list[str], counts: dict[str, int]) -> list[str]:
    """Each model's floor per dataset: the higher of chance and its query-blind score (shown in parentheses
    when it is below chance), then the floors' aggregates."""
    lines = _section("Floors (%)",
                     "What each model would score if it ignored the query: its own candidate embeddings scored against "
                     "one query embedding shared by all queries (the mean of the dataset's query embeddings). The floor "
                     "is the higher of that and chance (1/candidates); the query-blind score is in parentheses when "
                     "lower.", ["dataset", "chance", *models])

    def cell(m: str, name: str) -> str:
        r = results["details"].get(m, {}).get(name, {})
        if "floor" not in r:
            return "–"
        return _pct(r["floor"]) + (f" ({_pct(r['query_blind'])})" if r["query_blind"] < r["floor"] else "")

    for task in META_TASKS:
        for row in (r for r in results["datasets"] if r["meta_task"] == task):
            lines.append(f"| {row['name']} | {_pct(row['chance'])} | "
                         + " | ".join(cell(m, row["name"]) for m in models) + " |")
    for group, chance in results["chance_aggregates"].items():
        cells = [_pct(results["floor_aggregates"][m].get(group)) for m in models]
        lines.append(f"| **{LABELS.get(group, group)}** (mean of {counts[group]}) | {_pct(chance)} | "
                     + " | ".join(cells) + " |")
    return lines


def _near_copy_table(results: dict, models: list[str]) -> list[str]:
    """For the datasets whose candidates hold k near-copies of the truth: 'finds the scene' / 'reads the
    detail' per model, next to what a uniform guess scores on each."""
    lines = _section("Near-copies: finds the scene / reads the detail (%)",
                     "Datasets whose candidates hold k near-copies of the truth (the same scene, one detail changed). "
                     "Finds the scene: the top candidate is the truth or one of its near-copies (a uniform guess: "
                     "(1+k)/n). Reads the detail: the truth beats its near-copies, the other candidates left out (a "
                     "uniform guess, or a model that gets the gist but not the detail: 1/(1+k), 'gist only').",
                     ["dataset", "near-copies (k)", "finds scene: chance", "reads detail: gist only", *models])
    for task in META_TASKS:
        for row in (r for r in results["datasets"] if r["meta_task"] == task and r.get("near_copies")):
            near = row["near_copies"]
            cells = []
            for m in models:
                r = results["details"].get(m, {}).get(row["name"], {})
                cells.append(f"{_pct(r['finds_scene'])} / {_pct(r['reads_detail'])}" if r.get("finds_scene")
                             is not None else "–")
            lines.append(f"| {row['name']} | {near['mean']:.1f} | {_pct(near['finds_scene_chance'])} | "
                         f"{_pct(near['gist_only'])} | " + " | ".join(cells) + " |")
    return lines
