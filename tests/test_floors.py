"""Honest floors: the query-blind score, and 'finds the scene' / 'reads the detail' on near-copies."""
import json
import re
import warnings

import numpy as np
import pytest

from comalite.data.io import read_eval_dataset
from comalite.data.writers import write_eval_dataset
from comalite.errors import DataFormatError
from comalite.eval import at_chance, evaluate, evaluate_dataset, format_table
from comalite.eval.metric import (near_copy_credit, query_blind_scores, score_queries, structure_summary,
                                  top_credit)
from comalite.eval.report import save_results
from comalite.records import DatasetInfo, EmbedInput, EvalDataset, EvalQuery

# ----------------------------------------------------------------------------- the pure functions


def test_top_credit_is_precision_at_1_for_the_first_candidate():
    assert top_credit([0.9, 0.1, 0.2]) == 1.0
    assert top_credit([0.5, 0.9, 0.2]) == 0.0
    assert top_credit([0.5, 0.5, 0.5, 0.1]) == pytest.approx(1 / 3)  # ties: expected value of a random break
    assert top_credit([0.5, 0.9, 0.2], k=2) == 1.0
    assert top_credit([0.5, 0.9, 0.9], k=2) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="k must be"):
        top_credit([0.5, 0.9], k=3)


def test_top_credit_matches_score_queries():
    rng = np.random.default_rng(0)
    embeddings = np.round(rng.normal(size=(30, 4)), 1).astype(np.float32)  # rounded: some exact ties
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    query_rows = np.arange(10)
    candidate_rows = [rng.choice(np.arange(10, 30), size=6, replace=False) for _ in range(10)]
    credit, _ = score_queries(embeddings, query_rows, candidate_rows)
    mine = [top_credit(embeddings[candidate_rows[i]] @ embeddings[q]) for i, q in enumerate(query_rows)]
    assert credit == pytest.approx(mine)


# Truth, then 2 near-copies, then 2 others. Each case tells "finds the scene" from "reads the detail": a
# swap of the two, or a group taken from the wrong columns (the last ones, or the truth alone), fails.
@pytest.mark.parametrize("scores, finds, reads", [
    ([0.9, 0.5, 0.4, 0.1, 0.2], 1.0, 1.0),   # truth on top
    ([0.5, 0.9, 0.4, 0.1, 0.2], 1.0, 0.0),   # a near-copy on top: the gist, not the detail
    ([0.8, 0.5, 0.4, 0.9, 0.2], 0.0, 1.0),   # another scene on top, yet the truth beats its near-copies
    ([0.5, 0.8, 0.4, 0.9, 0.2], 0.0, 0.0),   # neither
    ([0.5, 0.5, 0.1, 0.5, 0.2], 2 / 3, 1 / 2),  # ties: truth, a near-copy and an other share the top
])
def test_near_copy_credit(scores, finds, reads):
    assert near_copy_credit(np.array(scores), 2) == pytest.approx((finds, reads))


def test_near_copy_credit_rejects_a_bad_count():
    with pytest.raises(ValueError, match="n_hard"):
        near_copy_credit(np.array([0.1, 0.2]), 0)
    with pytest.raises(ValueError, match="n_hard"):
        near_copy_credit(np.array([0.1, 0.2]), 2)


def test_structure_summary_counts_only_queries_with_near_copies():
    scores = [np.array([0.5, 0.9, 0.4, 0.1, 0.2]),  # finds, not reads
              np.array([0.8, 0.5, 0.9]),            # 1 near-copy: reads, the other scene on top
              np.array([0.1, 0.9])]                 # no near-copies: left out
    summary = structure_summary(scores, [2, 1, 0])
    assert summary == pytest.approx({"n_structured": 2, "near_copies": 1.5, "finds_scene": 0.5, "reads_detail": 0.5,
                                     "finds_scene_chance": (3 / 5 + 2 / 3) / 2, "gist_only": (1 / 3 + 1 / 2) / 2})
    assert structure_summary(scores, [0, 0, 0])["finds_scene"] is None


