"""comalite models in mteb 2.x (``comalite.eval.mteb_adapter``), offline: local retrieval tasks built from the
smoke ShapesWorld's eval files (no hub), run through ``mteb.evaluate``, and mteb's scores checked against the
same numbers computed here from ``EmbeddingModel.encode`` of comalite's own MMEB inputs (image files, MMEB's
query texts), with a matrix product and an argmax. Also: the instruction rules, and comalite without mteb."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comalite.embedding import IMAGE_INSTRUCTION, EmbeddingModel
from comalite.eval import mteb_adapter
from comalite.eval.mteb_adapter import MtebMissingError, compose, join_instruction
from comalite.records import EmbedInput

T2I = "Find me an image that matches the given caption: "  # how ShapesWorld (MMEB) writes these queries
VQA = "Represent the given image with the following question: "
COUNT = "Identify the number of objects shown in the image"


@pytest.fixture(scope="module")
def mteb(tmp_path_factory):
    """mteb, imported with its default result cache in a temporary folder (never under $HOME)."""
    with pytest.MonkeyPatch.context() as patch:
        # Before the first import: importing mteb makes its default cache folder.
        patch.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-default-cache")))
        pytest.importorskip("mteb", reason="mteb is optional: pip install 'comalite[mteb]' (the dev extra has it)")
        yield mteb_adapter.require_mteb()


@pytest.fixture(scope="module")
def result_dir(tiny_home, tmp_path_factory) -> Path:
    """A comalite result: the smoke preset's stage 2, trained 2 + 2 steps (~15 s)."""
    from comalite.pipeline import ensure_stage
    from conftest import make_config

    cfg = make_config("stage1.train.steps=2", "stage2.train.steps=2", out=tmp_path_factory.mktemp("run"))
    return Path(ensure_stage(cfg, "stage2"))


@pytest.fixture(scope="module")
def model(result_dir) -> EmbeddingModel:
    return EmbeddingModel.load(result_dir, name="tiny-smoke", batch_size=16)


def _eval_dataset(data_root, name):
    from comalite.data.io import read_eval_dataset

    return read_eval_dataset(data_root / "eval", name, image_root=data_root / "images")


def _strip(text: str, prefix: str) -> str:
    assert text.startswith(prefix), (text, prefix)
    return text[len(prefix):]


def _task(data_root, name, keep=None):
    """(mteb task, comalite's query inputs, comalite's corpus inputs, gold corpus index per query) for one
    ShapesWorld eval set (``keep``: the indices of the queries to keep; default all). The mteb side holds the
    parts mteb datasets hold (a bare caption or question, a bare image, the instruction as the task's prompt);
    comalite's side is MMEB's own rows, as read."""
    dataset = _eval_dataset(data_root, name)
    chosen = [q for i, q in enumerate(dataset.queries) if keep is None or i in keep]
    queries = [q.query for q in chosen]
    # The corpus: every distinct candidate of every query; each query's relevant document is its candidate 0.
    corpus = list(dict.fromkeys(c for q in chosen for c in q.candidates))
    gold = np.array([corpus.index(q.candidates[0]) for q in chosen])
    if name == "SW-T2I":  # text -> image
        rows = [{"id": f"q{i}", "text": _strip(q.text, T2I)} for i, q in enumerate(queries)]
        docs = [{"id": f"d{j}", "image": c.image} for j, c in enumerate(corpus)]
        assert all(c.text == IMAGE_INSTRUCTION for c in corpus)
        category, prompt = "t2i", {"query": T2I}
    elif name == "SW-VQA":  # image + question -> answer
        rows = [{"id": f"q{i}", "text": _strip(q.text, f"<|image_1|>\n{VQA}"), "image": q.image}
                for i, q in enumerate(queries)]
        docs = [{"id": f"d{j}", "text": c.text} for j, c in enumerate(corpus)]
        category, prompt = "it2t", {"query": VQA}
    else:  # SW-Count: image -> number word, the instruction a plain str prompt (queries only)
        assert all(q.text == f"<|image_1|>\n{COUNT}" for q in queries)
        rows = [{"id": f"q{i}", "image": q.image} for i, q in enumerate(queries)]
        docs = [{"id": f"d{j}", "text": c.text} for j, c in enumerate(corpus)]
        category, prompt = "i2t", COUNT
    relevant = {f"q{i}": {f"d{g}": 1} for i, g in enumerate(gold)}
    task = mteb_adapter.local_retrieval_task(name, rows, docs, relevant, category=category, prompt=prompt,
                                             k_values=(1, 3, 5, 10))
    return task, queries, corpus, gold


