"""The shipped tiny VLM's held-out answers against the honest image-blind baseline, without rebuilding it.

    python benchmarks/honest_blind.py            # data/tiny-vlm against the tiny preset's data -> results/honest_blind.json

``tiny_report.json`` of a checkpoint built before the honest baseline holds a per-question-string "blind" (a
prior memorised per exact question: 2 % on yes/no relations, where a coin scores 50 %). The answers per type
are still right; only the baseline needs recomputing, and it needs no model: the build's own stage-0 turns
(the stage-1 training dialogues plus its seeded stage-0 scenes, regenerated here exactly as the build drew
them) give each template's answer prior (``comalite.tiny.build.blind_by_template``), never below a uniform
guess among the template's answers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from comalite.atomic import atomic_write_json
from comalite.checkpoints import resolve_checkpoint
from comalite.config import load_config
from comalite.data.sources import ensure_data, stage1_dialogues
from comalite.records import Dialogue
from comalite.tiny.build import TinyConfig, blind_by_template, stage0_dialogues

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "honest_blind.json"


def honest_blind(backbone: str = "tiny", preset: str = "tiny") -> dict:
    report = json.loads((Path(resolve_checkpoint(backbone)) / "tiny_report.json").read_text())
    tc = TinyConfig(**{k: v for k, v in report["config"].items() if k not in ("stage0", "vision")})
    data_cfg = load_config(preset, [f"data.language={report.get('language', 1)}"])
    ensure_data(data_cfg)
    dialogues = stage1_dialogues(data_cfg)
    train, heldout = dialogues[:-data_cfg.stage1.heldout], dialogues[-data_cfg.stage1.heldout:]
    with tempfile.TemporaryDirectory() as tmp:
        extra = stage0_dialogues(Path(tmp), tc.stage0_scenes, tc.seed, tc.image_size, tc.stage0_turns,
                                 data_cfg.data.language)
    stage0 = [Dialogue(turns=(t,), image=d.image) for d in train + extra for t in d.turns]
    blind = blind_by_template(stage0, heldout)
    rows = {}
    for template, shipped in report["heldout_by_question_type"].items():
        rows[template] = {"answers": shipped["answers"], "accuracy": shipped["accuracy"],
                          "blind_per_string": shipped["blind"], **blind[template]}
    n = sum(r["answers"] for r in rows.values())
    short = {t: r for t, r in rows.items() if r["uniform"] > 0}  # every type but the free description
    m = sum(r["answers"] for r in short.values())
    return {"backbone": backbone, "language": report.get("language", 1), "by_question_type": rows,
            "turn_accuracy": sum(r["accuracy"] * r["answers"] for r in rows.values()) / n,
            "turn_blind": sum(r["blind"] * r["answers"] for r in rows.values()) / n,
            "short_answer_accuracy": sum(r["accuracy"] * r["answers"] for r in short.values()) / m,
            "short_answer_blind": sum(r["blind"] * r["answers"] for r in short.values()) / m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    result = honest_blind(args.backbone, args.preset)
    atomic_write_json(result, args.out)
    print("| question type | answers | accuracy | blind (per string, as shipped) | honest blind (template prior, >= uniform) |")
    print("|---|---:|---:|---:|---:|")
    for template, r in sorted(result["by_question_type"].items(), key=lambda kv: -kv[1]["answers"]):
        print(f"| {template} | {r['answers']} | {100 * r['accuracy']:.1f} | {100 * r['blind_per_string']:.1f} | "
              f"{100 * r['blind']:.1f} |")
    print(f"\none turn at a time: {100 * result['turn_accuracy']:.1f} % vs honest blind {100 * result['turn_blind']:.1f} %;"
          f" short answers (no description): {100 * result['short_answer_accuracy']:.1f} % vs "
          f"{100 * result['short_answer_blind']:.1f} %. Saved {args.out}")


if __name__ == "__main__":
    main()
