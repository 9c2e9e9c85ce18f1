"""The eval command on a local folder laid out like MMEB-eval (real dataset names, real columns)."""
from __future__ import annotations

import json

from PIL import Image

from comalite.cli import main
from comalite.data.io import write_eval_dataset


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
    main(["eval", "--preset", "tiny", "--set", "model.backbone=tiny-smoke", "--set", f"out_dir={out}",
          "--set", f"eval.root={root}", "--set", "eval.datasets=ImageNet-1K,MSCOCO_t2i", "--models", "base"])
    printed = capsys.readouterr().out
    assert "ImageNet-1K" in printed and "MSCOCO_t2i" in printed
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["scores"]["base"]) == {"ImageNet-1K", "MSCOCO_t2i"}
    assert all(0.0 <= v <= 1.0 for v in results["scores"]["base"].values())
    assert results["details"]["base"]["ImageNet-1K"]["n_queries"] == 3
    assert results["details"]["base"]["ImageNet-1K"]["n_distinct_candidates"] == 3  # the label set, once
    assert (out / "eval" / "results.md").exists()
