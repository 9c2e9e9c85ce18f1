"""What passes through the compression tokens: a stage-1 result's held-out answers by question type and by turn.

    python benchmarks/stage1_by_type.py runs/tiny/stage1                  # through the tokens (mask on)
    python benchmarks/stage1_by_type.py runs/tiny/stage1 --image-in-view  # plain causal: the answers see the image

Scores the preset's held-out stage-1 dialogues (``stage1.heldout``, the last ones of the stage-1 file) as
``objective.answer_accuracy`` does (``objective.answers_right``: teacher-forced exact match of every answer
token, its ``<|im_end|>`` included), answer by answer, then groups them by ShapesWorld question template and
by the turn an answer is in. Prints a table and, with ``--out``, writes it as JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def score_by_type(folder: Path, preset: str, compression_mask: bool) -> dict:
    import comalite
    from comalite.data import sources
    from comalite.objective import answers_right
    from comalite.result import load_result
    from comalite.sequence import dialogue_examples
    from comalite.shapesworld import question_template

    cfg = comalite.load_config(preset)
    heldout = sources.stage1_dialogues(cfg)[-cfg.stage1.heldout:]
    backbone = load_result(folder).eval()
    right = answers_right(backbone, dialogue_examples(backbone.processor, heldout, cfg.stage1),
                          compression_mask=compression_mask)
    by_type, by_turn = collections.defaultdict(list), collections.defaultdict(list)
    for dialogue, verdicts in zip(heldout, right):
        for turn, (qa, ok) in enumerate(zip(dialogue.turns, verdicts), start=1):
            by_type[question_template(qa.question)].append(ok)
            by_turn[turn].append(ok)

    def table(groups: dict) -> dict:
        return {str(k): {"answers": len(v), "accuracy": sum(v) / len(v)} for k, v in groups.items()}

    flat = [ok for verdicts in right for ok in verdicts]
    return {"result": str(folder), "compression_mask": compression_mask, "answers": len(flat),
            "accuracy": sum(flat) / len(flat), "by_question_type": table(by_type),
            "by_turn": table(dict(sorted(by_turn.items())))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a stage-1 result folder (holds result.json)")
    parser.add_argument("--preset", default="tiny", help="the preset whose held-out dialogues to score")
    parser.add_argument("--image-in-view", action="store_true", help="plain causal attention instead of the mask")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()
    scores = score_by_type(args.result, args.preset, compression_mask=not args.image_in_view)
    print(f"{scores['answers']} answers, {100 * scores['accuracy']:.1f} % right "
          f"({'image in view' if args.image_in_view else 'through the compression tokens'})")
    for name in ("by_question_type", "by_turn"):
        rows = sorted(scores[name].items(), key=lambda kv: -kv[1]["answers"] if name == "by_question_type" else 0)
        for key, row in rows:
            print(f"  {key:45s} {row['answers']:4d}  {100 * row['accuracy']:5.1f} %")
    if args.out:
        args.out.write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