def _comalite_scores(model, queries, corpus, gold):
    """hit@1 and MRR@10 from comalite's own embeddings, and the queries whose top two scores tie."""
    scores = model.encode(queries, show_progress=False) @ model.encode(corpus, show_progress=False).T
    own = scores[np.arange(len(gold)), gold]
    ranks = (scores > own[:, None]).sum(1) + 1
    top2 = np.sort(scores, axis=1)[:, -2:]
    tied = np.flatnonzero(top2[:, 1] - top2[:, 0] < 1e-5)
    hit1 = float((scores.argmax(1) == gold).mean())
    return hit1, float(np.where(ranks <= 10, 1.0 / ranks, 0.0).mean()), tied


@pytest.mark.parametrize("name", ["SW-Count", "SW-VQA", "SW-T2I"])
def test_mteb_scores_equal_comalites_own_on_local_shapesworld_tasks(mteb, model, data_root, tmp_path, name,
                                                                     monkeypatch):
    # A query whose two best documents score the same (the smoke VLM cannot tell some near-copies apart) has no
    # argmax to compare: such queries are left out of the task, and must stay few.
    _, queries, corpus, gold = _task(data_root, name)
    tied = set(_comalite_scores(model, queries, corpus, gold)[2].tolist())
    assert len(tied) <= 0.05 * len(queries), f"queries {sorted(tied)} have tied top scores"
    task, queries, corpus, gold = _task(data_root, name, keep=set(range(len(queries))) - tied)
    encoder = mteb_adapter.MtebEncoder(model)
    assert isinstance(encoder, mteb.models.EncoderProtocol)
    assert encoder.mteb_model_meta.name == "comalite/tiny-smoke"
    assert encoder.mteb_model_meta.revision == model.fingerprint

    seen: list[EmbedInput] = []  # every input mteb made the model embed, as comalite received it
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda inputs, **kw: (seen.extend(inputs), embed(inputs, **kw))[1])
    result = mteb_adapter.evaluate_with_mteb(encoder, [task], results_dir=tmp_path / "results",
                                             prediction_folder=tmp_path / "predictions", batch_size=8)
    monkeypatch.undo()
    scores = result.task_results[0].scores["test"][0]

    # mteb embedded exactly MMEB's inputs: same texts; its PIL images are the files' pixels.
    by_text = {}
    for item in seen:
        by_text.setdefault(item.text, []).append(item)
    assert set(by_text) == {x.text for x in queries} | {x.text for x in corpus}
    assert len(seen) == len(queries) + len(corpus)
    for item in seen:
        assert item.image is None or isinstance(item.image, Image.Image)
    files = [x for x in queries + corpus if x.image]
    pil = [x for x in seen if x.image is not None]
    assert sorted(np.asarray(Image.open(x.image).convert("RGB")).tobytes() for x in files) == \
        sorted(np.asarray(x.image.convert("RGB")).tobytes() for x in pil)

    hit1, mrr10, tied = _comalite_scores(model, queries, corpus, gold)
    assert len(tied) == 0, f"queries {tied} have tied top scores: hit@1 is not defined by argmax alone"  # left out
    print(f"\n{name}: {len(queries)} queries, {len(corpus)} documents; mteb precision@1 "
          f"{scores['precision_at_1']:.5f} recall@1 {scores['recall_at_1']:.5f} ndcg@1 {scores['ndcg_at_1']:.5f} "
          f"hit_rate@1 {scores['hit_rate_at_1']:.5f} mrr@10 {scores['mrr_at_10']:.5f} | comalite hit@1 {hit1:.5f} "
          f"mrr@10 {mrr10:.5f}")
    for key in ("precision_at_1", "recall_at_1", "ndcg_at_1", "hit_rate_at_1", "mrr_at_1"):
        assert scores[key] == pytest.approx(hit1, abs=1e-5), key  # one relevant document per query
    assert scores["mrr_at_10"] == pytest.approx(mrr10, abs=1e-5)

    # mteb's top document per query is comalite's argmax.
    predicted = json.loads((tmp_path / "predictions" / f"{name}_predictions.json").read_text())
    ranked = predicted["default"]["test"] if "default" in predicted else predicted
    best = {q: max(docs, key=docs.get) for q, docs in ranked.items()}
    expected_scores = model.encode(queries, show_progress=False) @ model.encode(corpus, show_progress=False).T
    assert best == {f"q{i}": f"d{j}" for i, j in enumerate(expected_scores.argmax(1))}

    # The results went to tmp_path, keyed by the model's fingerprint, not to a cache under $HOME.
    written = tmp_path / "results" / "results" / "comalite__tiny-smoke" / model.fingerprint / f"{name}.json"
    assert json.loads(written.read_text())["scores"]["test"][0]["precision_at_1"] == pytest.approx(hit1, abs=1e-5)
    default_cache = Path(os.environ["MTEB_CACHE"])  # mteb's default cache (made on import) is a tmp folder too
    assert default_cache.is_relative_to(tmp_path.parent) and not default_cache.is_relative_to(Path.home())


