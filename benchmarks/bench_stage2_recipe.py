"""What limits the tiny contrastive-only embedder? Stage 2 from the tiny VLM, one setting changed at a time.

    # every single-change arm, 150 steps, one seed (~30 min of one core)
    python benchmarks/bench_stage2_recipe.py --tag single
    # the best changes together against the preset, three seeds (rows already measured are reused)
    python benchmarks/bench_stage2_recipe.py --tag combined --arms baseline,temp0.1,lora_mlp,lora_mlp+temp0.1 \\
        --seeds 0,1,2 --reuse benchmarks/results/stage2_recipe/single.json
    python benchmarks/bench_stage2_recipe.py --list            # the arms and what each changes

Every arm is the contrastive-only run of ``--preset`` (default ``tiny-experiment``: the tiny preset's training
on the same training data, with 600 evaluation queries per dataset to sample from) with ``stage2.init=backbone``,
``--steps`` stage-2 steps (default 150) and the change the arm names (``ARMS``; ``a+b`` combines arms). It trains
into a fresh temporary run folder of its own (never one shared across settings), then is scored MMEB-style
(Precision@1) on ``--queries`` seeded queries per evaluation dataset (the same queries for every arm). Each seed of
``--seeds`` sets ``stage2.train.seed`` (LoRA initialisation, compression rows, batch order, dropout).

Results go to ``--out`` (default ``benchmarks/results/stage2_recipe/<tag>.json``), written after every run: one
row per arm and seed with the arm's changes, its whole resolved settings, seconds and scores (per dataset, per
meta-task, IND/OOD, overall), then a summary per arm (mean and sample standard deviation over seeds, and the
difference from ``baseline`` paired by seed with a 95 % t-interval). A row of that file, or of a ``--reuse`` file
(then marked ``reused_from``), with the same settings (bookkeeping aside) is reused instead of trained again, so an
interrupted run resumes. A run the divergence guard stops is kept as a row with its ``error``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "stage2_recipe"
MLP = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
ARMS: dict[str, dict[str, object]] = {
    "baseline": {},
    "lr1e-3": {"stage2.train.lr": 1e-3},
    "lr5e-3": {"stage2.train.lr": 5e-3},
    "temp0.02": {"stage2.temperature": 0.02},
    "temp0.1": {"stage2.temperature": 0.1},
    "batch16": {"stage2.train.batch_size": 16},
    "batch64": {"stage2.train.batch_size": 64},
    "lora_r4": {"model.lora_r": 4, "model.lora_alpha": 8},        # alpha / r kept at the preset's 2
    "lora_r64": {"model.lora_r": 64, "model.lora_alpha": 128},
    "lora_mlp": {"model.lora_targets": MLP},
    "hard_neg": {"stage2.hard_negatives": True},
    "k4": {"model.n_compress": 4},
    "k16": {"model.n_compress": 16},
    # Not in the default set; measured only when named.
    "lr1e-2": {"stage2.train.lr": 1e-2},
    "temp0.2": {"stage2.temperature": 0.2},
    "mixed": {"stage2.sub_batch_size": 0},                         # negatives from every task, not one
    "pool_last": {"stage2.pooling": "last"},
    "symmetric": {"stage2.symmetric": True},
    "no_dropout": {"model.lora_dropout": 0.0},
}
"""Arm -> the settings it changes from the preset (``section.field``: value). A LoRA rank keeps alpha / r."""
DEFAULT_ARMS = ("baseline", "lr1e-3", "lr5e-3", "temp0.02", "temp0.1", "batch16", "batch64", "lora_r4", "lora_r64",
                "lora_mlp", "hard_neg", "k4", "k16")
GROUPS = ("classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall")
HELDOUT = "heldout_inbatch"
"""Also summarised: stage 2's own held-out retrieval (``stage2.inbatch_accuracy``: 5 % of the training pairs, each
query against the targets of its block of 16 same-subset pairs), the training task measured without the eval's
shift."""
IGNORED = {"out_dir"} | {f"{s}.{f}" for s in ("model", "data", "stage1", "stage2") for f in
                         ("root", "image_root", "device", "cpu_threads", "vision_cache_mb", "dialogues", "workers")} | \
          {f"{s}.train.{f}" for s in ("stage1", "stage2") for f in ("save_every", "log_every")}
"""Settings that never change what a run learns or scores: left out when rows are matched for reuse."""


def arm_changes(name: str) -> dict[str, object]:
    """The settings ``name`` changes: one arm of ``ARMS``, or several joined by ``+`` (each setting once)."""
    changes: dict[str, object] = {}
    for part in name.split("+"):
        if part not in ARMS:
            raise SystemExit(f"unknown arm {part!r}; known: {', '.join(ARMS)} (join several with +)")
        clash = set(changes) & set(ARMS[part])
        if clash:
            raise SystemExit(f"arm {name!r} sets {', '.join(sorted(clash))} twice")
        changes.update(ARMS[part])
    return changes


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and k not in ("subset_caps", "meta_tasks"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _value(v) -> str:
    return ",".join(v) if isinstance(v, (list, tuple)) else str(v).lower() if isinstance(v, bool) else str(v)


def arm_config(preset: str, name: str, *, steps: int, seed: int, queries: int, out_dir: Path,
               extra: list[str] = ()):
    """The config of one run: the preset, contrastive-only, the common settings, the arm's changes."""
    from comalite.config import load_config

    sets = ["stage2.init=backbone", f"stage2.train.steps={steps}", f"stage2.train.seed={seed}",
            f"eval.max_queries={queries}", "stage2.train.save_every=0", *extra]
    sets += [f"{k}={_value(v)}" for k, v in arm_changes(name).items()]
    return load_config(preset, [*sets, f"out_dir={out_dir}"])