def test_query_blind_scores_use_one_query_for_all():
    embeddings = np.float32([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8]])  # queries 0, 1; candidates 2, 3
    blind = query_blind_scores(embeddings, np.array([0, 1]), [np.array([2, 3]), np.array([3, 2])])
    mean = np.array([0.9, 0.3]) / np.linalg.norm([0.9, 0.3])
    assert blind[0] == pytest.approx([mean @ [0, 1], mean @ [0.6, 0.8]])
    assert blind[1] == pytest.approx(blind[0][::-1])
    # Queries that cancel out: every candidate scores 0, a uniform guess.
    opposite = np.float32([[1, 0], [-1, 0], [0, 1], [0.6, 0.8]])
    assert [s.tolist() for s in query_blind_scores(opposite, np.array([0, 1]), [np.array([2, 3])] * 2)] == [[0, 0]] * 2


# ----------------------------------------------------------------------------- the evaluation


class Lookup:
    """Each input's vector by text."""

    def __init__(self, vectors, name="lookup"):
        self.name, self.fingerprint = name, name + json.dumps({k: list(map(float, v)) for k, v in vectors.items()})
        self.vectors = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in vectors.items()}

    def embed(self, inputs):
        return np.stack([self.vectors[i.text] for i in inputs])


def structured(n=30, seed=0):
    """``n`` queries, each with its truth, 2 near-copies and 2 others; the vectors of a model that finds
    the scene (its near-copies lie next to the truth, the other scenes far) but misreads the detail (the
    first near-copy is a hair closer to the query than the truth)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(n)
    vectors, queries = {}, []
    for i in range(n):
        vectors[f"q{i}"] = centres[i]
        vectors[f"t{i}"] = centres[i] + 0.3 * np.eye(n)[(i + 1) % n]
        vectors[f"h{i}a"] = centres[i] + 0.29 * np.eye(n)[(i + 2) % n]
        vectors[f"h{i}b"] = centres[i] + 0.3 * np.eye(n)[(i + 3) % n] + 0.05 * np.eye(n)[(i + 4) % n]
    for i in range(n):
        others = [f"t{j}" for j in rng.permutation(n) if j != i][:2]
        cands = [f"t{i}", f"h{i}a", f"h{i}b", *others]
        queries.append(EvalQuery(EmbedInput(f"q{i}"), tuple(EmbedInput(c) for c in cands), n_hard=2))
    return Lookup(vectors), EvalDataset("Near", queries)


def test_evaluate_dataset_reports_floors_and_the_near_copy_split():
    model, data = structured()
    r = evaluate_dataset(model, data, progress=False)
    assert r["chance"] == pytest.approx(0.2)
    assert r["precision_at_1"] == 0.0 and r["finds_scene"] == 1.0 and r["reads_detail"] == 0.0
    assert r["n_structured"] == 30 and r["near_copies"] == 2
    assert r["finds_scene_chance"] == pytest.approx(0.6) and r["gist_only"] == pytest.approx(1 / 3)
    assert 0.0 <= r["query_blind"] <= 1.0 and r["floor"] == max(r["chance"], r["query_blind"])
    assert r["finds_scene_blind"] is not None and r["reads_detail_blind"] is not None


def test_a_model_that_ignores_the_query_scores_exactly_its_query_blind_floor():
    # Every query the same vector: Precision@1 is the query-blind score, here far above chance (the truth
    # is always the candidate nearest that one vector), and the evaluation calls it no better than its floor.
    n = 20
    vectors = {f"q{i}": [1, 0, 0] for i in range(n)}
    vectors.update({f"t{i}": [0.9, 0.1 * i / n, 0.1] for i in range(n)})
    vectors.update({f"x{i}": [0.2, 1, 0.1 * i / n] for i in range(n)})
    data = EvalDataset("Blind", [EvalQuery(EmbedInput(f"q{i}"), (EmbedInput(f"t{i}"), EmbedInput(f"x{i}"),
                                                                 EmbedInput(f"x{(i + 1) % n}")))
                                 for i in range(n)])
    r = evaluate_dataset(Lookup(vectors), data, progress=False)
    assert r["precision_at_1"] == r["query_blind"] == r["floor"] == 1.0 > r["chance"]
    assert r["finds_scene"] is None and r["n_structured"] == 0  # no near-copies: the split is not reported
    assert at_chance(r)
    assert not at_chance({**r, "floor": r["chance"], "floor_std": r["chance_std"]})  # the old, 1/n verdict


def test_at_chance_reads_results_saved_before_floors():
    assert at_chance({"precision_at_1": 0.1, "chance": 0.1, "chance_std": 0.01})
    assert not at_chance({"precision_at_1": 0.5, "chance": 0.1, "chance_std": 0.01})


INFO = DatasetInfo("Near", "retrieval", "IND", "", "text", "image", source="toy")


def test_results_and_table_hold_floors_and_the_near_copy_columns(tmp_path):
    model, data = structured()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(model, [(INFO, data)], out_dir=tmp_path, progress=False)
    detail = results["details"]["lookup"]["Near"]
    assert results["floors"] == {"lookup": {"Near": detail["floor"]}}
    assert results["floor_aggregates"]["lookup"]["retrieval"] == detail["floor"]
    assert results["datasets"][0]["near_copies"] == pytest.approx(
        {"queries": 30, "mean": 2.0, "finds_scene_chance": 0.6, "gist_only": 1 / 3})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["floors"] == results["floors"]
    text = format_table(results)
    assert "## Floors (%)" in text and "## Near-copies" in text
    row = next(line for line in text.splitlines() if line.startswith("| Near | 2.0"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells == ["Near", "2.0", "60.0", "33.3",
                     f"{100 * detail['finds_scene']:.1f} / {100 * detail['reads_detail']:.1f}"]


def test_results_saved_before_floors_still_load_merge_and_print(tmp_path):
    model, data = structured()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = evaluate(Lookup(model.vectors, name="old"), [(INFO, data)], progress=False)
    for key in ("floors", "floor_aggregates"):
        del old[key]
    del old["datasets"][0]["near_copies"]
    for r in old["details"]["old"].values():
        for key in ("query_blind", "floor", "floor_std", "n_structured", "near_copies", "finds_scene",
                    "reads_detail", "finds_scene_chance", "gist_only", "finds_scene_blind", "reads_detail_blind"):
            del r[key]
    text = format_table(old)  # an old results.json prints as before: no floor tables
    assert "Floors" not in text and not re.search(r"\d\*", text)
    (tmp_path / "results.json").write_text(json.dumps(old))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = evaluate(model, [(INFO, data)], progress=False)
    merged = save_results(new, tmp_path)  # same datasets: merged, though the old rows lack near_copies
    assert merged["models"] == ["old", "lookup"] and list(merged["floors"]) == ["lookup"]
    text = format_table(merged)
    assert "| dataset | meta-task | split | queries | candidates (min/mean/max) | chance | old | lookup |" in text
    # The floor and near-copy tables hold the models evaluated with floors only.
    assert "| dataset | chance | lookup |" in text.split("## Floors")[1]
    near_row = next(line for line in text.split("## Near-copies")[1].splitlines() if line.startswith("| Near"))
    assert near_row.split("|")[5].strip() == "100.0 / 0.0"


# ----------------------------------------------------------------------------- the files


def _row(n_hard=None):
    row = {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b", "c"], "tgt_img_path": ["", "", ""]}
    return row if n_hard is None else {**row, "n_hard": n_hard}


def test_n_hard_round_trips_and_is_optional(tmp_path):
    write_eval_dataset([_row(2), _row(0), _row()], tmp_path / "With" / "test.parquet")
    assert [q.n_hard for q in read_eval_dataset(tmp_path, "With").queries] == [2, 0, 0]
    write_eval_dataset([_row(), _row()], tmp_path / "Without" / "test.parquet")  # as MMEB's files: no column
    import pyarrow.parquet as pq
    assert "n_hard" not in pq.read_table(tmp_path / "Without" / "test.parquet").column_names
    assert [q.n_hard for q in read_eval_dataset(tmp_path, "Without").queries] == [0, 0]
    (tmp_path / "Json").mkdir()
    (tmp_path / "Json" / "test.jsonl").write_text(json.dumps(_row(1)) + "\n")
    assert read_eval_dataset(tmp_path, "Json").queries[0].n_hard == 1


@pytest.mark.parametrize("bad", [3, -1, "2", 1.5, True])
def test_a_bad_n_hard_is_a_format_error(tmp_path, bad):
    (tmp_path / "Bad").mkdir()
    (tmp_path / "Bad" / "test.jsonl").write_text(json.dumps(_row(bad)) + "\n")
    with pytest.raises(DataFormatError, match="n_hard"):
        read_eval_dataset(tmp_path, "Bad")
