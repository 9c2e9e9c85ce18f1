"""Converged references: a run of the recipe trained far longer (where its curves flatten, or as near as one core
affords), shipped in ``data/references/``, so that a short live run (the demo's, a lesson's) is shown beside what
more training buys without waiting for it.

    comalite reference --preset tiny-reference   # trains and evaluates what is missing, then copies it there

A reference folder holds what a reader needs and nothing that only resumes training::

    stage1/ stage2/ contrastive_only/   result folders: adapters, compression rows, result.json, run.json,
                                        history.json (the loss curve); no checkpoint.pt
    eval/results.json, eval/results.md  their evaluation, as ``comalite eval`` wrote it
    CHECKSUMS                           sha256 of every file above, checked before it is read

A live run is shown the reference made from the same backbone, stage-2 training data, images and model
settings (``find``: keyed by content, never by a preset's name); the training lengths are what differs. Where
none matches, ``find`` says what differs from the nearest one.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .checkpoints import CHECKSUMS, verify_checksums, write_checksums
from .config import Config
from .errors import ComaliteError
from .eval.report import format_table
from .fingerprint import sha256_file
from .paths import data_dir, shipped
from .pipeline import stage_config
from .result import read_result
from .runs import RUN_FILE, differences, read_record, stage_record
from .stages import CONTRASTIVE_ONLY, STAGE2, STAGES, get_stage

COPIED = ("adapters", "compression.safetensors", "result.json", RUN_FILE, "history.json")
"""What of a stage's result folder a reference keeps: enough to load and plot it, not to resume it."""
EVAL_FILES = ("results.json", "results.md")
CONVERGED = " (converged)"
"""Appended to a model's name for the reference's column beside the live one."""


