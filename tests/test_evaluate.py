"""The evaluation protocol: Precision@1, tie handling, deduplication, the resumable cache, reports."""
import json
import warnings

import numpy as np
import pytest

from comalite.eval import Embedder, at_chance, evaluate, evaluate_dataset, format_table
from comalite.records import DatasetInfo, EmbedInput, EvalDataset, EvalQuery


class TableEmbedder:
    """Looks each input's vector up by text; counts what it encodes; can fail on a given call."""

    def __init__(self, vectors: dict[str, list[float]], name: str = "table", fail_on_call: int | None = None):
        self.name = name
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.fingerprint = json.dumps({k: v.tolist() for k, v in sorted(self.vectors.items())})  # its "weights"
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.encoded: list[str] = []

    def embed(self, inputs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("interrupted")
        self.encoded += [item.text for item in inputs]
        return np.stack([self.vectors[item.text] for item in inputs])


class ConstantEmbedder:
    """The collapsed model: every input gets the same vector."""

    name = fingerprint = "constant"

    def embed(self, inputs):
        return np.tile(np.float32([0.6, 0.8]), (len(inputs), 1))


def dataset(name, rows):
    """An EvalDataset from ``[(query_text, [candidate texts, ground truth first]), ...]``."""
    queries = [EvalQuery(EmbedInput(q), tuple(EmbedInput(c) for c in cands)) for q, cands in rows]
    return EvalDataset(name, queries)


# Hand-made 2-D case. q1 -> a beats b: hit. q2 -> its ground truth c loses to d: miss, rank 2.
# q3 -> the ground truth e ties with f (both 0.6) and beats g (0): credit 1/2, rank 2 (after the tie).
HAND_VECTORS = {
    "q1": [1, 0], "a": [1, 0], "b": [0, 1],
    "q2": [0, 1], "c": [1, 0], "d": [0, 1],
    "q3": [1, 0], "e": [0.6, 0.8], "f": [0.6, -0.8], "g": [0, 1],
}
HAND = dataset("Hand", [("q1", ["a", "b"]), ("q2", ["c", "d"]), ("q3", ["e", "f", "g"])])


def test_hand_computed_precision_chance_and_ranks():
    result = evaluate_dataset(TableEmbedder(HAND_VECTORS), HAND, progress=False)
    assert result["precision_at_1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert result["ranks"] == [1, 2, 2]
    assert result["n_queries"] == 3
    assert result["candidates"] == {"min": 2, "mean": pytest.approx(7 / 3), "max": 3}


def test_embedder_protocol_is_structural():
    assert isinstance(TableEmbedder({}), Embedder)
    assert not isinstance(object(), Embedder)


def test_constant_embedder_scores_exactly_chance_not_100():
    # Ground truth at index 0 + "lowest index wins ties" would give 100% here; expected-value credit gives 1/k.
    result = evaluate_dataset(ConstantEmbedder(), HAND, progress=False)
    assert result["precision_at_1"] == pytest.approx(result["chance"])
    assert result["ranks"] == [2, 2, 3]
    assert at_chance(result)


def random_case(seed=0, n_queries=40, pool=25, dim=8):
    """Random unit vectors and candidate lists drawn from a shared pool (so candidates repeat)."""
    rng = np.random.default_rng(seed)
    names = [f"q{i}" for i in range(n_queries)] + [f"c{j}" for j in range(pool)]
    vectors = {n: rng.normal(size=dim) for n in names}
    rows = [(f"q{i}", [f"c{j}" for j in rng.choice(pool, size=rng.integers(2, 12), replace=False)])
            for i in range(n_queries)]
    return TableEmbedder(vectors), dataset("Random", rows), rows


def test_parity_with_brute_force_loops():
    embedder, data, rows = random_case()
    vec = embedder.vectors
    hits = 0
    for q, cands in rows:
        scores = [sum(float(x) * float(y) for x, y in zip(vec[q], vec[c])) for c in cands]
        hits += all(scores[0] > s for s in scores[1:])
    result = evaluate_dataset(embedder, data, progress=False)
    assert 0 < hits < len(rows)  # the case is not degenerate
    assert result["precision_at_1"] == hits / len(rows)


def test_parity_with_a_direct_matrix_computation():
    embedder, data, rows = random_case(seed=1)
    queries = np.stack([embedder.vectors[q] for q, _ in rows])
    pool = sorted({c for _, cands in rows for c in cands})
    column = {c: j for j, c in enumerate(pool)}
    sim = queries @ np.stack([embedder.vectors[c] for c in pool]).T  # all queries x all candidates at once
    ranks = []
    for i, (_, cands) in enumerate(rows):
        s = sim[i, [column[c] for c in cands]]
        ranks.append(1 + int(np.sum(s[1:] > s[0])))
    result = evaluate_dataset(embedder, data, progress=False)
    assert result["ranks"] == ranks
    assert result["precision_at_1"] == np.mean(np.array(ranks) == 1)


def classification_case(fail_on_call=None, name="table"):
    """Four image queries (one repeated) sharing a label set of three: 3 + 3 = 6 distinct inputs."""
    vectors = {"img1": [1, 0, 0], "img2": [0, 1, 0], "img3": [0, 0, 1],
               "cat": [1, 0.1, 0], "dog": [0, 1, 0.1], "fox": [0.1, 0, 1]}
    labels = ["cat", "dog", "fox"]
    rows = [("img1", labels), ("img2", ["dog", "cat", "fox"]), ("img3", ["fox", "cat", "dog"]), ("img1", labels)]
    return TableEmbedder(vectors, name=name, fail_on_call=fail_on_call), dataset("Cls", rows)


def test_each_distinct_input_is_encoded_once():
    embedder, data = classification_case()
    result = evaluate_dataset(embedder, data, batch_size=4, progress=False)
    assert sorted(embedder.encoded) == ["cat", "dog", "fox", "img1", "img2", "img3"]
    assert (result["n_distinct_queries"], result["n_distinct_candidates"], result["n_encoded"]) == (3, 3, 6)
    assert result["precision_at_1"] == 1.0


def test_a_rerun_encodes_nothing(tmp_path):
    first, data = classification_case()
    before = evaluate_dataset(first, data, cache_dir=tmp_path, batch_size=4, progress=False)
    again, _ = classification_case()
    after = evaluate_dataset(again, data, cache_dir=tmp_path, batch_size=4, progress=False)
    assert again.encoded == [] and after["n_encoded"] == 0
    assert after["ranks"] == before["ranks"] and after["precision_at_1"] == before["precision_at_1"]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_an_interrupted_run_resumes_with_the_rest(tmp_path):
    failing, data = classification_case(fail_on_call=3)  # batches of 2: calls 1 and 2 finish, 3 fails
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_dataset(failing, data, cache_dir=tmp_path, batch_size=2, progress=False)
    assert failing.encoded == ["img1", "img2", "img3", "cat"]
    resumed, _ = classification_case()
    result = evaluate_dataset(resumed, data, cache_dir=tmp_path, batch_size=5, progress=False)  # other batch size
    assert resumed.encoded == ["dog", "fox"]
    assert result["n_encoded"] == 2
    fresh, _ = classification_case()
    assert result["ranks"] == evaluate_dataset(fresh, data, progress=False)["ranks"]


def test_cache_is_keyed_by_model_fingerprint_and_inputs_never_by_name(tmp_path):
    embedder, data = classification_case()
    first = evaluate_dataset(embedder, data, cache_dir=tmp_path, progress=False)
    renamed, _ = classification_case(name="other")  # same weights under another name: nothing to encode
    evaluate_dataset(renamed, data, cache_dir=tmp_path, progress=False)
    assert renamed.encoded == []
    retrained, _ = classification_case()  # same name, other weights: everything encoded again, new ranks
    retrained.vectors["img1"] = retrained.vectors["dog"]
    retrained.fingerprint += "-retrained"
    again = evaluate_dataset(retrained, data, cache_dir=tmp_path, progress=False)
    assert len(retrained.encoded) == 6 and again["ranks"] != first["ranks"]
    assert again["ranks"] == evaluate_dataset(retrained, data, progress=False)["ranks"]  # = an empty cache
    changed = dataset("Cls", [("img2", ["dog", "cat"])])  # same name, other inputs
    same_model, _ = classification_case()
    evaluate_dataset(same_model, changed, cache_dir=tmp_path, progress=False)
    assert same_model.encoded == ["img2", "dog", "cat"]


def test_a_regenerated_image_at_the_same_path_is_encoded_again(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(image)
    data = EvalDataset("Img", [EvalQuery(EmbedInput("q"), (EmbedInput("", str(image)), EmbedInput("b")))])
    embedder = TableEmbedder({"q": [1, 0], "": [1, 0], "b": [0, 1]})
    evaluate_dataset(embedder, data, cache_dir=tmp_path / "cache", progress=False)
    evaluate_dataset(embedder, data, cache_dir=tmp_path / "cache", progress=False)
    assert embedder.encoded == ["q", "b", ""]  # shortest first (the text, then the image); the second run: cached
    Image.new("RGB", (9, 9), "blue").save(image)  # new content (and size) at the same path
    evaluate_dataset(embedder, data, cache_dir=tmp_path / "cache", progress=False)
    assert embedder.encoded == ["q", "b", ""] * 2


def test_bad_embeddings_are_rejected():
    unnormalised = TableEmbedder({"q": [1, 0], "a": [1, 0]})
    unnormalised.vectors["q"] = np.float32([2, 0])
    with pytest.raises(ValueError, match="L2-normalised"):
        evaluate_dataset(unnormalised, dataset("D", [("q", ["a"])]), progress=False)

    class WrongShape(ConstantEmbedder):
        def embed(self, inputs):
            return super().embed(inputs)[:1]

    with pytest.raises(ValueError, match="shape"):
        evaluate_dataset(WrongShape(), HAND, progress=False)
    with pytest.raises(ValueError, match="no candidates"):
        evaluate_dataset(ConstantEmbedder(), dataset("D", [("q", [])]), progress=False)


# Two models on three datasets of two meta-tasks. Scores (hand-computed, see above):
#   Hand (classification, IND): table 1.5/3 = 0.5;  constant = chance = 4/9
#   Cls  (classification, OOD): table 1.0;          constant = 1/3
#   V    (vqa, OOD), one query, x beats y:  table 1.0;  constant = 1/2
INFOS = {
    "Hand": DatasetInfo("Hand", "classification", "IND", "", "image", "text", source="toy"),
    "Cls": DatasetInfo("Cls", "classification", "OOD", "", "image", "text", source="toy"),
    "V": DatasetInfo("V", "vqa", "OOD", "", "image+text", "text", source="toy"),
}


def padded(vectors, dim):
    """The vectors zero-padded to ``dim`` components, so toy cases of different sizes can be mixed."""
    return {k: np.pad(np.asarray(v, dtype=float), (0, dim - len(v))) for k, v in vectors.items()}


def toy_suite():
    cls_embedder, cls = classification_case()
    vectors = padded({**HAND_VECTORS, **cls_embedder.vectors, "q": [1, 1, 0], "x": [1, 1, 0.1], "y": [0, 0, 1]}, 3)
    pairs = [(INFOS["Hand"], HAND), (INFOS["Cls"], cls), (INFOS["V"], dataset("V", [("q", ["x", "y"])]))]
    return TableEmbedder(vectors), pairs


# Eight queries cannot tell a model from chance, so these toy runs warn; the warning has its own test.
AT_CHANCE = pytest.mark.filterwarnings("ignore:.*within noise of chance")


@AT_CHANCE
def test_evaluate_aggregates_are_unweighted_means(tmp_path):
    table, pairs = toy_suite()
    results = evaluate([table, ConstantEmbedder()], pairs, out_dir=tmp_path, progress=False, limit=3, seed=7)
    assert results["models"] == ["table", "constant"]
    assert results["scores"]["table"] == pytest.approx({"Hand": 0.5, "Cls": 1.0, "V": 1.0})
    assert results["aggregates"]["table"] == pytest.approx(
        {"classification": 0.75, "vqa": 1.0, "IND": 0.5, "OOD": 1.0, "overall": 2.5 / 3}
    )  # by queries the overall would be 6.5 / 8: datasets, not queries, weigh equally
    chance = {"classification": (4 / 9 + 1 / 3) / 2, "vqa": 0.5, "IND": 4 / 9, "OOD": (1 / 3 + 0.5) / 2,
              "overall": (4 / 9 + 1 / 3 + 0.5) / 3}
    assert results["chance_aggregates"] == pytest.approx(chance)
    assert results["aggregates"]["constant"] == pytest.approx(chance)
    assert json.loads((tmp_path / "results.json").read_text())["scores"] == results["scores"]
    assert (tmp_path / "results.md").read_text() == format_table(results)


@AT_CHANCE
def test_format_table_layout():
    table, pairs = toy_suite()
    results = evaluate(table, pairs, progress=False, limit=3, seed=7)
    lines = format_table(results).splitlines()
    assert "3 toy datasets" in lines[2] and "up to 3, seed 7" in lines[2]
    header = lines.index(next(line for line in lines if line.startswith("| dataset")))
    end = lines.index("", header)
    body = [line.split("|")[1].strip() for line in lines[header + 2:end]]
    assert body == ["Hand", "Cls", "V", "**Classification** (mean of 2)", "**VQA** (mean of 1)",
                    "**IND** (mean of 1)", "**OOD** (mean of 2)", "**Overall** (mean of 3)"]
    hand = [c.strip() for c in lines[header + 2].split("|")[1:-1]]
    assert hand == ["Hand", "Classification", "IND", "3", "2/2/3", "44.4", "50.0*"]  # 3 queries: within noise
    assert lines[end - 1].split("|")[-2].strip() == "83.3"
    # Then the floors, one row per dataset and aggregate; no near-copies here, so no third table.
    floors = lines.index("## Floors (%)")
    rows = [line for line in lines[floors:] if line.startswith("| ") and not line.startswith("| dataset")]
    assert [r.split("|")[1].strip() for r in rows] == body
    assert "Near-copies" not in "\n".join(lines)


@AT_CHANCE
def test_table_names_missing_mmeb_datasets():
    embedder, data = classification_case()
    info = DatasetInfo("VOC2007", "classification", "IND", "", "image", "text")
    data.name = "VOC2007"
    text = format_table(evaluate(embedder, [(info, data)], progress=False))
    assert "1 of the 36 MMEB-V1 datasets (missing: ImageNet-1K" in text
    assert "no sampling" in text


def test_warns_when_a_model_is_at_chance_everywhere():
    table, pairs = toy_suite()
    with pytest.warns(UserWarning, match="input-format problem"):
        evaluate(ConstantEmbedder(), pairs, progress=False)
    # 30 queries, 5 candidates each, all right: chance 20% +- 7%, far from the model's 100%.
    vectors = padded({**table.vectors, **{f"s{i}": np.eye(30)[i] for i in range(30)}}, 30)
    sure = dataset("Sure", [(f"s{i}", [f"s{(i + j) % 30}" for j in range(5)]) for i in range(30)])
    sure_info = DatasetInfo("Sure", "retrieval", "IND", "", "image", "image", source="toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(TableEmbedder(vectors), [*pairs, (sure_info, sure)], progress=False)


@AT_CHANCE
def test_evaluate_rejects_mispaired_or_duplicate_inputs():
    table, pairs = toy_suite()
    with pytest.raises(ValueError, match="paired"):
        evaluate(table, [(INFOS["Cls"], HAND)], progress=False)
    with pytest.raises(ValueError, match="twice"):
        evaluate(table, [pairs[0], pairs[0]], progress=False)
    with pytest.raises(ValueError, match="distinct names"):
        evaluate([table, table], pairs, progress=False)


def test_benchmark_script_reports_throughput_and_deduplication(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--synthetic", "tiny", "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    cls, ret = report["datasets"]
    # 50 queries share one label set of 40: 40 / 50 candidates encoded per query instead of 40.
    assert (cls["candidates_per_query"], cls["candidates_encoded_per_query"]) == (40, 0.8)
    assert ret["candidates_encoded_per_query"] <= 200 / 50  # drawn from a pool of 5 x 40
    assert report["total"]["n_queries"] == 100 and report["total"]["queries_per_s"] > 0
    assert "queries/s" in capsys.readouterr().out


def test_the_report_says_when_aggregates_are_not_comparable_to_published_ones():
    from comalite.eval.registry import MMEB_V1_NAMES
    from comalite.eval.report import _describe_datasets

    mmeb = [{"name": n, "source": "mmeb"} for n in MMEB_V1_NAMES]
    assert "not comparable" not in _describe_datasets(mmeb)
    with_own = _describe_datasets(mmeb + [{"name": "Digits", "source": "user"}])
    assert "not comparable" in with_own and "1 dataset of your own" in with_own
    assert "missing: ImageNet-1K" in _describe_datasets(mmeb[1:])
