"""What passes through the compression tokens: held-out stage-1 answers by question type and by turn.

    python benchmarks/stage1_by_type.py runs/tiny/stage1                  # through the tokens (mask on)
    python benchmarks/stage1_by_type.py runs/tiny/stage1 --image-in-view  # plain causal: the answers see the image
    python benchmarks/stage1_by_type.py --vlm [--separate-turns]          # the preset's VLM itself, no compression
                                                                          # tokens (other turns hidden, with the flag)

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


def score_by_type(folder: Path | None, preset: str, compression_mask: bool, separate_turns: bool = False) -> dict:
    """``folder``: a stage-1 result, scored with its compression tokens; None: the preset's VLM itself, on the
    dialogues without compression tokens (as it was built), the image in view."""
    import comalite
    from comalite.data import sources
    from comalite.objective import answers_right
    from comalite.result import load_result
    from comalite.sequence import dialogue_examples
    from comalite.shapesworld import question_template
    from comalite.stage1 import load_stage1_backbone

    cfg = comalite.load_config(preset)
    heldout = sources.stage1_dialogues(cfg)[-cfg.stage1.heldout:]
    # A fresh stage-1 LoRA is zero: load_stage1_backbone is the VLM itself, its compression tokens unused here.
    backbone = (load_result(folder) if folder else load_stage1_backbone(cfg)).eval()
    examples = dialogue_examples(backbone.processor, heldout, cfg.stage1, with_compression=folder is not None)
    compression_mask = compression_mask and folder is not None  # the VLM alone has no tokens to go through
    right = answers_right(backbone, examples, compression_mask=compression_mask, separate_turns=separate_turns)
    by_type, by_turn = collections.defaultdict(list), collections.defaultdict(list)
    for dialogue, verdicts in zip(heldout, right):
        for turn, (qa, ok) in enumerate(zip(dialogue.turns, verdicts), start=1):
            by_type[question_template(qa.question)].append(ok)
            by_turn[turn].append(ok)

    def table(groups: dict) -> dict:
        return {str(k): {"answers": len(v), "accuracy": sum(v) / len(v)} for k, v in groups.items()}

    flat = [ok for verdicts in right for ok in verdicts]
    return {"result": str(folder) if folder else f"the {preset} VLM", "compression_mask": compression_mask,
            "separate_turns": separate_turns, "answers": len(flat),
            "accuracy": sum(flat) / len(flat), "by_question_type": table(by_type),
            "by_turn": table(dict(sorted(by_turn.items())))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, nargs="?", help="a stage-1 result folder (holds result.json)")
    parser.add_argument("--vlm", action="store_true", help="score the preset's VLM itself instead of a result")
    parser.add_argument("--preset", default="tiny", help="the preset whose held-out dialogues to score")
    parser.add_argument("--image-in-view", action="store_true", help="plain causal attention instead of the mask")
    parser.add_argument("--separate-turns", action="store_true", help="each turn hidden from the others")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()
    if (args.result is None) == (not args.vlm):
        parser.error("give a stage-1 result folder or --vlm (one of them)")
    scores = score_by_type(args.result, args.preset, compression_mask=not args.image_in_view,
                           separate_turns=args.separate_turns)
    print(f"{scores['answers']} answers, {100 * scores['accuracy']:.1f} % right "
          f"({'through the compression tokens' if scores['compression_mask'] else 'image in view'})")
    for name in ("by_question_type", "by_turn"):
        rows = sorted(scores[name].items(), key=lambda kv: -kv[1]["answers"] if name == "by_question_type" else 0)
        for key, row in rows:
            print(f"  {key:45s} {row['answers']:4d}  {100 * row['accuracy']:5.1f} %")
    if args.out:
        args.out.write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
