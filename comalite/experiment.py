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
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
from scipy import stats

from .atomic import atomic_write_json, atomic_write_text
from .config import Config, load_config
from .errors import ComaliteError, ConfigError, RunConflictError
from .eval import get_dataset_info
from .paths import repo_dir
from .pipeline import ensure_stage, evaluate_models, stage_config
from .result import read_result
from .runs import differences, run_lock
from .stages import CONTRASTIVE_ONLY, STAGE2, Stage

log = logging.getLogger(__name__)

ARMS = {"contrastive_only": None, "coma": (), "qa_no_mask": ("stage1.mask=false",)}
"""Arm -> the stage-1 overrides that precede its stage 2 (None: no stage 1)."""

ABLATIONS = {"k4": ("model.n_compress=4",), "k16": ("model.n_compress=16",),
             "supervise_all": ("stage1.supervise=all",), "single_turn": ("stage1.multi_turn=false",)}
"""Variant -> overrides. K changes both stages' embedding, so contrastive-only runs with it too."""

TRANSFER_SUBSETS = ("SW-Count", "SW-Object", "SW-VQA")
"""Stage 2 of the transfer split trains on classification and VQA only; retrieval and grounding are unseen."""

GROUPS = ("classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall")
REPORT_FILE = "results.json"
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
    sets = [*overrides, *ABLATIONS.get(cell.variant, ()), *(ARMS[cell.arm] or ()),
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


def transfer_groups(scores: dict[str, float]) -> dict[str, float]:
    """Means over the datasets of the task families stage 2 saw in the transfer split, and of the others."""
    seen = {get_dataset_info(s).meta_task for s in TRANSFER_SUBSETS}
    groups = {"seen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task in seen],
              "unseen tasks": [v for d, v in scores.items() if get_dataset_info(d).meta_task not in seen]}
    return {k: float(np.mean(v)) for k, v in groups.items() if v}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` over paired seeds, its standard deviation and 95 % t-interval."""
    diff = np.asarray(a) - np.asarray(b)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"),
            "ci95": [float(diff.mean() - half), float(diff.mean() + half)], "seeds": len(diff)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (arm, variant, split, steps), with CoMa-style arms paired against
    contrastive-only of the same variant, split, steps and seed."""
    def key(r):
        return r["arm"], r["variant"], r["split"], r["steps"]

    def metrics(r):
        values = dict(r["aggregates"])
        if r["split"] == "transfer":
            values.update(transfer_groups(r["scores"]))
        return values

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for (arm, variant, split, steps), members in sorted(groups.items()):
        by_seed = {r["seed"]: metrics(r) for r in members}
        names = sorted(set.intersection(*(set(m) for m in by_seed.values())))
        entry = {"arm": arm, "variant": variant, "split": split, "steps": steps, "seeds": sorted(by_seed),
                 "train_seconds": float(np.mean([r["train_seconds"] for r in members])),
                 "mean": {n: float(np.mean([m[n] for m in by_seed.values()])) for n in names},
                 "std": {n: float(np.std([m[n] for m in by_seed.values()], ddof=1)) if len(by_seed) > 1 else 0.0
                         for n in names}}
        same_k = variant if variant.startswith("k") else ""  # K changes the baseline too; other variants do not
        baseline = [r for r in rows if key(r) == ("contrastive_only", same_k, split, steps)]
        paired = {r["seed"]: metrics(r) for r in baseline}
        common = sorted(set(by_seed) & set(paired))
        if arm != "contrastive_only" and common:
            entry["minus_contrastive_only"] = {n: paired_difference([by_seed[s][n] for s in common],
                                                                    [paired[s][n] for s in common]) for n in names}
        out.append(entry)
    return out


def difference_cell(diff: dict) -> str:
    """A paired difference (``paired_difference``) as a table cell, in points: ``+1.5 [-2.3, +5.3]``."""
    return f"{100 * diff['mean']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]"


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


def plot_budget_curve(summary: list[dict], save_to: Path, groups=("overall", "IND", "OOD"), floor: dict | None = None):
    """Precision@1 against stage-2 steps per arm (full split, no variant): mean line, +- std band; ``floor``
    (chance per group) as a dashed line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from .viz import SAVE_DPI

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), sharey=True)
    for ax, group in zip(np.atleast_1d(axes), groups):
        for arm in ARMS:
            points = sorted((e["steps"], e["mean"][group], e["std"][group]) for e in summary
                            if e["arm"] == arm and not e["variant"] and e["split"] == "all")
            if not points:
                continue
            x, m, s = map(np.array, zip(*points))
            ax.plot(x, 100 * m, marker="o", label=arm)
            ax.fill_between(x, 100 * (m - s), 100 * (m + s), alpha=0.2)
        if floor:
            ax.axhline(100 * floor[group], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(sorted({e["steps"] for e in summary if not e["variant"]}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(group)
        ax.set_xlabel("stage-2 steps")
    np.atleast_1d(axes)[0].set_ylabel("Precision@1 (%)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    save_to.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_to, dpi=SAVE_DPI, bbox_inches="tight")
    return fig


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
            for variant in ABLATIONS:
                arms = ("contrastive_only", "coma") if variant.startswith("k") else ("coma",)
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
    plot_budget_curve(summary, out / "budget_curve.png", floor=meta["chance"])
    return {"meta": meta, "summary": summary, "runs": rows}


def committed_report() -> Path | None:
    """The report committed with this checkout (``docs/experiments/does_compression_help``), or None when
    comalite runs from an installed copy."""
    repo = repo_dir()
    return repo / "docs" / "experiments" / "does_compression_help" if repo else None


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


def difference_in_words(diff: dict, what: str = "CoMa", than: str = "contrastive-only") -> str:
    """A paired difference as a plain sentence: its size in points, its interval, and whether the interval
    leaves zero out (then the seeds agree on the sign)."""
    mean, (low, high) = 100 * diff["mean"], (100 * diff["ci95"][0], 100 * diff["ci95"][1])
    if diff["seeds"] < 2:
        verdict = "one seed: no interval, so no verdict"
    elif low > 0 or high < 0:
        verdict = f"{what} is {'better' if mean > 0 else 'worse'}: the interval leaves zero out"
    else:
        verdict = "the interval holds zero: no difference the seeds can tell apart"
    return (f"{what} minus {than}: {mean:+.1f} points (95 % interval {low:+.1f} to {high:+.1f}, "
            f"{diff['seeds']} seeds); {verdict}")
