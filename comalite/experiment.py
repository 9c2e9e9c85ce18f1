"""Does compression help? The paper's central claim, measured in miniature, with seeds.

Every run of the grid is an ordinary comalite run folder (settings and inputs recorded, resumable,
reused when rerun), made by changing one thing at a time from one base config:

- **arms**: ``contrastive_only`` (stage 2 from the VLM itself), ``coma`` (stage 1, then stage 2) and the
  control ``qa_no_mask`` (stage 1 with the compression mask off: the same QA data and steps, no
  compression, then stage 2), which separates "compression" from "more QA training";
- **budget**: stage-2 steps from scarce to the full preset, for every arm;
- **transfer**: stage 2 trains on some task families only (``TRANSFER_SUBSETS``); the evaluation reports the
  families it saw and the ones it never saw apart, while stage 1's QA covers every attribute;
- **ablations** of CoMa on one budget: K, answers-only vs every token supervised, single- vs multi-turn;
- **equal compute**: contrastive-only given stage 1's measured seconds as extra stage-2 steps.

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

import numpy as np

from .atomic import atomic_write_json, atomic_write_text
from .config import Config, load_config
from .errors import ConfigError, RunConflictError
from .experiment_design import ABLATIONS, ARMS, GROUPS, TRANSFER_SUBSETS
from .experiment_report import REPORT_FILE, format_report
from .experiment_stats import paired_difference, summarize
from .pipeline import ensure_stage, evaluate_models, stage_config
from .result import read_result
from .runs import differences, run_lock
from .stages import CONTRASTIVE_ONLY, STAGE2, Stage
from .viz import plot_budget_curve

log = logging.getLogger(__name__)

PARTS = ("budget", "transfer", "ablations", "compute")
"""The parts of the experiment ``run_experiment`` (``comalite experiment --parts``) knows."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained model of the grid: an arm, a variant of the settings, a stage-2 budget, a seed, a split."""

    arm: str
    steps: int
    seed: int
    variant: str = ""
    split: str = "all"

    @property
    def stage(self) -> Stage:
        return CONTRASTIVE_ONLY if ARMS[self.arm] is None else STAGE2

    def label(self) -> str:
        return "-".join(x for x in (self.arm, self.variant, self.split if self.split != "all" else "") if x)


def cell_config(preset: str, overrides: tuple[str, ...], cell: Cell, root: Path) -> Config:
    """The config of ``cell``: the base plus the cell's changes, in a run folder of its own."""
    ablation = ABLATIONS.get(cell.variant)
    sets = [*overrides, *(ablation.overrides if ablation else ()), *(ARMS[cell.arm] or ()),
            f"stage1.train.seed={cell.seed}", f"stage2.train.seed={cell.seed}", f"stage2.train.steps={cell.steps}",
            f"out_dir={root / cell.label() / f'steps{cell.steps}-seed{cell.seed}'}"]
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


def run_cell(preset: str, overrides: tuple[str, ...], cell: Cell, root: Path) -> dict:
    """Train (or reuse) and evaluate one cell; returns its scores, aggregates and training seconds."""
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
            "stage2_seconds_per_step": read_result(folder)["metrics"]["train_seconds"] / cell.steps,
            "n_queries": {d["name"]: d["n_queries"] for d in results["datasets"]}}


def grid(parts: tuple[str, ...], seeds: list[int], budgets: list[int], full: int) -> list[Cell]:
    """The cells of the requested parts: ``budget`` (every arm at every budget), ``transfer``,
    ``ablations`` (on the full budget) and ``compute`` (contrastive-only with stage 1's time as more steps:
    added by ``run_experiment`` once stage 1's time is known)."""
    cells = []
    for seed in seeds:
        if "budget" in parts:
            cells += [Cell(arm, steps, seed) for steps in budgets for arm in ARMS]
        if "transfer" in parts:
            cells += [Cell(arm, full, seed, split="transfer") for arm in ("contrastive_only", "coma")]
        if "ablations" in parts:
            for variant, ablation in ABLATIONS.items():
                arms = ("contrastive_only", "coma") if ablation.changes_baseline else ("coma",)
                cells += [Cell(arm, full, seed, variant=variant) for arm in arms]
    return list(dict.fromkeys(cells))


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


def run_experiment(preset: str, overrides: tuple[str, ...], out: Path, *, parts: tuple[str, ...],
                   seeds: list[int], budgets: list[int], overwrite: bool = False) -> dict:
    """Run (or reuse) every cell, then write ``results.json``, ``results.md`` and ``budget_curve.png`` into
    ``out``. Runs live under the base config's run folder, so a rerun only does what is missing.

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
        return _run_experiment(preset, overrides, out, parts=parts, seeds=seeds, budgets=budgets)


def _run_experiment(preset: str, overrides: tuple[str, ...], out: Path, *, parts: tuple[str, ...],
                    seeds: list[int], budgets: list[int]) -> dict:
    base = load_config(preset, list(overrides))
    full = base.stage2.train.steps
    root = base.run_dir()
    untrained = evaluate_models(base, ["base"])  # the VLM with untrained compression tokens: the floor
    rows = []
    for cell in grid(parts, seeds, sorted(set(budgets) | {full}), full):
        log.info("experiment cell %s", cell)
        rows.append(run_cell(preset, overrides, cell, root))
    if "compute" in parts:
        # Contrastive-only, given CoMa's stage-1 time as extra stage-2 steps at its own measured step cost.
        coma = [r for r in rows
                if r["arm"] == "coma" and r["steps"] == full and not r["variant"] and r["split"] == "all"]
        plain = [r for r in rows if r["arm"] == "contrastive_only" and r["steps"] == full and not r["variant"]
                 and r["split"] == "all"]
        stage1_seconds = np.mean([r["train_seconds"] for r in coma]) - np.mean([r["train_seconds"] for r in plain])
        steps = full + int(round(stage1_seconds / np.mean([r["stage2_seconds_per_step"] for r in plain])))
        longer = [run_cell(preset, overrides, Cell("contrastive_only", steps, seed, variant="equal_compute"), root)
                  for seed in seeds]
        rows += longer
        equal_compute = {"stage1_seconds": float(stage1_seconds), "contrastive_only_steps": steps,
                         "coma_minus_longer_contrastive_only": {
                             g: paired_difference([r["aggregates"][g] for r in sorted(coma, key=lambda r: r["seed"])],
                                                  [r["aggregates"][g] for r in sorted(longer, key=lambda r: r["seed"])])
                             for g in GROUPS}}
    meta = {"base": untrained["aggregates"]["base"], "chance": untrained["chance_aggregates"],
            "equal_compute": equal_compute if "compute" in parts else None, "preset": preset,
            "overrides": list(overrides), "seeds": seeds, "budgets": budgets, "full_steps": full, "parts": list(parts),
            "n_queries": sorted(set(v for r in rows for v in r["n_queries"].values()))}
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"meta": meta, "summary": summary, "runs": rows}, out / REPORT_FILE)
    atomic_write_text(out / "results.md", format_report(summary, meta))
    plot_budget_curve(summary, floor=meta["chance"], save_to=out / "budget_curve.png")
    return {"meta": meta, "summary": summary, "runs": rows}

