"""Searching a folder of images (``comalite.search``) on the smoke tiny VLM: what gets indexed, that a search
ranks by the cosine the model gives, that the exact and faiss backends agree, that a saved index comes back
the same and refuses another model, and that every bad input is named."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.embedding import EmbeddingModel
from comalite.errors import InputError, SearchIndexError
from comalite.search import TEXT_QUERY_INSTRUCTION, ImageIndex, image_files

CAPTION = "two objects: a large red circle at the top left and a small blue square in the center."


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> EmbeddingModel:
    cfg = ModelConfig(backbone=str(tiny_checkpoint), n_compress=4, max_pixels=12544, min_pixels=3136,
                      quantization="none")
    return EmbeddingModel(load_backbone(cfg, train_adapter=None).eval(), "tiny", batch_size=16)


@pytest.fixture(scope="module")
def folder(data_root, tmp_path_factory) -> Path:
    """40 ShapesWorld images in two sub-folders, beside a text file and a hidden image that are not indexed."""
    sources = sorted((data_root / "images" / "eval").rglob("*.png"))[:40]
    assert len(sources) == 40
    root = tmp_path_factory.mktemp("photos")
    for i, src in enumerate(sources):
        target = root / ("b" if i % 2 else "a") / f"{i:02d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(src, target)
    (root / "a" / "notes.txt").write_text("not an image")
    shutil.copy(sources[0], root / "a" / ".hidden.png")
    return root


@pytest.fixture(scope="module")
def index(model, folder) -> ImageIndex:
    return ImageIndex.build(model, folder, batch_size=8, backend="exact")


def _ranking(scores: np.ndarray, paths: list[str], k: int) -> list[str]:
    return [paths[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_build_embeds_every_image_under_the_folder_in_sorted_order(model, folder, index):
    expected = sorted(str(p) for p in folder.rglob("[0-9]*.png"))
    assert index.paths == expected == image_files(folder) and len(index) == 40
    assert index.paths[:2] == [str(folder / "a" / "00.png"), str(folder / "a" / "02.png")]
    assert index.fingerprint == model.fingerprint
    np.testing.assert_allclose(index.embeddings, model.encode([Path(p) for p in expected]), atol=1e-5, rtol=0)
    # The same images as a list of paths give the same index.
    again = ImageIndex.build(model, expected[:5], backend="exact")
    np.testing.assert_allclose(again.embeddings, index.embeddings[:5], atol=1e-5, rtol=0)


def test_a_search_ranks_by_the_models_cosine(model, index):
    # Text: the caption with the text-to-image instruction in front, scored against every row by hand.
    by_hand = index.embeddings @ model.encode([TEXT_QUERY_INSTRUCTION + CAPTION])[0]
    hits = index.search(CAPTION, k=5)
    assert [p for p, _ in hits] == _ranking(by_hand, index.paths, 5)
    np.testing.assert_allclose([s for _, s in hits], np.sort(by_hand)[::-1][:5], atol=1e-5)
    bare = index.search(CAPTION, k=5, instruction="")
    np.testing.assert_allclose(bare[0][1], np.max(index.embeddings @ model.encode([CAPTION])[0]), atol=1e-5)
    # Image: an indexed image finds itself first, at cosine 1; a PIL image of it too; a vector as well.
    path = index.paths[7]
    for query in (Path(path), Image.open(path), index.embeddings[7] * 3.0):
        hits = index.search(query, k=3)
        assert hits[0][0] == path and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(index.search(CAPTION, k=100)) == len(index)


def test_exact_and_faiss_backends_return_the_same_top_k(model, index, monkeypatch):
    pytest.importorskip("faiss")
    import comalite.search

    faiss_index = ImageIndex(index.paths, index.embeddings, index.fingerprint, model=model, backend="faiss")
    queries = [CAPTION, "a small green triangle", Path(index.paths[3]), Path(index.paths[30])]
    for query in queries:
        exact, approx = index.search(query, k=8), faiss_index.search(query, k=8)
        assert [p for p, _ in approx] == [p for p, _ in exact]
        np.testing.assert_allclose([s for _, s in approx], [s for _, s in exact], atol=1e-5)
    assert faiss_index._hnsw is not None and index._hnsw is None      # each really searched its own way
    # "auto" picks faiss from FAISS_MIN_IMAGES images on.
    auto = ImageIndex(index.paths, index.embeddings, index.fingerprint, model=model)
    assert auto.resolved_backend() == "exact"
    monkeypatch.setattr(comalite.search, "FAISS_MIN_IMAGES", len(index))
    assert auto.resolved_backend() == "faiss"


def test_save_and_load_give_the_same_search_and_refuse_another_model(model, index, tmp_path):
    path = index.save(tmp_path / "photos-index.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["photos-index.npz"]      # no temporary file left behind
    loaded = ImageIndex.load(path, model)
    assert loaded.paths == index.paths and loaded.fingerprint == index.fingerprint
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert loaded.search(CAPTION, k=5) == index.search(CAPTION, k=5)
    # Another model (here: other pooling, so another fingerprint) is refused, at load and when swapped in.
    other = EmbeddingModel(model.backbone, "tiny-last", pooling="last")
    assert other.fingerprint != model.fingerprint
    with pytest.raises(SearchIndexError, match=r"built by another model .* than 'tiny-last'"):
        ImageIndex.load(path, other)
    # Without a model an index takes vectors only, and says how to get text and image queries.
    bare = ImageIndex.load(path)
    assert bare.search(index.embeddings[2], k=1)[0][0] == index.paths[2]
    with pytest.raises(SearchIndexError, match=r"no model to embed a text or image query"):
        bare.search(CAPTION)
    with pytest.raises(SearchIndexError, match=r"built by another model"):
        bare.use_model(other)


def test_a_saved_faiss_graph_is_loaded_not_rebuilt(model, index, tmp_path):
    pytest.importorskip("faiss")
    faiss_index = ImageIndex(index.paths, index.embeddings, index.fingerprint, model=model, backend="faiss")
    expected = faiss_index.search(CAPTION, k=6)
    loaded = ImageIndex.load(faiss_index.save(tmp_path / "i.npz"), model, backend="faiss")
    assert loaded._hnsw is not None and loaded._hnsw.ntotal == len(index)
    assert loaded.search(CAPTION, k=6) == expected


def test_bad_input_is_named(model, index, folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    cases = [
        (lambda: ImageIndex.build(model, tmp_path / "nowhere"), InputError, r"nowhere: not a folder"),
        (lambda: ImageIndex.build(model, empty), InputError, r"empty: no image files \(\.png"),
        (lambda: ImageIndex.build(model, [index.paths[0], tmp_path / "gone.png"]), InputError,
         r"^image 1: file .*gone\.png not found \(1 of 2 missing\)"),
        (lambda: ImageIndex.build(model, []), InputError, r"no images to index"),
        (lambda: ImageIndex(index.paths, index.embeddings, "x", backend="annoy"), InputError,
         r"backend='annoy': choose one of auto, exact, faiss"),
        (lambda: index.search(CAPTION, k=0), InputError, r"k=0: ask for at least one result"),
        (lambda: index.search(np.ones(7)), InputError, r"query vector of length 7 for an index of dimension"),
        (lambda: index.search(np.zeros(index.embeddings.shape[1])), InputError, r"zero or not finite"),
        (lambda: index.search(tmp_path / "gone.png"), InputError, r"^item 0: image file .*gone\.png not found"),
        (lambda: ImageIndex.load(tmp_path / "none.npz"), SearchIndexError, r"none\.npz: no such index file"),
    ]
    (tmp_path / "fake.npz").write_text("not numpy")
    np.savez(tmp_path / "other.npz", embeddings=np.zeros((2, 3)))
    cases += [(lambda: ImageIndex.load(tmp_path / "fake.npz"), SearchIndexError, r"fake\.npz: not an image index"),
              (lambda: ImageIndex.load(tmp_path / "other.npz"), SearchIndexError,
               r"other\.npz: not an image index of format 1 \(keys \['embeddings'\]\)")]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_the_search_picture_shows_each_query_and_its_hits(index, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    from comalite import viz

    by_text, by_image = index.search(CAPTION, k=4), index.search(Path(index.paths[5]), k=3)
    out = tmp_path / "search.png"
    fig = viz.plot_search_results([(None, CAPTION, by_text), (Image.open(index.paths[5]), "", by_image)],
                                  marked={index.paths[5]}, save_to=out)
    try:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        grid = np.array(fig.axes).reshape(2, 5)
        assert [ax.get_title() for ax in grid[:, 0]] == ["query", "query"]
        assert "red circle" in grid[0, 0].texts[0].get_text() and len(grid[1, 0].images) == 1
        marks = ["  ✓" if p == index.paths[5] else "" for p, _ in by_text]
        assert [ax.get_title() for ax in grid[0, 1:]] == [f"#{r}  score {s:.3f}{mark}"
                                                         for r, ((_, s), mark) in enumerate(zip(by_text, marks), 1)]
        assert grid[1, 1].get_title() == f"#1  score {by_image[0][1]:.3f}  ✓"          # the image found itself
        assert grid[1, 1].get_xlabel() == Path(index.paths[5]).name
        assert same_color(grid[1, 1].spines["left"].get_edgecolor(), viz.CORRECT_COLOUR)
        assert not same_color(grid[1, 2].spines["left"].get_edgecolor(), viz.CORRECT_COLOUR)
        assert not grid[1, 4].axison                                                   # 3 hits: one panel empty
    finally:
        plt.close(fig)


def test_an_indexed_image_is_not_embedded_again_and_a_copy_elsewhere_gives_its_row(model, index, tmp_path,
                                                                                    monkeypatch):
    path = index.paths[3]
    copy = tmp_path / "copy.png"
    shutil.copy(path, copy)
    from_model = index.query_vector(copy)                     # not indexed: the model embeds it
    np.testing.assert_allclose(from_model, index.embeddings[3], atol=1e-5, rtol=0)
    monkeypatch.setattr(model, "encode", lambda *a, **k: pytest.fail("an indexed image was embedded again"))
    assert np.array_equal(index.query_vector(Path(path)), index.embeddings[3])
    with pytest.raises(pytest.fail.Exception, match="embedded again"):   # an instruction changes the input
        index.query_vector(Path(path), instruction="<|image_1|> Find it.")
