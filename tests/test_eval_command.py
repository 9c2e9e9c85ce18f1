"""The eval command on a local folder laid out like MMEB-eval (real dataset names, real columns), and an
evaluation cache that never serves a retrained model's old embeddings."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from comalite.cli import main
from comalite.config import load_config
from comalite.data.writers import write_eval_dataset
from comalite.data.sources import eval_datasets
from comalite.pipeline import embedding_model, ensure_stage, evaluate_models


def _mmeb_eval_fixture(root):
    """Two real MMEB dataset names in the HF layout: <root>/<Name>/test-00000-of-00001.parquet + images/."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    (root / "images").mkdir(parents=True)
    for name, rgb in colours.items():
        Image.new("RGB", (56, 56), rgb).save(root / "images" / f"{name}.png")
    labels = list(colours)
    cls_rows = [{"qry_text": "<|image_1|>\nRepresent the given image for classification",
                 "qry_img_path": f"images/{c}.png", "tgt_text": [c] + [x for x in labels if x != c],
                 "tgt_img_path": [""] * 3} for c in labels]
    t2i_rows = [{"qry_text": f"Find me an everyday image that matches the given caption: a {c} square",
                 "qry_img_path": "", "tgt_text": ["<|image_1|>\nRepresent the given image."] * 3,
                 "tgt_img_path": [f"images/{c}.png"] + [f"images/{x}.png" for x in labels if x != c]} for c in labels]
    write_eval_dataset(cls_rows, root / "ImageNet-1K" / "test-00000-of-00001.parquet")
    write_eval_dataset(t2i_rows, root / "MSCOCO_t2i" / "test-00000-of-00001.parquet")


def test_eval_command_scores_a_local_mmeb_eval_folder(tiny_home, tmp_path, capsys):
    root = tmp_path / "MMEB-eval"
    _mmeb_eval_fixture(root)
    out = tmp_path / "run"
    sets = ["--set", "model.backbone=tiny-smoke", "--set", f"out_dir={out}", "--set", f"eval.root={root}",
            "--set", "eval.datasets=ImageNet-1K,MSCOCO_t2i"]
    main(["eval", "--preset", "tiny", *sets, "--models", "base"])
    printed = capsys.readouterr().out
    assert "ImageNet-1K" in printed and "MSCOCO_t2i" in printed
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["details"]["base"]["ImageNet-1K"]["n_distinct_candidates"] == 3  # the label set, once
    assert (out / "eval" / "results.md").exists()
    # The scores are what the model's own embeddings give, computed here by hand: argmax over each
    # query's candidates, the truth first (ties are impossible with these inputs).
    cfg = load_config("tiny", [s for s in sets if s != "--set"])
    model = embedding_model(cfg, "base")
    for data in eval_datasets(cfg):
        hits = [int(np.argmax(model.embed(list(q.candidates)) @ model.embed([q.query])[0]) == 0) for q in data.queries]
        assert results["scores"]["base"][data.name] == pytest.approx(np.mean(hits))


def test_an_evaluation_after_retraining_equals_one_with_an_empty_cache(tiny_config):
    short = ["stage2.train.steps=3", "stage2.train.batch_size=8", "stage2.sub_batch_size=4", "stage2.chunk_size=8",
             "eval.datasets=SW-Object,SW-T2I", "eval.max_queries=8"]
    cfg = tiny_config(*short)
    first = evaluate_models(cfg, ["contrastive_only"])
    retrained = tiny_config(*short, "stage2.train.lr=0.01")
    ensure_stage(retrained, "contrastive_only", overwrite=True)
    again = evaluate_models(retrained, ["contrastive_only"])
    assert again["fingerprints"] != first["fingerprints"]
    assert all(d["n_encoded"] > 0 for d in again["details"]["contrastive_only"].values())  # nothing stale served
    shutil.rmtree(retrained.run_dir() / "eval" / "cache")
    empty = evaluate_models(retrained, ["contrastive_only"])
    ranks = {name: d["ranks"] for name, d in again["details"]["contrastive_only"].items()}
    assert ranks == {name: d["ranks"] for name, d in empty["details"]["contrastive_only"].items()}
