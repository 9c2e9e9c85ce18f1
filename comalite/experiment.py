"""Does compression help? The paper's central claim, measured in miniature, with seeds.

Every run of the grid is an ordinary comalite run folder (settings and inputs recorded, resumable,
reused when rerun), made by changing one thing at a time from one base config:

- **arms**: ``contrastive_only`` (stage 2 from the VLM itself), ``coma`` (stage 1, then stage 2) and the
  control ``qa_no_mask`` (stage 1 with the compression mask off: the same QA data and steps, no
  compression, then stage 2), which separates "compression" from "more QA training";
- **budget**: stage-2 steps from scarce to the full preset, for every arm;
- **pairs**: the paper's regime, the preset's stage-2 steps on fewer distinct training pairs
  (``PAIR_CAPS`` per subset), for every arm: the pre-registered primary comparisons live here
  (``experiment_stats.primary_comparisons``, Holm-corrected);
- **transfer**: stage 2 trains on some task families only (``TRANSFER_SUBSETS``); the evaluation reports the
  families it saw and the ones it never saw apart, while stage 1's QA covers every attribute;
- **ablations** of CoMa on one budget: K, answers-only vs every token supervised, single- vs multi-turn;
- **equal compute**: contrastive-only given stage 1's counted tokens as extra stage-2 steps (``comalite.compute``:
  counted, never timed), at the full budget and, with the pairs part, at each pair count.

Each cell runs for several seeds (``stage1.train.seed`` and ``stage2.train.seed``: LoRA initialisation,
compression rows, data order, dropout); the report gives mean and spread per group of datasets, and the
paired difference CoMa minus contrastive-only (same seed, same budget) with a 95 % t-interval.

This module holds the grid and running it. What the arms, ablations and groups are is in ``experiment_design``;
the statistics in ``experiment_stats``; the markdown report and reading one back in ``experiment_report``; the
budget curve in ``viz.budget``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from .atomic import atomic_write_json, atomic_write_text
from .compute import equal_compute_steps
from .config import Config, load_config
from .errors import ComaliteError, ConfigError, RunConflictError
from .eval.report import RESULTS_FILE
from .experiment_design import ABLATIONS, ARMS, GROUPS, PAIR_CAPS, TRANSFER_SUBSETS
from .experiment_report import REPORT_FILE, format_report
from .experiment_stats import paired_difference, primary_comparisons, summarize
from .pipeline import ensure_stage, evaluate_models, stage_config
from .result import RESULT_FILE, read_result
from .runs import differences, read_record, run_lock
from .stages import CONTRASTIVE_ONLY, STAGE2, Stage
from .viz import plot_budget_curve, plot_paired_differences

log = logging.getLogger(__name__)

PARTS = ("budget", "pairs", "transfer", "ablations", "compute")
"""The parts of the experiment ``run_experiment`` (``comalite experiment --parts``) knows."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained model of the grid: an arm, a variant of the settings, a stage-2 budget, a seed, a split, and
    the training pairs per subset (0: all)."""

    arm: str
    steps: int
    seed: int
    variant: str = ""
    split: str = "all"
    pairs: int = 0

    @property
    def stage(self) -> Stage:
        return CONTRASTIVE_ONLY if ARMS[self.arm] is None else STAGE2

    def label(self) -> str:
        return "-".join(x for x in (self.arm, self.variant, self.split if self.split != "all" else "") if x)


def cell_config(preset: str, overrides: tuple[str, ...], cell: Cell, root: Path) -> Config:
    """The config of ``cell``: the base plus the cell's changes, in a run folder of its own."""
    ablation = ABLATIONS.get(cell.variant)
    folder = f"{f'pairs{cell.pairs}-' if cell.pairs else ''}steps{cell.steps}-seed{cell.seed}"
    sets = [*overrides, *(ablation.overrides if ablation else ()), *(ARMS[cell.arm] or ()),
            f"stage1.train.seed={cell.seed}", f"stage2.train.seed={cell.seed}", f"stage2.train.steps={cell.steps}",
            *((f"stage2.per_subset_cap={cell.pairs}",) if cell.pairs else ()),
            f"out_dir={root / cell.label() / folder}"]
    if cell.split == "transfer":
        sets.append(f"stage2.subsets={','.join(TRANSFER_SUBSETS)}")
    return load_config(preset, sets)


def _shared_stage1(cfg: Config, cell: Cell, root: Path) -> None:
    """Stage 1 does not depend on the stage-2 budget or split: one run per arm, variant and seed, linked into
    every budget's run folder (its record matches there, so it is reused, never retrained)."""
    if not cell.stage.inherits:
        return
    shared = root / "stage1" / "-".join(x for x in (cell.arm, cell.variant) if x) / f"seed{cell.seed}"
    ensure_stage(dataclasses.replace(cfg, out_dir=str(shared)), cell.stage.inherits)
    link = cfg.run_dir() / cell.stage.inherits
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared / cell.stage.inherits, link)


