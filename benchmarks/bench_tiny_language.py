"""Pilot: does ShapesWorld's balanced, leak-free question language (``data.language=2``) make the tiny VLM read
its images more than the shipped language (1)? Builds the smoke-size tiny VLM once per language and compares,
per question type, the held-out accuracy (one QA turn per sequence) with the honest image-blind baseline
(``comalite.tiny.build.blind_by_template``: the template's answer prior, never below a uniform guess).

    python benchmarks/bench_tiny_language.py                    # languages 1 and 2, TinyConfig.smoke()
    python benchmarks/bench_tiny_language.py --steps 600        # a longer stage 0 (smoke: 150 steps)
    python benchmarks/bench_tiny_language.py --steps 150 600    # both, one pair each
    python benchmarks/bench_tiny_language.py --steps 600 --stage0-scenes 2000 \
        --set data.n_stage1_images=660 stage1.heldout=360       # fresh stage-0 scenes, 360 held-out dialogues

Every build runs in a fresh temporary data folder (``COMALITE_DATA``; nothing under ``data/`` is touched), with
the ``tiny-smoke`` preset's data (360 stage-1 dialogues, 60 held out) and one torch thread. These are pilot
numbers at smoke size, not the shipped model's. Results: ``benchmarks/results/tiny_language_pilot.json`` (a run
merges its builds into the file's ``runs``, keyed by language, steps, stage-0 scenes and overrides, each with the
command that made it) and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tiny_language_pilot.json"


def build_one(language: int, steps: int | None, home: Path, stage0_scenes: int | None = None,
              overrides: list[str] = ()) -> dict:
    """Build ShapesWorld (smoke) and the smoke tiny VLM with ``language`` under ``home``; the report's numbers."""
    os.environ["COMALITE_DATA"] = str(home / "data")  # read at call time by comalite.paths
    os.environ["COMALITE_HOME"] = str(home / "runs")
    from comalite.config import load_config
    from comalite.data.sources import ensure_data
    from comalite.tiny.build import TinyConfig, build_tiny_vlm

    data_cfg = load_config("tiny-smoke", [*overrides, f"data.language={language}"])
    tc = TinyConfig.smoke()
    tc.threads = 1
    if steps is not None:
        tc.stage0.steps = steps
    if stage0_scenes is not None:
        tc.stage0_scenes = stage0_scenes
    start = time.perf_counter()
    ensure_data(data_cfg)
    data_seconds = time.perf_counter() - start
    start = time.perf_counter()
    out = build_tiny_vlm(home / "data" / "tiny-vlm-smoke", tc, data_cfg=data_cfg)
    build_seconds = time.perf_counter() - start
    r = json.loads((out / "tiny_report.json").read_text())
    by_type = {t: {k: v[k] for k in ("answers", "accuracy", "blind", "prior", "uniform", "prior_answer")}
               for t, v in r["heldout_by_question_type"].items()}
    return {"language": language, "stage0_steps": tc.stage0.steps, "stage0_batch_size": tc.stage0.batch_size,
            "stage0_scenes": tc.stage0_scenes, "overrides": list(overrides),
            "command": "python benchmarks/bench_tiny_language.py " + " ".join(sys.argv[1:]),
            "stage0_sequences": r["stage0_sequences"], "heldout_turns": sum(v["answers"] for v in by_type.values()),
            "turn_accuracy": r["heldout_turn_accuracy"], "turn_blind": r["heldout_turn_blind"],
            "turn_gap_over_blind": r["heldout_turn_accuracy"] - r["heldout_turn_blind"],
            "dialogue_accuracy": r["heldout_answer_accuracy"], "dialogue_blind": r["heldout_blind_accuracy"],
            "vision_token_accuracy": r["vision_token_accuracy"], "stage0_last_loss": r["stage0_last_loss"],
            "data_seconds": round(data_seconds, 1), "build_seconds": round(build_seconds, 1),
            "vision_seconds": r["vision_seconds"], "stage0_seconds": r["stage0_seconds"],
            "torch_threads": r["torch_threads"], "by_type": by_type}


def table(runs: list[dict]) -> str:
    """Per question type: answers, accuracy and honest blind per run; then the overall rows."""
    heads = [f"L{r['language']}/{r['stage0_steps']}st" + (f"+{r['stage0_scenes']}sc" if r["stage0_scenes"] else "")
             for r in runs]
    types = sorted({t for r in runs for t in r["by_type"]},
                   key=lambda t: -runs[0]["by_type"].get(t, {"answers": 0})["answers"])
    lines = [f"{'question type':42s} " + " ".join(f"{h:>22s}" for h in heads),
             f"{'':42s} " + " ".join(f"{'n   acc %  blind %':>22s}" for _ in heads)]
    for t in types:
        cells = []
        for r in runs:
            v = r["by_type"].get(t)
            cells.append(f"{v['answers']:4d} {100 * v['accuracy']:6.1f} {100 * v['blind']:7.1f}" if v else "-")
        lines.append(f"{t[:42]:42s} " + " ".join(f"{c:>22s}" for c in cells))
    for label, key in (("one turn: accuracy %", "turn_accuracy"), ("one turn: honest blind %", "turn_blind"),
                       ("one turn: gap over blind (points)", "turn_gap_over_blind"),
                       ("whole dialogues: accuracy %", "dialogue_accuracy"),
                       ("whole dialogues: honest blind %", "dialogue_blind")):
        lines.append(f"{label:42s} " + " ".join(f"{100 * r[key]:22.1f}" for r in runs))
    lines.append(f"{'build seconds (1 thread)':42s} " + " ".join(f"{r['build_seconds']:22.1f}" for r in runs))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="*", default=[None], help="stage-0 steps (default: smoke's 150)")
    ap.add_argument("--languages", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--stage0-scenes", type=int, default=None, help="fresh stage-0 scenes (smoke: 0)")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides, e.g. stage1.heldout=360")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {"runs": []}
    runs = []
    for steps in args.steps:
        for language in args.languages:
            with tempfile.TemporaryDirectory(prefix="comalite-lang-") as tmp:
                r = build_one(language, steps, Path(tmp), args.stage0_scenes, args.overrides)
            runs.append(r)
            print(f"language {language}, {r['stage0_steps']} stage-0 steps: one turn {100 * r['turn_accuracy']:.1f} % "
                  f"vs honest blind {100 * r['turn_blind']:.1f} % ({r['build_seconds']:.0f} s)", flush=True)
    def key(r):
        return r["language"], r["stage0_steps"], r.get("stage0_scenes", 0), tuple(r.get("overrides", ()))

    keep = [r for r in saved["runs"] if key(r) not in {key(x) for x in runs}]
    saved = {"about": "smoke-size tiny VLM (TinyConfig.smoke(), tiny-smoke data), one torch thread; pilot numbers, "
                      "not the shipped model. blind = honest image-blind baseline per question template "
                      "(answer prior, never below uniform).",
             "runs": sorted(keep + runs, key=lambda r: (r["stage0_steps"], key(r)[2:], r["language"]))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(table(saved["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
