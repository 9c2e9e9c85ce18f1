"""Search a collection of images by text or by image: embed every image once, then rank by cosine similarity.

    index = ImageIndex.build(model, "photos/")              # every image file under the folder, sorted
    index.search("a red circle at the top left", k=5)       # [(path, score), ...], best first
    index.search(Path("photos/cat.png"))                     # an image query (or a PIL image, or a vector)
    index.save("photos-index.npz")
    index = ImageIndex.load("photos-index.npz", model)

The rows are the images embedded as MMEB embeds image candidates (``IMAGE_INSTRUCTION``); a text query gets
MMEB's text-to-image instruction (``TEXT_QUERY_INSTRUCTION``) in front, the way stage 2 trained such queries.
A collection below ``FAISS_MIN_IMAGES`` images is searched exactly, by one matrix product; a larger one with
the optional faiss library (``pip install 'comalite[search]'``): an HNSW graph over the unit rows (inner
product = cosine), approximate but far faster per query. An index remembers the fingerprint of the model
that built it and refuses to embed queries with another model: two models' vectors are not comparable.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .data.images import IMAGE_SUFFIXES, find_images
from .embedding import EmbeddingModel, Item
from .errors import InputError, SearchIndexError

TEXT_QUERY_INSTRUCTION = "Find me an image that matches the given caption: "
"""Put before a text query: MMEB's text-to-image retrieval instruction (ShapesWorld's ``SW-T2I`` too), which
stage 2 trained such queries with. On the tiny preset's stage-2 model, the 100 ``SW-T2I`` captions rank their
own image at median 112 of the set's 500 images with it, 188 without (chance 250)."""

BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_IMAGES = 100_000
"""From this many images on, ``backend="auto"`` searches with faiss when it is installed. An exact query reads
the whole (n, D) matrix, growing linearly with n. ``benchmarks/bench_search.py`` (one CPU thread, clustered
synthetic vectors; ``benchmarks/results/search.json``): exact 6.0 ms a query at 100,000 x 128 (the tiny VLM)
and 42 ms at 100,000 x 1536 (Qwen2-VL-2B); the HNSW graph 0.8 ms at 100,000 x 128 with the exact top 5 found,
after a 23 s build."""
HNSW_NEIGHBOURS, HNSW_BUILD_DEPTH, HNSW_SEARCH_DEPTH = 32, 80, 256
"""faiss HNSW settings: links per node (M), candidate list while building (efConstruction) and while searching
(efSearch, at least ``k``). Larger values: better recall, slower."""
FORMAT = 1