def settings_of(cfg) -> dict:
    """A run's resolved settings, flat (``section.field``), without what only says where it runs."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in IGNORED}


def run_arm(cfg, *, keep: bool = False) -> dict:
    """Train the contrastive-only model of ``cfg`` in its (fresh) run folder and score it."""
    from comalite.pipeline import ensure_stage, evaluate_models
    from comalite.result import read_result

    start = time.perf_counter()
    try:
        folder = ensure_stage(cfg, "contrastive_only")
        trained = time.perf_counter()
        results = evaluate_models(cfg, ["contrastive_only"])
        metrics = read_result(folder)["metrics"]
    finally:
        if not keep:
            shutil.rmtree(cfg.run_dir(), ignore_errors=True)
    end = time.perf_counter()
    return {"train_seconds": round(metrics["train_seconds"], 1), "run_seconds": round(trained - start, 1),
            "eval_seconds": round(end - trained, 1),
            "seconds_per_step": round(metrics["train_seconds"] / cfg.stage2.train.steps, 3),
            "first_loss": metrics["first_loss"], "last_loss": metrics["last_loss"],
            "heldout_accuracy_before": metrics["heldout_accuracy_before"],
            "heldout_accuracy_after": metrics["heldout_accuracy_after"],
            "scores": results["scores"]["contrastive_only"], "aggregates": results["aggregates"]["contrastive_only"],
            "chance": results["chance_aggregates"],
            "n_queries": {d["name"]: d["n_queries"] for d in results["datasets"]}}


def summarize(rows: list[dict]) -> list[dict]:
    """Per arm: mean and sample standard deviation over its seeds, and minus ``baseline`` paired by seed."""
    import numpy as np

    from comalite.experiment_stats import paired_difference

    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    def metrics(r):
        return {**r["aggregates"], HELDOUT: r["heldout_accuracy_after"]}

    base = {r["seed"]: metrics(r) for r in rows if r["arm"] == "baseline"}
    out = []
    for arm in arms:
        members = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        by_seed = {r["seed"]: metrics(r) for r in members}
        names = [g for g in (*GROUPS, HELDOUT) if all(g in a for a in by_seed.values())]
        entry = {"arm": arm, "changes": members[0]["changes"], "seeds": sorted(by_seed),
                 "train_seconds": float(np.mean([r["train_seconds"] for r in members])),
                 "mean": {g: float(np.mean([a[g] for a in by_seed.values()])) for g in names},
                 "std": {g: float(np.std([a[g] for a in by_seed.values()], ddof=1)) if len(by_seed) > 1 else None
                         for g in names}}
        common = sorted(set(by_seed) & set(base))
        if arm != "baseline" and common:
            entry["minus_baseline"] = {g: paired_difference([by_seed[s][g] for s in common],
                                                            [base[s][g] for s in common]) for g in names}
        out.append(entry)
    return out + [{"arm": r["arm"], "changes": r["changes"], "seeds": [], "failed_seed": r["seed"], "error": r["error"]}
                  for r in failed]


def format_table(rows: list[dict], summary: list[dict]) -> str:
    lines = ["| arm | changes | seed | train s | s/step | " + " | ".join(GROUPS) + " | held-out in-batch |",
             "|---|---|---:|---:|---:|" + "---:|" * (len(GROUPS) + 1)]
    for r in rows:
        changes = ", ".join(f"{k.split('.')[-1]}={_value(v)}" for k, v in r["changes"].items()) or "(preset)"
        if "error" in r:
            lines.append(f"| {r['arm']} | {changes} | {r['seed']} | failed: {r['error'].splitlines()[0][:160]} |")
            continue
        lines.append(f"| {r['arm']} | {changes} | {r['seed']} | {r['train_seconds']:.0f} | "
                     f"{r['seconds_per_step']:.2f} | " + " | ".join(f"{100 * r['aggregates'][g]:.1f}" for g in GROUPS)
                     + f" | {100 * r['heldout_accuracy_after']:.1f} |")
    if any(len(s["seeds"]) > 1 for s in summary):
        lines += ["", "| arm | seeds | " + " | ".join(GROUPS) + " | held-out in-batch | overall minus baseline "
                  "(paired, 95 % CI) | held-out minus baseline |", "|---|---|" + "---:|" * (len(GROUPS) + 3)]
        for s in summary:
            if not s["seeds"]:
                continue
            cells = [f"{100 * s['mean'][g]:.1f}" + (f" +- {100 * s['std'][g]:.1f}" if s["std"][g] is not None else "")
                     for g in (*GROUPS, HELDOUT)]

            def diff(name):
                d = s.get("minus_baseline", {}).get(name)
                return (f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
                        if d and d["seeds"] > 1 else f"{100 * d['mean']:+.1f}" if d else "-")
            lines.append(f"| {s['arm']} | {','.join(map(str, s['seeds']))} | " + " | ".join(cells)
                         + f" | {diff('overall')} | {diff(HELDOUT)} |")
    return "\n".join(lines)


def _matching(rows: list[dict], settings: dict) -> dict | None:
    return next((r for r in rows if r.get("settings") == settings), None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-experiment")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help="comma-separated arms (a+b: both changes); --list shows them")
    parser.add_argument("--steps", type=int, default=150, help="stage-2 steps of every arm")
    parser.add_argument("--seeds", default="0", help="comma-separated stage-2 seeds")
    parser.add_argument("--queries", type=int, default=200, help="queries per eval dataset, seeded (0 = all)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a setting for every arm (e.g. for a quick test)")
    parser.add_argument("--reuse", action="append", default=[], help="a results file whose matching rows to reuse")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (default: deleted)")
    parser.add_argument("--list", action="store_true", help="print the arms and exit")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", help="JSON file (default results/stage2_recipe/<tag>.json)")
    args = parser.parse_args(argv)
    if args.list:
        for name, changes in ARMS.items():
            print(f"{name:12s} {'*' if name in DEFAULT_ARMS else ' '} {changes or '(the preset)'}")
        return {"arms": ARMS}
    if not args.tag and not args.out:
        parser.error("give --tag (or --out)")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not arms or not seeds or len(set(arms)) < len(arms) or len(set(seeds)) < len(seeds):
        parser.error("--arms and --seeds: at least one each, each once")
    for arm in arms:
        arm_changes(arm)
    out = Path(args.out) if args.out else RESULTS / f"{args.tag}.json"

    import torch

    from comalite.atomic import atomic_write_json
    from comalite.errors import ComaliteError

    torch.set_num_threads(int(os.environ.get("COMALITE_CPU_THREADS") or 1))
    known = []  # rows measured before: this file's own first, then those of --reuse (marked with where from)
    for path in [out, *map(Path, args.reuse)]:
        if path.exists():
            known += [r if path == out else {**r, "reused_from": r.get("reused_from", path.name)}
                      for r in json.loads(path.read_text()).get("runs", [])]
    work = Path(tempfile.mkdtemp(prefix="comalite-s2recipe-"))
    common = dict(steps=args.steps, queries=args.queries, extra=args.set)
    base = arm_config(args.preset, "baseline", seed=seeds[0], out_dir=work / "base", **common)
    meta = {"preset": args.preset, "steps": args.steps, "queries": args.queries, "seeds": seeds, "arms": arms,
            "common_sets": ["stage2.init=backbone", *args.set], "baseline_settings": settings_of(base),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows = []
    try:
        for seed in seeds:
            for arm in arms:
                cfg = arm_config(args.preset, arm, seed=seed, out_dir=work / f"{arm}-seed{seed}", **common)
                settings = settings_of(cfg)
                row = _matching(known, settings)
                if row is None:
                    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed} ...", file=sys.stderr, flush=True)
                    row = {"arm": arm, "seed": seed, "changes": arm_changes(arm), "settings": settings}
                    try:
                        row.update(run_arm(cfg, keep=args.keep))
                    except ComaliteError as err:  # e.g. the divergence guard stopped it: a result, kept as such
                        row["error"] = f"{type(err).__name__}: {err}"
                    known.append(row)
                else:
                    row = {**row, "arm": arm, "changes": arm_changes(arm)}
                rows.append(row)
                print(f"{arm} seed {seed}: " + (row["error"] if "error" in row else
                      f"overall {100 * row['aggregates']['overall']:.1f} % ({row['train_seconds']:.0f} s training)"),
                      file=sys.stderr, flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json({"meta": meta, "summary": summarize(rows), "runs": rows}, out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {"meta": meta, "summary": summarize(rows), "runs": rows}
    atomic_write_json(report, out)
    print(format_table(rows, report["summary"]))
    chance = next((r["chance"] for r in rows if "chance" in r), {})
    print("chance: " + ", ".join(f"{g} {100 * chance[g]:.1f}" for g in GROUPS if g in chance))
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("COMALITE_CPU_THREADS", "1")
    sys.exit(0 if main() else 1)
