"""Data sources as objects: ``data.source`` names one ``DataSource``, resolved once by ``data_source``.

The worked example of adding a source: ``ToySource`` below is written and registered here, in the test,
and every function the stages call (``ensure_data``, ``train_pairs``, ``eval_datasets``, ``pipeline.prepare``,
...) reaches it without any other module changing. The two shipped sources give the folders they always gave.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from comalite.config import load_config
from comalite.data import sources
from comalite.data.sources import (SOURCES, DataSource, data_source, ensure_data, eval_datasets, eval_root,
                                   image_root, register_source, source_names, stage1_dialogues_path, stage1_files,
                                   stage_images, train_files, train_pairs, train_subsets)
from comalite.data.writers import write_eval_dataset, write_train_subset
from comalite.errors import ConfigError


class ToySource(DataSource):
    """Text-only pairs, generated on first use: ``<root>/pairs/<subset>/``, ``<root>/tests/<dataset>/``."""

    name = "toy"
    built = 0

    def ensure(self) -> Path:
        root = self.cfg.data_root()
        if not (root / "pairs").is_dir():
            ToySource.built += 1
            colors = ("red", "green", "blue", "yellow")
            write_train_subset([{"qry": f"a {c} square", "qry_image_path": "", "pos_text": f"square, {c}",
                                 "pos_image_path": ""} for c in colors], root / "pairs" / "Colors" / "original.parquet")
            write_eval_dataset([{"qry_text": f"a {c} square", "qry_img_path": "",
                                 "tgt_text": [f"square, {c}", *(f"square, {o}" for o in colors if o != c)],
                                 "tgt_img_path": [""] * len(colors)} for c in colors],
                               root / "tests" / "ColorsEval" / "test.parquet")
        return root

    def prepare(self) -> None:
        self.ensure()

    def train_folder(self, root: Path) -> Path:
        return root / "pairs"

    def eval_folders(self) -> tuple[Path, Path]:
        root = self.ensure()
        return root / "tests", root


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """The toy source registered (for this test only) and a config naming it, its data under ``tmp_path``.
    ``Config.validate`` lists the names it accepts, so the config is made by replacing ``data.source``."""
    monkeypatch.setitem(SOURCES, "toy", ToySource)
    monkeypatch.setattr(ToySource, "built", 0)
    cfg = load_config("tiny-smoke", [f"data.root={tmp_path / 'toy'}", f"out_dir={tmp_path / 'run'}"])
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="toy"))


def test_a_source_registered_in_a_test_reaches_every_data_function(toy, tmp_path):
    root = tmp_path / "toy"
    assert register_source(ToySource) is ToySource and "toy" in source_names()
    assert isinstance(data_source(toy), ToySource) and data_source(toy).cfg is toy
    assert ensure_data(toy) == root and ToySource.built == 1
    assert train_subsets(toy) == ("Colors",)
    pairs = train_pairs(toy)
    assert [p.query.text for p in pairs] == [f"a {c} square" for c in ("red", "green", "blue", "yellow")]
    assert {p.subset for p in pairs} == {"Colors"} and all(p.query.image is None for p in pairs)
    assert train_files(toy) == [root / "pairs" / "Colors" / "original.parquet"]
    assert stage_images(toy, "stage2") == (root, [])
    [dataset] = eval_datasets(toy)
    assert dataset.name == "ColorsEval" and len(dataset.queries) == 4
    with pytest.raises(ConfigError, match="stage1.dialogues is not set"):  # the base class: no dialogues of its own
        stage1_dialogues_path(toy)
    assert ToySource.built == 1  # built once, found after


def test_pipeline_prepare_asks_the_source(toy, tmp_path, monkeypatch):
    from comalite import pipeline

    monkeypatch.setattr(pipeline, "ensure_backbone", lambda cfg: None)
    pipeline.prepare(toy)
    assert ToySource.built == 1 and (tmp_path / "toy" / "pairs" / "Colors").is_dir()
    mmeb = dataclasses.replace(toy, data=dataclasses.replace(toy.data, source="mmeb", root=""))
    pipeline.prepare(mmeb)  # real data is never demanded by prepare


def test_shapesworld_gives_the_folders_it_always_gave(data_root):
    cfg = load_config("tiny-smoke")
    root = cfg.data_root()
    assert type(data_source(cfg)).__name__ == "ShapesWorldSource"
    assert ensure_data(cfg) == root == data_root
    assert image_root(cfg, root) == root / "images"
    assert stage1_dialogues_path(cfg) == root / "stage1" / "dialogues.jsonl"
    assert stage1_files(cfg) == [root / "stage1" / "dialogues.jsonl"]
    assert sources._train_dir(cfg) == root / "train"
    assert {f.parent.parent for f in train_files(cfg)} == {root / "train"}  # not the manifest, not eval/
    assert eval_root(cfg) == (root / "eval", root / "images")
    assert data_source(cfg).question_language() == cfg.data.language
    two = load_config("tiny-smoke", ["data.language=2"])
    assert data_source(two).question_language() == 2
    own = load_config("tiny-smoke", [f"data.image_root={root}", f"stage1.dialogues={root / 'd.jsonl'}",
                                     f"eval.root={root / 'eval'}"])
    assert image_root(own, root) == root and stage1_dialogues_path(own) == root / "d.jsonl"
    assert eval_root(own) == (root / "eval", root / "eval")  # the settings win over the source's folders


def test_mmeb_gives_the_folders_it_always_gave(tmp_path):
    cfg = load_config("tiny-smoke", ["data.source=mmeb", f"data.root={tmp_path}"])
    assert type(data_source(cfg)).__name__ == "MmebSource"
    assert ensure_data(cfg) == tmp_path and image_root(cfg, tmp_path) == tmp_path
    assert sources._train_dir(cfg) == tmp_path
    assert data_source(cfg).question_language() == 1
    with pytest.raises(ConfigError, match="stage1.dialogues is not set"):
        stage1_dialogues_path(cfg)
    with pytest.raises(ConfigError, match="eval.root is not set"):
        eval_root(cfg)
    with pytest.raises(ConfigError, match="data.root is not set"):
        ensure_data(load_config("tiny-smoke", ["data.source=mmeb"]))
    with pytest.raises(ConfigError, match="does not exist"):
        ensure_data(load_config("tiny-smoke", ["data.source=mmeb", f"data.root={tmp_path / 'nothing'}"]))


def test_names_agree_with_the_config_and_unknown_ones_are_refused():
    with pytest.raises(ConfigError, match="data.source='nope': choose one of") as err:
        load_config("tiny-smoke", ["data.source=nope"])
    accepted = str(err.value).split("choose one of ", 1)[1].split(", ")
    assert sorted(accepted) == sorted(source_names()) == ["mmeb", "shapesworld"]
    cfg = load_config("tiny-smoke")
    with pytest.raises(ConfigError, match="data.source='nope': choose one of"):
        data_source(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="nope")))


def test_data_does_not_import_shapesworld_until_it_is_named():
    """``data/`` sits below ``shapesworld/``: the source is found by name, its module imported on first use."""
    code = ("import sys; from comalite.data import sources; assert 'comalite.shapesworld' not in sys.modules; "
            "from comalite.config import load_config; sources.data_source(load_config('tiny-smoke')); "
            "assert 'comalite.shapesworld.source' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
