"""Images prepared ahead by worker threads (comalite.prefetch): the same patches, losses and scores as the serial
path, exact resume, the vision cache respected, a worker's error named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comalite.data.images import find_images, load_image
from comalite.errors import DataFormatError
from comalite.prefetch import ImagePrefetcher, resolve_workers
from comalite.processor import VLProcessor
from comalite.vision_cache import VisionCache

SHORT1 = ["stage1.train.steps=4", "stage1.train.batch_size=4", "stage1.train.grad_accum=2",
          "stage1.train.save_every=2", "stage1.train.warmup_ratio=0"]
SHORT2 = ["stage2.init=backbone", "stage2.train.steps=4", "stage2.train.batch_size=8", "stage2.sub_batch_size=4",
          "stage2.chunk_size=4", "stage2.train.save_every=2", "stage2.train.warmup_ratio=0",
          "stage2.hard_negatives=true"]


def _losses(folder) -> list[float]:
    return [h["loss"] for h in json.loads((folder / "history.json").read_text())]


def test_prepared_patches_are_the_serial_ones_and_the_cache_is_respected(tiny_checkpoint, data_root, tmp_path):
    processor = VLProcessor.from_pretrained(tiny_checkpoint)
    paths = [str(p) for p in find_images(data_root)[:6]]
    processor.vision_cache = VisionCache(2**20)
    processor.vision_cache.put(paths[0], torch.tensor([1, 8, 8]), torch.zeros(16, 4))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    images = ImagePrefetcher(processor, workers=2)
    images.follow([(p, "row") for p in paths] + [(str(bad), "eval.jsonl line 7")])
    assert images.take(paths[0]) is None                        # cached when its worker looked: not prepared
    for path in paths[1:]:
        pixels, grid = images.take(path)
        want_pixels, want_grid = processor.encode_image(load_image(path))
        assert torch.equal(pixels, want_pixels) and torch.equal(grid, want_grid)
    with pytest.raises(DataFormatError, match="eval.jsonl line 7"):
        images.take(str(bad))
    assert images.take(paths[1]) is None                        # not (any more) in the plan: the caller computes it
    serial = ImagePrefetcher(processor, workers=0)              # 0 workers: nothing is prepared
    serial.follow([(p, "") for p in paths])
    assert serial.take(paths[1]) is None


def test_auto_workers_follow_the_device():
    assert resolve_workers("3", "cpu") == 3 and resolve_workers("0", "cuda") == 0
    assert resolve_workers("auto", "cpu") == 0
    assert 0 <= resolve_workers("auto", "cuda") <= 8


def test_a_bad_workers_setting_is_one_message(tiny_home):
    from comalite.config import load_config
    from comalite.errors import ConfigError

    assert load_config("tiny-smoke", ["data.workers=2"]).data.workers == "2"
    with pytest.raises(ConfigError, match="data.workers='-1': give a whole number"):
        load_config("tiny-smoke", ["data.workers=-1"])


@pytest.mark.parametrize("cache_mb", [0, 512])
def test_stage2_with_workers_equals_serial_and_resumes_exactly(tiny_config, tmp_path, cache_mb):
    from comalite.stage2 import run_stage2

    common = (*SHORT2, f"model.vision_cache_mb={cache_mb}")
    run_stage2(tiny_config(*common, "data.workers=0", f"out_dir={tmp_path / 'serial'}"))
    prefetched = tiny_config(*common, "data.workers=2", f"out_dir={tmp_path / 'workers'}")
    run_stage2(prefetched, stop_at=2)   # killed after step 2 ...
    run_stage2(prefetched)              # ... and resumed
    serial, workers = (_losses(tmp_path / r / "contrastive_only") for r in ("serial", "workers"))
    assert workers == pytest.approx(serial, rel=1e-6, abs=1e-7)


def test_stage1_with_workers_equals_serial_and_resumes_exactly(tiny_config, tmp_path):
    from comalite.stage1 import run_stage1

    run_stage1(tiny_config(*SHORT1, "data.workers=0", f"out_dir={tmp_path / 'serial'}"))
    prefetched = tiny_config(*SHORT1, "data.workers=2", f"out_dir={tmp_path / 'workers'}")
    run_stage1(prefetched, stop_at=2)
    run_stage1(prefetched)
    serial, workers = (_losses(tmp_path / r / "stage1") for r in ("serial", "workers"))
    assert workers == pytest.approx(serial, rel=1e-6, abs=1e-7)


def test_evaluation_encodes_queries_then_candidates_each_shortest_first(tmp_path):
    from PIL import Image

    from comalite.eval.protocol import _distinct_inputs
    from comalite.records import EmbedInput, EvalDataset, EvalQuery

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(big)
    Image.new("RGB", (8, 8)).save(small)
    queries = [EvalQuery(EmbedInput("a long query"), (EmbedInput("", str(big)), EmbedInput("a"))),
               EvalQuery(EmbedInput("q", str(small)), (EmbedInput("a"), EmbedInput("", str(small)), EmbedInput("bb")))]
    inputs, query_rows, candidate_rows = _distinct_inputs(EvalDataset("D", queries))
    assert [(x.text, x.image and Path(x.image).name) for x in inputs] == [
        ("a long query", None), ("q", "small.png"), ("a", None), ("bb", None), ("", "small.png"), ("", "big.png")]
    assert query_rows.tolist() == [0, 1] and [r.tolist() for r in candidate_rows] == [[5, 2], [2, 4, 3]]


def test_evaluation_sorted_and_prefetched_scores_as_one_input_at_a_time(tiny_config):
    from comalite.data.sources import eval_datasets
    from comalite.embedding import EmbeddingModel
    from comalite.eval import evaluate_dataset
    from comalite.eval.protocol import _distinct_inputs
    from comalite.pipeline import embedding_model

    cfg = tiny_config("data.workers=0")
    base = embedding_model(cfg, "base")
    fast = EmbeddingModel(base.backbone, "base", batch_size=16, workers=2)
    for dataset in eval_datasets(cfg)[:2]:
        inputs = _distinct_inputs(dataset)[0]
        one = evaluate_dataset(base, dataset, batch_size=1, progress=False)
        batched = evaluate_dataset(fast, dataset, batch_size=16, progress=False)
        assert batched["ranks"] == one["ranks"] and batched["precision_at_1"] == one["precision_at_1"]
        assert np.allclose(fast.embed(inputs), base.embed(inputs, batch_size=1), atol=1e-5)
