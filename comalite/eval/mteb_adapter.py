"""A comalite model as an mteb 2.x encoder, and local retrieval tasks for mteb (no hub).

mteb (https://github.com/embeddings-benchmark/mteb) is optional: ``pip install 'comalite[mteb]'``. This module
imports it only when an encoder or a task is made, so comalite imports without it.

- ``MtebEncoder(model)`` wraps an ``EmbeddingModel`` (or a result folder) in mteb's ``EncoderProtocol``:
  ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray`` over
  mteb's batches (dicts with ``text``, ``image`` as PIL images, ``query``, ``instruction``), ``similarity``
  (cosine: comalite's rows are unit vectors) and ``mteb_model_meta``, a ``ModelMeta`` built locally (name
  ``comalite/<model name>``, revision = the model's fingerprint: mteb's result cache is keyed by it, as
  comalite's own caches are), so ``mteb.evaluate(MtebEncoder(model), tasks=...)`` never looks the model up.
- ``local_retrieval_task(...)``: an ``AbsTaskRetrieval`` whose ``load_data`` takes queries, corpus and
  relevance from memory or local files; its ``dataset`` path/revision are labels, never fetched.

How an input is written (``compose``), the way comalite embeds MMEB's inputs:

- the **instruction** goes in front of the text (``instruction + text``; a space is put between them
  unless the instruction ends in white space, as MMEB's ``"...caption: "`` does). mteb's own ``text`` of an
  instructed query has the instruction *after* the query: it is not used, the query is rebuilt from
  mteb's ``query`` and ``instruction`` columns;
- an input with an **image** gets ``<|image_1|>\\n`` in front unless its text already places it, so an image
  + question query reads ``"<|image_1|>\\n<instruction> <question>"`` (MMEB's VQA queries); an image
  with neither instruction nor text is embedded with ``IMAGE_INSTRUCTION``
  (``"<|image_1|>\\nRepresent the given image."``, how stage 2 saw image targets), as
  ``EmbeddingModel.encode`` embeds a bare image;
- **which instruction**: a row's own ``instruction`` (mteb's instruction-retrieval tasks) wins; else
  ``instructions[...]`` given to ``MtebEncoder``, looked up as mteb looks up a model's prompts
  (``"<task>-query"``, ``"<task>"``, ``"<task type>-query"``, ``"<task type>"``, ``"query"``; the same with
  ``document``); else the task's ``TaskMetadata.prompt`` (a dict: its ``query``/``document`` entry; a str:
  queries and tasks without query/document sides only); else **none**. mteb's generic fallback prompts
  (``"Retrieve text based on user query."``, what ``AbsEncoder.get_instruction`` returns for a task without
  a prompt) are *not* used: comalite was trained with MMEB's task-specific instructions, not those.
  Documents get no instruction unless one is named for them, as MMEB's candidates.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comalite.embedding import IMAGE_INSTRUCTION, EmbeddingModel, with_placeholder
from comalite.errors import ComaliteError
from comalite.paths import home_dir
from comalite.records import EmbedInput

MTEB_REQUIREMENT = "mteb>=2,<3"


class MtebMissingError(ComaliteError, ImportError):
    """mteb 2.x is not installed (it is an optional extra)."""


def require_mteb():
    """The ``mteb`` module (2.x), or ``MtebMissingError`` saying how to install it.

    mteb makes its default result cache (``$MTEB_CACHE``, else ``~/.cache/mteb``) when imported; unless
    ``MTEB_CACHE`` is set, comalite points it under ``$COMALITE_HOME/mteb`` (``runs/mteb`` in a checkout), with
    the other outputs. ``evaluate_with_mteb(..., results_dir=...)`` writes results where you say."""
    os.environ.setdefault("MTEB_CACHE", str(home_dir() / "mteb"))
    try:
        import mteb
    except ImportError as error:
        raise MtebMissingError(f"evaluating with mteb needs {MTEB_REQUIREMENT!r}, which is not installed "
                               f"({error}): pip install 'comalite[mteb]'") from None
    major = str(getattr(mteb, "__version__", "0")).split(".")[0]
    if major != "2":
        raise MtebMissingError(f"comalite's mteb adapter follows mteb 2.x's encoder protocol; mteb "
                               f"{getattr(mteb, '__version__', '?')} is installed: pip install 'comalite[mteb]' "
                               f"({MTEB_REQUIREMENT})")
    return mteb


def join_instruction(instruction: str, text: str) -> str:
    """``instruction`` in front of ``text``: as is when it ends in white space (MMEB's ``"...caption: "``),
    else with one space between; either may be empty."""
    if not instruction:
        return text
    if not text:
        return instruction
    return instruction + text if instruction[-1].isspace() else f"{instruction} {text}"


def compose(text: str | None, image=None, instruction: str | None = None) -> EmbedInput:
    """One mteb row as comalite embeds it (the rules are in the module docstring)."""
    text = join_instruction(instruction or "", text or "")
    if image is None:
        return EmbedInput(text=text)
    return EmbedInput(with_placeholder(text) if text else IMAGE_INSTRUCTION, image)


def _prompt_type_value(prompt_type) -> str | None:
    return None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))


class MtebEncoder:
    """``model`` (an ``EmbeddingModel`` or a result folder ``EmbeddingModel.load`` reads) as an mteb 2.x encoder.

    ``instructions``: instructions by mteb prompt key (``"SW-T2I-query"``, ``"Any2AnyRetrieval"``,
    ``"query"``, ...), before the task's own prompt; ``use_task_prompts=False`` ignores ``TaskMetadata.prompt``.
    ``batch_size``: inputs per forward pass (default: the model's); mteb's ``encode_kwargs["batch_size"]``
    sizes its data loader's batches, each embedded in passes of at most this size.
    """

    def __init__(self, model: EmbeddingModel | str | Path, *, instructions: Mapping[str, str] | None = None,
                 use_task_prompts: bool = True, batch_size: int | None = None, name: str | None = None):
        require_mteb()
        from mteb.models.model_meta import ModelMeta

        self.model = model if isinstance(model, EmbeddingModel) else EmbeddingModel.load(model)
        self.instructions = dict(instructions or {})
        self.use_task_prompts, self.batch_size = use_task_prompts, batch_size
        label = (name or self.model.name or "model").replace("/", "-")
        self._meta = ModelMeta(
            loader=None, name=f"comalite/{label}", revision=self.model.fingerprint, release_date=None,
            languages=["eng-Latn"], n_parameters=sum(p.numel() for p in self.model.backbone.hf.parameters()),
            memory_usage_mb=None, max_tokens=None, embed_dim=self.model.dim, license=None, open_weights=None,
            public_training_code=None, public_training_data=None, framework=["PyTorch", "Transformers"],
            reference=None, similarity_fn_name="cosine", use_instructions=True, training_datasets=None,
            modalities=["text", "image"])

    @property
    def mteb_model_meta(self):
        """mteb's ``ModelMeta`` of this model, made here: nothing is looked up on the hub."""
        return self._meta

    def instruction_for(self, task_metadata, prompt_type=None) -> str:
        """The instruction of this task's queries (``prompt_type`` query), documents, or inputs (None)."""
        from mteb.models.abs_encoder import get_prompt_name

        key = get_prompt_name(self.instructions, task_metadata, prompt_type) if self.instructions else None
        if key is not None:
            return self.instructions[key]
        prompt = task_metadata.prompt if self.use_task_prompts else None
        side = _prompt_type_value(prompt_type)
        if isinstance(prompt, dict):
            return prompt.get(side, "") if side else ""
        if isinstance(prompt, str) and side != "document":
            return prompt
        return ""

    def inputs_of(self, batch: Mapping[str, Any], task_metadata, prompt_type=None) -> list[EmbedInput]:
        """The ``EmbedInput`` of each row of one mteb batch."""
        side = _prompt_type_value(prompt_type)
        # An instructed query's `text` is "query instruction" (mteb appends it): rebuild it from its parts.
        texts = batch.get("query") if side == "query" and "query" in batch else batch.get("text")
        images = batch.get("image")
        n = len(texts) if texts is not None else len(images) if images is not None else 0
        if texts is None and images is None:
            raise ComaliteError(f"an mteb batch with neither text nor image (keys: {sorted(batch)}): comalite "
                                "embeds texts and images only")
        rows = batch.get("instruction") if side != "document" else None
        default = self.instruction_for(task_metadata, prompt_type)
        out = []
        for i in range(n):
            own = rows[i] if rows is not None else None
            out.append(compose(texts[i] if texts is not None else "", images[i] if images is not None else None,
                               own if own else default))
        return out

    def encode(self, inputs: Iterable[Mapping[str, Any]], *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type=None, **kwargs) -> np.ndarray:
        """mteb 2.x's ``EncoderProtocol.encode``: (n, H) float32 unit rows for the rows of ``inputs``, a data
        loader of mteb batches, in order."""
        out = [self.model.encode(self.inputs_of(batch, task_metadata, prompt_type), show_progress=False,
                                 batch_size=self.batch_size) for batch in inputs]
        out = [block for block in out if len(block)]
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), np.float32)

    def similarity(self, embeddings1, embeddings2):
        """Cosine similarity matrix (a torch tensor, as mteb's search expects)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """Cosine similarity of each pair of rows."""
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    def __repr__(self) -> str:
        return f"MtebEncoder({self._meta.name}, dim {self.model.dim})"


def _dataset(rows: Sequence[Mapping[str, Any]], what: str):
    """A ``datasets.Dataset`` of ``rows`` (``id`` and ``text`` and/or ``image``: a path or a PIL image)."""
    import datasets

    if not rows:
        raise ComaliteError(f"a local mteb task needs at least one {what} row")
    columns = [c for c in ("id", "text", "image") if any(c in row for row in rows)]
    unknown = sorted({k for row in rows for k in row} - {"id", "text", "image", "instruction"})
    if unknown or "id" not in columns or not ({"text", "image"} & set(columns)):
        raise ComaliteError(f"{what} rows hold 'id' and 'text' and/or 'image' (optional 'instruction'), "
                            f"not {unknown or columns}")
    if any("instruction" in row for row in rows):
        columns.append("instruction")
    data = {c: [row.get(c) for row in rows] for c in columns}
    if "image" in data:
        data["image"] = [os.fspath(v) if isinstance(v, (str, os.PathLike)) else v for v in data["image"]]
        features = datasets.Features({c: datasets.Image() if c == "image" else datasets.Value("string")
                                      for c in columns})
        return datasets.Dataset.from_dict(data, features=features)
    return datasets.Dataset.from_dict(data)


def local_retrieval_task(name: str, queries: Sequence[Mapping[str, Any]], corpus: Sequence[Mapping[str, Any]],
                         relevant: Mapping[str, Mapping[str, int]], *, category: str,
                         prompt: str | Mapping[str, str] | None = None, main_score: str = "ndcg_at_10",
                         description: str | None = None, k_values: Sequence[int] = (1, 3, 5, 10, 20, 100)):
    """An mteb retrieval task over local data: ``queries`` and ``corpus`` rows are dicts with ``id`` and
    ``text`` and/or ``image`` (a file path or a PIL image; queries may add ``instruction``), ``relevant``
    maps a query id to {document id: relevance}. ``category`` is mteb's (``"t2i"``, ``"i2t"``, ``"it2t"``,
    ...); ``prompt`` the task's instruction (a str for queries, or ``{"query": ..., "document": ...}``).

    Its ``TaskMetadata.dataset`` (``{"path": "local/<name>", "revision": "local"}``) only labels results:
    ``load_data`` builds the split from these rows and never calls the hub."""
    mteb = require_mteb()
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    query_data, corpus_data = _dataset(queries, "query"), _dataset(corpus, "corpus")
    qrels = {str(q): {str(d): int(s) for d, s in docs.items()} for q, docs in relevant.items()}
    modalities = sorted({m for m in ("text", "image") if m in query_data.column_names + corpus_data.column_names})
    metadata = mteb.TaskMetadata(
        name=name, description=description or f"{name}: a local retrieval task made by comalite",
        reference=None, dataset={"path": f"local/{name}", "revision": "local"},
        type="Any2AnyRetrieval" if "image" in modalities else "Retrieval", category=category,
        modalities=modalities, eval_splits=["test"], eval_langs=["eng-Latn"], main_score=main_score,
        prompt=dict(prompt) if isinstance(prompt, Mapping) else prompt, date=None, domains=None,
        task_subtypes=None, license=None, annotations_creators=None, dialect=None, sample_creation=None,
        bibtex_citation="")

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        self.dataset = {"default": {"test": RetrievalSplitData(queries=query_data, corpus=corpus_data,
                                                               relevant_docs=qrels, top_ranked=None)}}
        self.data_loaded = True

    cls = type(f"Local{name.replace('-', '')}Retrieval", (AbsTaskRetrieval,),
               {"metadata": metadata, "load_data": load_data, "k_values": tuple(k_values),
                "__module__": __name__})
    return cls()


def evaluate_with_mteb(model: EmbeddingModel | MtebEncoder, tasks, *, results_dir: str | Path,
                       batch_size: int = 32, overwrite: bool = True, **kwargs):
    """``mteb.evaluate(encoder, tasks)`` with results written under ``results_dir`` (mteb's ``ResultCache``:
    ``<results_dir>/results/comalite__<name>/<fingerprint>/<task>.json``) instead of mteb's default cache;
    ``overwrite`` re-runs tasks already there (mteb's ``overwrite_strategy="always"``). Returns mteb's
    ``ModelResult``; raises mteb's errors (``raise_error=True``)."""
    mteb = require_mteb()
    encoder = model if isinstance(model, MtebEncoder) else MtebEncoder(model)
    kwargs.setdefault("show_progress_bar", False)
    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": bool(kwargs["show_progress_bar"])}
    return mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(Path(results_dir)), encode_kwargs=encode_kwargs,
                         raise_error=True,
                         overwrite_strategy="always" if overwrite else "only-missing", **kwargs)