def image_files(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The image files of a folder (``comalite.data.images.find_images``), or a list of image paths as given,
    each checked to exist."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder. Give a folder of images or a list of image paths.")
        found = find_images(folder)
        if not found:
            raise InputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it.")
        return [str(p) for p in found]
    paths = [os.fspath(p) for p in images]
    missing = [(i, p) for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        i, p = missing[0]
        raise InputError(f"image {i}: file {p} not found ({len(missing)} of {len(paths)} missing). Fix the paths.")
    if not paths:
        raise InputError("no images to index: the list is empty.")
    return paths


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SearchIndexError("backend='faiss' needs the faiss library: pip install 'comalite[search]' "
                               "(or faiss-cpu), or search with backend='exact'.") from None
    threads = int(os.environ.get("COMALITE_CPU_THREADS", 0))
    if threads:  # the one-thread-per-process rule of shared machines (comalite.backbone.use_cpu_threads)
        faiss.omp_set_num_threads(threads)
    return faiss


def _faiss_available() -> bool:
    try:
        _faiss()
    except SearchIndexError:
        return False
    return True


class ImageIndex:
    """Image paths and their unit embeddings (n, D) by one model (``fingerprint``), searchable by text, by
    image or by vector. ``model`` embeds the queries; an index loaded without one takes only vectors.

    ``backend``: ``"exact"`` (matrix product), ``"faiss"`` (HNSW, approximate) or ``"auto"`` (faiss from
    ``FAISS_MIN_IMAGES`` images on, when installed).
    """

    def __init__(self, paths: Sequence[str], embeddings: np.ndarray, fingerprint: str, *,
                 model: EmbeddingModel | None = None, backend: str = "auto"):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(paths):
            raise ValueError(f"{len(paths)} paths need embeddings of shape ({len(paths)}, D), got {embeddings.shape}")
        if backend not in BACKENDS:
            raise InputError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}.")
        self.paths, self.embeddings, self.fingerprint = [str(p) for p in paths], embeddings, fingerprint
        self._rows = {os.path.abspath(p): i for i, p in enumerate(self.paths)}  # path -> row, for image queries
        self.backend = backend
        self.model = None
        if model is not None:
            self.use_model(model)
        self._hnsw = None  # built on the first faiss search (or read by ``load``)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageIndex({len(self)} images, dim {self.embeddings.shape[1]}, backend {self.resolved_backend()!r})"

    @classmethod
    def build(cls, model: EmbeddingModel, images: str | os.PathLike | Sequence[str | os.PathLike], *,
              batch_size: int | None = None, backend: str = "auto", show_progress: bool = True) -> "ImageIndex":
        """Embed every image of ``images`` (a folder, recursively, or a list of paths; see ``image_files``)
        with ``model``, ``batch_size`` at a time."""
        paths = image_files(images)
        embeddings = model.encode([Path(p) for p in paths], batch_size=batch_size, show_progress=show_progress)
        return cls(paths, embeddings, model.fingerprint, model=model, backend=backend)

    def use_model(self, model: EmbeddingModel) -> None:
        """Embed queries with ``model``, which must be the model that built the index (same fingerprint)."""
        if model.fingerprint != self.fingerprint:
            raise SearchIndexError(f"this index was built by another model (fingerprint {self.fingerprint[:12]}) "
                                   f"than {model.name!r} ({model.fingerprint[:12]}): their vectors are not "
                                   "comparable. Rebuild it with ImageIndex.build(model, images), or use the model "
                                   "that built it.")
        self.model = model

    def resolved_backend(self) -> str:
        """The backend a search uses now: ``backend``, with ``"auto"`` decided by size and faiss."""
        if self.backend != "auto":
            return self.backend
        return "faiss" if len(self) >= FAISS_MIN_IMAGES and _faiss_available() else "exact"

    def query_vector(self, query: Item | np.ndarray, *, instruction: str | None = None) -> np.ndarray:
        """A query as a unit vector (D,): a vector as given (normalised), else embedded by the index's model:
        a ``str`` with ``instruction`` (default ``TEXT_QUERY_INSTRUCTION``) in front, an image (path or PIL)
        with ``instruction`` (default ``IMAGE_INSTRUCTION``, as the rows), a mixed input as it is."""
        if isinstance(query, np.ndarray):
            vector = query.astype(np.float32).reshape(-1)
            if vector.shape[0] != self.embeddings.shape[1]:
                raise InputError(f"a query vector of length {vector.shape[0]} for an index of dimension "
                                 f"{self.embeddings.shape[1]}")
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise InputError("the query vector is zero or not finite: it has no direction to search")
            return vector / norm
        if self.model is None:
            raise SearchIndexError("this index has no model to embed a text or image query: load it with the "
                                   "model that built it, ImageIndex.load(path, model), or search with a vector.")
        if isinstance(query, os.PathLike) and instruction is None:
            row = self._rows.get(os.path.abspath(query))
            if row is not None:  # an indexed image: its row is what embedding it again would give
                return self.embeddings[row]
        if instruction is None and isinstance(query, str):
            instruction = TEXT_QUERY_INSTRUCTION  # images keep encode's default, the rows' IMAGE_INSTRUCTION
        self.use_model(self.model)  # the model may have been swapped since
        return self.model.encode([query], show_progress=False, instruction=instruction)[0]

    def search(self, query: Item | np.ndarray, k: int = 5, *,
               instruction: str | None = None) -> list[tuple[str, float]]:
        """The ``k`` images nearest to ``query`` (see ``query_vector``) as ``(path, cosine)``, best first."""
        if k < 1:
            raise InputError(f"k={k}: ask for at least one result")
        vector = self.query_vector(query, instruction=instruction)
        k = min(k, len(self))
        if self.resolved_backend() == "faiss":
            scores, rows = self._faiss_index(k).search(vector[None], k)
            found = rows[0] >= 0  # HNSW pads with -1 when its graph search reaches fewer than k images
            scores, rows = scores[0][found], rows[0][found]
        else:
            all_scores = self.embeddings @ vector
            rows = np.argpartition(-all_scores, k - 1)[:k] if k < len(self) else np.arange(len(self))
            rows = rows[np.lexsort((rows, -all_scores[rows]))]  # best first; ties: the earlier path
            scores = all_scores[rows]
        return [(self.paths[r], float(s)) for r, s in zip(rows, scores)]

    def _faiss_index(self, k: int):
        faiss = _faiss()
        if self._hnsw is None:
            self._hnsw = faiss.IndexHNSWFlat(self.embeddings.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self._hnsw.hnsw.efConstruction = HNSW_BUILD_DEPTH
            self._hnsw.add(self.embeddings)
        self._hnsw.hnsw.efSearch = max(HNSW_SEARCH_DEPTH, k)
        return self._hnsw

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to one ``.npz`` file, atomically: paths, embeddings, the model's fingerprint and,
        once built, the faiss graph (so a large index does not build it again after ``load``)."""
        arrays = {"format": np.array(FORMAT), "fingerprint": np.array(self.fingerprint),
                  "paths": np.array(self.paths, dtype=str), "embeddings": self.embeddings}
        if self._hnsw is not None:
            arrays["faiss"] = _faiss().serialize_index(self._hnsw)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: EmbeddingModel | None = None, *,
             backend: str = "auto") -> "ImageIndex":
        """Read an index ``save`` wrote; ``model`` (for text and image queries) must be the one that built it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise SearchIndexError(f"{path}: no such index file. "
                                   "Build one with ImageIndex.build(...).save(path).") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            size = os.path.getsize(path) if os.path.isfile(path) else 0
            what = "not an image index: an empty file" if size == 0 else "not an image index, or one cut short"
            raise SearchIndexError(f"{path}: {what} ({problem}). Build it again with "
                                   "ImageIndex.build(...).save(path).") from None
        if not {"format", "fingerprint", "paths", "embeddings"} <= set(arrays) or int(arrays["format"]) != FORMAT:
            raise SearchIndexError(f"{path}: not an image index of format {FORMAT} (keys {sorted(arrays)}). "
                                   "Build it again with ImageIndex.build(...).save(path).")
        index = cls(arrays["paths"].tolist(), arrays["embeddings"], str(arrays["fingerprint"]), model=model,
                    backend=backend)
        if "faiss" in arrays and _faiss_available():
            index._hnsw = _faiss().deserialize_index(arrays["faiss"])
        return index