def test_instructions_go_in_front_and_images_get_the_placeholder(mteb):
    assert join_instruction(T2I, "a red circle") == T2I + "a red circle"
    assert join_instruction("Retrieve the caption.", "a red circle") == "Retrieve the caption. a red circle"
    assert join_instruction("", "x") == "x" and join_instruction("Do it.", "") == "Do it."
    image = Image.new("RGB", (8, 8))
    assert compose("a red circle", None, T2I) == EmbedInput(T2I + "a red circle")
    assert compose("What color?", image, VQA).text == f"<|image_1|>\n{VQA}What color?"
    assert compose(None, image, COUNT).text == f"<|image_1|>\n{COUNT}"
    assert compose("", image, "").text == IMAGE_INSTRUCTION  # a bare image, as EmbeddingModel.encode embeds it
    assert compose("<|image_1|> What is it?", image).text == "<|image_1|> What is it?"


def test_which_instruction_a_batch_gets(mteb, model, result_dir):
    from mteb.types import PromptType

    assert mteb_adapter.MtebEncoder(result_dir).mteb_model_meta.revision == model.fingerprint  # a folder loads

    task = mteb_adapter.local_retrieval_task(
        "Local-Instr", [{"id": "q0", "text": "a"}], [{"id": "d0", "text": "b"}], {"q0": {"d0": 1}},
        category="t2t", prompt="Task prompt:")
    meta = task.metadata
    plain = mteb_adapter.MtebEncoder(model)
    # A str task prompt: queries (and tasks without sides), never documents; no mteb generic fallback.
    assert plain.instruction_for(meta, PromptType.query) == "Task prompt:"
    assert plain.instruction_for(meta, None) == "Task prompt:"
    assert plain.instruction_for(meta, PromptType.document) == ""
    assert mteb_adapter.MtebEncoder(model, use_task_prompts=False).instruction_for(meta, PromptType.query) == ""
    # Instructions given to the encoder win, looked up as mteb looks up a model's prompts.
    mine = mteb_adapter.MtebEncoder(model, instructions={"Local-Instr-query": "Q:", "document": "D:"})
    assert mine.instruction_for(meta, PromptType.query) == "Q:"
    assert mine.instruction_for(meta, PromptType.document) == "D:"
    # A row's own instruction (mteb's instruction-retrieval tasks) wins; the query is rebuilt from mteb's
    # `query` column ("text" would hold "query instruction").
    batch = {"text": ["a Row says:", "b"], "query": ["a", "b"], "instruction": ["Row says:", ""]}
    assert [x.text for x in plain.inputs_of(batch, meta, PromptType.query)] == ["Row says: a", "Task prompt: b"]
    assert [x.text for x in plain.inputs_of({"text": ["b"]}, meta, PromptType.document)] == ["b"]


def test_comalite_imports_without_mteb_and_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb -> ImportError
    with pytest.raises(MtebMissingError, match=r"pip install 'comalite\[mteb\]'") as error:
        mteb_adapter.require_mteb()
    assert isinstance(error.value, ImportError)
    code = ("import sys; sys.modules['mteb'] = None\n"
            "import comalite, comalite.eval, comalite.eval.mteb_adapter as m\n"
            "try:\n    m.MtebEncoder('no-such-folder')\nexcept m.MtebMissingError as e:\n    print('refused:', e)\n")
    env = dict(os.environ, COMALITE_CPU_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "pip install 'comalite[mteb]'" in out.stdout