def _record(folder: Path) -> dict:
    """What a trained cell was made from: its stage folder's run record (settings fingerprint and input
    fingerprints), so a report row names the exact run behind its numbers."""
    record = read_record(folder) or {}
    return {"fingerprint": record.get("fingerprint"), "inputs": record.get("inputs")}


def run_cell(preset: str, overrides: tuple[str, ...], cell: Cell, root: Path) -> dict:
    """Train (or reuse) and evaluate one cell; returns its scores, aggregates, training seconds and distinct
    training pairs."""
    cfg = cell_config(preset, overrides, cell, root)
    _shared_stage1(cfg, cell, root)
    stage = cell.stage.name
    folder = ensure_stage(cfg, stage)
    results = evaluate_models(stage_config(cfg, stage), [stage])
    seconds = read_result(folder)["metrics"]["train_seconds"]
    if cell.stage.inherits:
        seconds += read_result(cfg.run_dir() / cell.stage.inherits)["metrics"]["train_seconds"]
    return {**dataclasses.asdict(cell), "scores": results["scores"][stage],
            "aggregates": results["aggregates"][stage], "train_seconds": seconds,
            "train_pairs": read_result(folder)["metrics"]["train_pairs"], "run_record": _record(folder),
            "n_queries": {d["name"]: d["n_queries"] for d in results["datasets"]}}


def grid(parts: tuple[str, ...], seeds: list[int], budgets: list[int], full: int,
         equal_steps: int = 0) -> list[Cell]:
    """The cells of the requested parts: ``budget`` (every arm at every budget), ``pairs`` (every arm at each of
    ``PAIR_CAPS``, full budget), ``transfer``, ``ablations`` (on the full budget) and ``compute``
    (contrastive-only at ``equal_steps``, stage 1's counted tokens as more steps; at each pair count when the
    pairs part runs too)."""
    cells = []
    for seed in seeds:
        if "budget" in parts:
            cells += [Cell(arm, steps, seed) for steps in budgets for arm in ARMS]
        if "pairs" in parts:
            cells += [Cell(arm, full, seed, pairs=cap) for cap in PAIR_CAPS for arm in ARMS]
        if "transfer" in parts:
            cells += [Cell(arm, full, seed, split="transfer") for arm in ("contrastive_only", "coma")]
        if "ablations" in parts:
            for variant, ablation in ABLATIONS.items():
                arms = ("contrastive_only", "coma") if ablation.changes_baseline else ("coma",)
                cells += [Cell(arm, full, seed, variant=variant) for arm in arms]
        if "compute" in parts and equal_steps:
            caps = PAIR_CAPS if "pairs" in parts else (0,)
            cells += [Cell("contrastive_only", equal_steps, seed, variant="equal_compute", pairs=cap) for cap in caps]
    return list(dict.fromkeys(cells))


def equal_compute_differences(rows: list[dict], full: int) -> dict:
    """CoMa at the full budget minus contrastive-only at equal compute, paired by seed, for every group: one entry
    per pair count, scarcest first (``"0"``: all pairs, last)."""
    def by_seed(arm: str, variant: str, cap: int, steps: int | None) -> dict[int, dict]:
        return {r["seed"]: r["aggregates"] for r in rows if (r["arm"], r["variant"], r["split"], r.get("pairs", 0))
                == (arm, variant, "all", cap) and steps in (None, r["steps"])}

    out = {}
    caps = {r.get("pairs", 0) for r in rows if r["variant"] == "equal_compute"}
    for cap in sorted(caps, key=lambda c: (not c, c)):
        coma, longer = by_seed("coma", "", cap, full), by_seed("contrastive_only", "equal_compute", cap, None)
        common = sorted(set(coma) & set(longer))
        if common:
            out[str(cap)] = {g: paired_difference([coma[s][g] for s in common], [longer[s][g] for s in common])
                             for g in GROUPS if g in coma[common[0]]}
    return out


def plot_experiment(summary: list[dict], meta: dict, out: Path) -> None:
    """The report's pictures: the budget curve (when it has two budgets or more), the data-scarcity curve and the
    forest plot of the primary comparisons (when the pairs part ran), each curve against the base model's floor."""
    floor = {"floor": meta["floor"], "floor_label": "floor (base model)"}
    if len({e["steps"] for e in summary if not e["variant"] and not e.get("pairs", 0)}) > 1:
        plot_budget_curve(summary, **floor, save_to=out / "budget_curve.png")
    if meta["primary"]:
        plot_budget_curve(summary, against="train_pairs", **floor, save_to=out / "pairs_curve.png")
        rows = {f"{p['train_pairs']:,.0f} pairs" if p["pairs"] else f"all {p['train_pairs']:,.0f} pairs":
                [100 * d for d in p["differences"]] for p in meta["primary"]}
        plot_paired_differences(rows, reference="contrastive-only", xlabel="CoMa - contrastive-only, overall "
                                "P@1 points (one dot per seed)", title="Primary comparisons", save_to=out / "forest.png")