def ship(run_dir: str | Path, out: str | Path) -> Path:
    """Copy the finished run in ``run_dir`` (every stage and its evaluation) into the reference folder ``out``,
    replacing it whole: it is assembled beside ``out`` and renamed into place, so a failure leaves the old one."""
    run_dir, out = Path(run_dir), Path(out)
    missing = [str(run_dir / s / "result.json") for s in STAGES if not (run_dir / s / "result.json").exists()]
    missing += [str(run_dir / "eval" / f) for f in EVAL_FILES if not (run_dir / "eval" / f).exists()]
    if missing:
        raise ComaliteError(f"{run_dir} is not a finished run, missing: {', '.join(missing)}: run `comalite demo` "
                            "with the same preset first (it trains and evaluates every stage)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for stage in STAGES:
            (work / stage).mkdir()
            for name in COPIED:
                source = run_dir / stage / name
                if source.is_dir():  # peft's model card is not needed to load, and names the machine's path
                    shutil.copytree(source, work / stage / name, ignore=shutil.ignore_patterns("README.md"))
                elif source.exists():
                    shutil.copy2(source, work / stage / name)
            _drop_machine_paths(work / stage)
        (work / "eval").mkdir()
        for name in EVAL_FILES:
            shutil.copy2(run_dir / "eval" / name, work / "eval" / name)
        write_checksums(work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _drop_machine_paths(folder: Path) -> None:
    """A run records two absolute paths of the machine that trained it: the image folder it read (beside its
    fingerprint, ``runs.stage_record``) and peft's ``base_model_name_or_path``. A shipped copy keeps the image
    folder's last two parts and the backbone as the preset names it (the hashes of the configs so changed are
    recorded again; the weights, and so their fingerprints, are untouched)."""
    info = json.loads((folder / "result.json").read_text())
    for config in sorted((folder / "adapters").glob("*/adapter_config.json")):
        adapter = json.loads(config.read_text())
        adapter["base_model_name_or_path"] = info["model"]["backbone"]
        config.write_text(json.dumps(adapter, indent=2))
        info["sha256"][config.relative_to(folder).as_posix()] = sha256_file(config)
    record = json.loads((folder / RUN_FILE).read_text())
    for run in (record, info["run"]):
        run["image_root"] = str(Path(*Path(run["image_root"]).parts[-2:]))
    (folder / RUN_FILE).write_text(json.dumps(record, indent=1))
    (folder / "result.json").write_text(json.dumps(info, indent=1))


def _compared(record: dict) -> dict:
    """What a reference must share with a live run: the inputs of contrastive tuning and the model settings."""
    return {"inputs": {k: record["inputs"][k] for k in ("backbone", "data", "images")},
            "model": record["settings"]["model"]}


def roots() -> list[Path]:
    """Where references are looked for: ``<data>/references`` (where ``comalite reference`` writes), then the
    shipped ones (the checkout's ``data/references``, or an installed package's copy)."""
    found: list[Path] = []
    for folder in (data_dir() / "references", shipped("references")):  # the two are one folder in a checkout
        if folder is not None and folder.is_dir() and folder.resolve() not in [p.resolve() for p in found]:
            found.append(folder)
    return found


def find(cfg: Config, root: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The reference under ``root`` (default: ``roots()``) made from ``cfg``'s backbone, stage-2 data, images
    and model settings, and ``[]``; or None and what differs from the nearest one (``["no reference is
    shipped"]`` when there is none)."""
    searched = [Path(root)] if root is not None else roots()
    folders = [p for r in searched if r.is_dir() for p in sorted(r.iterdir()) if (p / CHECKSUMS).exists()]
    if not folders:
        return None, ["no reference is shipped"]
    live = _compared(stage_record(stage_config(cfg, CONTRASTIVE_ONLY.name), "stage2"))
    found = []
    for folder in folders:
        shipped_record = read_record(folder / STAGE2.name)
        diff = differences(_compared(shipped_record), live) if shipped_record else ["its stage-2 run.json is missing"]
        if not diff:
            return folder, []
        found.append((len(diff), str(folder), diff))
    return None, min(found)[2]


def load(folder: str | Path) -> dict:
    """The reference's evaluation (``eval/results.json``), after checking every file against ``CHECKSUMS``."""
    folder = Path(folder)
    verify_checksums(folder, required=True, fix=f"restore it from a comalite checkout (`git checkout {folder}` in "
                     f"one), or rebuild it with `comalite reference --preset {folder.name}` (hours of one core)")
    return json.loads((folder / "eval" / "results.json").read_text())


def lengths(folder: str | Path) -> dict[str, int]:
    """Optimizer steps of each stage of the reference, by stage name."""
    return {s: read_result(Path(folder) / s)["metrics"]["steps"] for s in STAGES}


def beside(live: dict, reference: dict, models: tuple[str, ...] = ("stage2", "contrastive_only")) -> dict:
    """One results dict (``comalite.eval``'s shape) holding, for each of ``models``, the live run's column and
    then the reference's (named with ``CONVERGED``), so ``format_table`` prints them side by side. Both must
    have scored the same datasets with the same query sampling."""
    for name in models:
        get_stage(name)
    scored = lambda results: ([(d["name"], d["n_queries"]) for d in results["datasets"]], results["sampling"])
    if scored(live) != scored(reference):
        raise ComaliteError("the reference was evaluated on other datasets or queries than this run: evaluate "
                            "both with the same data and eval settings to compare them")
    merged = dict(live, models=[m + suffix for m in models for suffix in ("", CONVERGED)])
    for key, value in live.items():
        if isinstance(value, dict) and set(live["models"]) <= set(value):  # a value per model: scores, floors...
            merged[key] = {m + suffix: run[key][m] for m in models for suffix, run in (("", live),
                                                                                       (CONVERGED, reference))}
    return merged


def report(cfg: Config, live: dict, root: str | Path | None = None) -> str:
    """What the demo prints after its own table: the live run beside the matching reference (markdown), or one
    line saying why there is none."""
    folder, why_not = find(cfg, root)
    if folder is None:
        return f"No converged reference for these settings ({'; '.join(why_not)}).\n"
    steps = lengths(folder)
    title = (f"# Beside the converged reference: `{folder.name}` (stage 1 {steps['stage1']:,} steps, stage 2 "
             f"{steps['stage2']:,}, contrastive-only {steps['contrastive_only']:,}); this run: stage 1 "
             f"{cfg.stage1.train.steps:,} steps, stage 2 {cfg.stage2.train.steps:,}")
    return title + "\n\n" + format_table(beside(live, load(folder))).split("\n", 2)[2]
