"""VQA Precision@1 by question type, beside each type's own query-blind floor.

    python benchmarks/vqa_by_type.py --preset tiny-experiment \
        --models data/references/tiny-reference/stage2,data/references/tiny-reference/contrastive_only \
        --datasets SW-VQA-Heldout,SW-VQA --out benchmarks/results/converged/vqa_by_type.json

Splits each VQA dataset of the preset's evaluation by ShapesWorld question template and scores every part as
its own dataset (``comalite.eval.evaluate_dataset``): Precision@1, and the query-blind score of that part (its
candidates against the mean of its own queries, i.e. the best a model could do with one fixed guess per type).
Where a type's Precision@1 is near its query-blind score, the embedder answers that type by its answer prior.
Beside it, each model's cosine between the answers of one kind (``ANSWERS``: "small" and "large", the colours,
...): two answers the model embeds as one cannot be told apart by any query. Embeddings are cached under
``--cache`` (by model and inputs, as ``comalite eval`` caches them).
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def by_type(preset: str, models: list[str], datasets: list[str], cache: Path) -> dict:
    import comalite
    from comalite.data.sources import eval_datasets
    from comalite.eval import evaluate_dataset
    from comalite.pipeline import embedding_model
    from comalite.records import EvalDataset
    from comalite.shapesworld import question_template

    cfg = comalite.load_config(preset)
    chosen = [d for d in eval_datasets(cfg) if d.name in datasets]
    missing = sorted(set(datasets) - {d.name for d in chosen})
    if missing:
        raise SystemExit(f"no evaluation dataset named {missing} in preset {preset}")
    out = {"preset": preset, "models": models, "datasets": {}, "answer_cosines": {}}
    for model in (embedding_model(cfg, name) for name in models):
        out["answer_cosines"][model.name] = answer_cosines(model)
        for data in chosen:
            parts = collections.defaultdict(list)
            for q in data.queries:
                parts[question_template(q.query.text.rsplit("question: ", 1)[-1])].append(q)
            rows = out["datasets"].setdefault(data.name, {})
            for template, queries in sorted(parts.items(), key=lambda kv: -len(kv[1])):
                r = evaluate_dataset(model, EvalDataset(f"{data.name}:{template}", queries), cache_dir=cache,
                                     progress=False)
                truths = collections.Counter(q.candidates[0].text for q in queries)
                rows.setdefault(template, {"queries": len(queries), "chance": r["chance"],
                                           "top_answer_share": truths.most_common(1)[0][1] / len(queries)})
                rows[template][model.name] = {"precision_at_1": r["precision_at_1"], "query_blind": r["query_blind"]}
    return out


def answer_cosines(model) -> dict:
    """Mean and largest cosine between two different answers of each answer kind, as ``model`` embeds them."""
    import numpy as np

    from comalite.shapesworld.language import ANSWERS

    out = {}
    for kind, words in ANSWERS.items():
        embedded = model.encode(list(words))
        cosines = (embedded @ embedded.T)[~np.eye(len(words), dtype=bool)]
        out[kind] = {"mean": float(cosines.mean()), "max": float(cosines.max())}
    return out


def table(result: dict) -> str:
    models = result["models"]
    lines = ["## Cosine between two answers of one kind (mean / largest)", "",
             "| answers | " + " | ".join(models) + " |", "|---" * (1 + len(models)) + "|"]
    for kind in result["answer_cosines"][models[0]]:
        lines.append(f"| {kind} | " + " | ".join(f"{result['answer_cosines'][m][kind]['mean']:.3f} / "
                                                  f"{result['answer_cosines'][m][kind]['max']:.3f}" for m in models) + " |")
    lines.append("")
    for name, rows in result["datasets"].items():
        lines += [f"## {name}", "", "| question type | queries | chance | top answer | "
                  + " | ".join(f"{m}: P@1 / blind" for m in models) + " |", "|---" * (4 + len(models)) + "|"]
        for template, row in rows.items():
            cells = [f"{100 * row[m]['precision_at_1']:.1f} / {100 * row[m]['query_blind']:.1f}" for m in models]
            lines.append(f"| {template} | {row['queries']} | {100 * row['chance']:.1f} | "
                         f"{100 * row['top_answer_share']:.0f} % | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-experiment")
    parser.add_argument("--models", required=True, help="comma-separated result folders (or stage names)")
    parser.add_argument("--datasets", default="SW-VQA-Heldout,SW-VQA")
    parser.add_argument("--cache", default="/tmp/comalite-vqa-by-type", help="embedding cache folder")
    parser.add_argument("--out", default="", help="write the result here as JSON (and the table beside it, .md)")
    args = parser.parse_args(argv)
    result = by_type(args.preset, args.models.split(","), args.datasets.split(","), Path(args.cache))
    text = table(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(text)
    return result


if __name__ == "__main__":
    main()