def report_settings(preset: str, overrides, parts, seeds, budgets) -> dict:
    """The settings a report records in its ``meta`` and is compared by (``check_report_folder``)."""
    return {"preset": preset, "overrides": list(overrides), "parts": list(parts), "seeds": list(seeds),
            "budgets": list(budgets)}


def check_report_folder(out: Path, settings: dict, *, overwrite: bool = False) -> None:
    """Refuse (``RunConflictError``) to write a report into ``out`` when it holds one made with other settings
    (or something else called ``results.json``), unless ``overwrite``. The same settings rewrite it (the runs
    are reused, so the report is the same one, brought up to date)."""
    path = out / REPORT_FILE
    if overwrite or not path.exists():
        return
    try:
        meta = json.loads(path.read_text())["meta"]
        old = {k: meta[k] for k in settings}
    except (ValueError, KeyError, TypeError) as err:
        raise RunConflictError(f"{path} is not a report of `comalite experiment` ({type(err).__name__}: {err}): "
                               "give another --out, or pass --overwrite to replace it") from None
    changed = differences(old, settings)
    if changed:
        raise RunConflictError(f"{out} holds a report made with other settings:\n  " + "\n  ".join(changed)
                               + "\nEither give another --out, or pass --overwrite to replace that report.")


def cell_finished(preset: str, overrides: tuple[str, ...], cell: Cell, root: Path) -> bool:
    """Whether ``cell`` is trained and evaluated (by this process or another one running the grid)."""
    run = cell_config(preset, overrides, cell, root).run_dir()
    return (run / cell.stage.name / RESULT_FILE).exists() and (run / "eval" / RESULTS_FILE).exists()


def run_experiment(preset: str, overrides: tuple[str, ...], out: Path, *, parts: tuple[str, ...],
                   seeds: list[int], budgets: list[int], overwrite: bool = False, finished_only: bool = False) -> dict:
    """Run (or reuse) every cell, then write ``results.json``, ``results.md`` and the plots into ``out``. Runs live
    under ``<the base config's run folder>/grid``, so a rerun only does what is missing. ``finished_only``: train
    nothing, report the cells already finished (``cell_finished``) and name the others: an interim report while
    the grid runs, in other processes or across days.

    Before any work: unknown ``parts`` are a ConfigError; a report in ``out`` made with other settings is
    refused unless ``overwrite``; ``out`` is locked until the report is written (a second experiment into it
    is refused at once)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"--parts {','.join(parts)}: unknown part {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(PARTS)}" if unknown else f"--parts: name at least one of {', '.join(PARTS)}")
    out = Path(out)
    with run_lock(out):
        check_report_folder(out, report_settings(preset, overrides, parts, seeds, budgets), overwrite=overwrite)
        return _run_experiment(preset, overrides, out, parts=parts, seeds=seeds, budgets=budgets,
                               finished_only=finished_only)


def _run_experiment(preset: str, overrides: tuple[str, ...], out: Path, *, parts: tuple[str, ...],
                    seeds: list[int], budgets: list[int], finished_only: bool) -> dict:
    base = load_config(preset, list(overrides))
    full = base.stage2.train.steps
    # The grid's run folders sit in a folder of their own: inside the preset's stage folders (runs/<name>/stage2,
    # contrastive_only, ...) a `comalite demo --overwrite` of the same preset would empty them.
    root = base.run_dir() / "grid"
    untrained = evaluate_models(base, ["base"])  # the VLM with untrained compression tokens: the floor
    compute = equal_compute_steps(cell_config(preset, overrides, Cell("coma", full, seeds[0]), root)) \
        if "compute" in parts else None
    cells = grid(parts, seeds, sorted(set(budgets) | {full}), full, compute["contrastive_only_steps"] if compute else 0)
    missing = [c for c in cells if finished_only and not cell_finished(preset, overrides, c, root)]
    rows = []
    for cell in (c for c in cells if c not in missing):
        log.info("experiment cell %s", cell)
        rows.append(run_cell(preset, overrides, cell, root))
    if not rows:
        raise ComaliteError(f"no cell of the grid under {root} is finished yet ({len(cells)} to run): run the "
                            "experiment without --finished-only")
    if compute:
        compute["coma_minus_longer_contrastive_only"] = equal_compute_differences(rows, full)
    meta = {"base": untrained["aggregates"]["base"], "chance": untrained["chance_aggregates"],
            "floor": untrained["floor_aggregates"]["base"], "equal_compute": compute, "preset": preset,
            "overrides": list(overrides), "seeds": seeds, "budgets": budgets, "full_steps": full, "parts": list(parts),
            "n_queries": sorted(set(v for r in rows for v in r["n_queries"].values())),
            "cells": len(cells),
            "missing": [str(cell_config(preset, overrides, c, root).run_dir().relative_to(root)) for c in missing]}
    summary = summarize(rows)
    meta["primary"] = primary_comparisons(summary, full)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"meta": meta, "summary": summary, "runs": rows}, out / REPORT_FILE)
    atomic_write_text(out / "results.md", format_report(summary, meta))
    plot_experiment(summary, meta, out)
    return {"meta": meta, "summary": summary, "runs": rows}

