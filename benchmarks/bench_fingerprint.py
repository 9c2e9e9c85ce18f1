"""What keying images by content costs: the tiny preset's ShapesWorld and a folder of 640x480 JPEGs.

    python benchmarks/bench_fingerprint.py                         # tiny ShapesWorld (built in a temp folder) + 10,000 JPEGs
    python benchmarks/bench_fingerprint.py --jpegs 500 --tiny-root ""     # a toy run: 500 JPEGs, no ShapesWorld

Per folder: the images' count and bytes, then seconds for
- ``stat``: what the old evaluation-cache key read (size and mtime of each file);
- ``read_all``: ``image_hashes(verify_all=True)``, what the evaluation cache now does on every call;
- ``record_first``: ``images_fingerprint`` with an empty hash memory (a stage's first run: read all, remember);
- ``record_again``: the same call again (a rerun/resume: remembered hashes, re-check within ``RECHECK_BYTES``);
- ``record_no_recheck``: again with ``recheck_bytes=0`` (what the memory alone costs: a stat per file).
Files just written or read sit in the page cache: these are warm-cache numbers (a cold disk adds its read
time to ``read_all`` and ``record_first``). Writes JSON (default ``benchmarks/results/fingerprint.json``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from comalite.atomic import atomic_write_json
from comalite.fingerprint import RECHECK_BYTES, ContentHashes, image_hashes, images_fingerprint


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(name: str, root: Path, paths: list[str], work: Path) -> dict:
    total = sum(os.path.getsize(p) for p in paths)
    store = work / f"{name}-hashes.json"
    row = {"folder": name, "images": len(paths), "megabytes": round(total / 2**20, 1),
           "recheck_megabytes": RECHECK_BYTES / 2**20}
    row["stat"] = timed(lambda: [os.stat(p) for p in paths])[0]
    row["read_all"], full = timed(lambda: image_hashes(paths, verify_all=True))
    row["record_first"], first = timed(lambda: images_fingerprint(paths, root, store=ContentHashes(store)))
    row["record_again"], again = timed(lambda: images_fingerprint(paths, root, store=ContentHashes(store)))
    row["record_no_recheck"], _ = timed(lambda: images_fingerprint(paths, root, store=ContentHashes(store),
                                                                   recheck_bytes=0))
    assert first == again and len(full) == len(paths)
    row["store_megabytes"] = round(store.stat().st_size / 2**20, 2)
    row["read_all_mb_per_s"] = round(total / 2**20 / row["read_all"], 1)
    row["read_all_us_per_image"] = round(row["read_all"] / len(paths) * 1e6, 1)
    for key in ("stat", "read_all", "record_first", "record_again", "record_no_recheck"):
        row[key] = round(row[key], 3)
    return row


def tiny_shapesworld(root: Path) -> Path:
    """The tiny preset's ShapesWorld (its default sizes), built into ``root`` if missing."""
    from comalite.config import load_config
    from comalite.shapesworld import build_shapesworld

    d = load_config("tiny").data
    build_shapesworld(root, seed=d.seed, n_stage1_images=d.n_stage1_images, n_train_per_subset=d.n_train_per_subset,
                      n_eval_queries=d.n_eval_queries, n_candidates=d.n_candidates, image_size=d.image_size)
    return root / "images"


def jpeg_folder(folder: Path, n: int, width: int, height: int) -> Path:
    """``n`` distinct photo-like JPEGs (smooth gradients plus noise, quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a / width, yy * b / height, (xx + yy) * c / (width + height)], -1) * 255
        pixels = np.clip(base + np.roll(noise, i * 7, axis=1), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-root", default="auto",
                        help="a built tiny ShapesWorld folder; 'auto' builds one in a temp folder; '' skips it")
    parser.add_argument("--jpegs", type=int, default=10000, help="synthetic JPEGs (0 skips them)")
    parser.add_argument("--jpeg-size", default="640x480")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fingerprint.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fingerprint-") as tmp:
        work = Path(tmp)
        if args.tiny_root:
            images = tiny_shapesworld(work / "shapesworld") if args.tiny_root == "auto" else Path(args.tiny_root) / "images"
            paths = sorted(str(p) for p in images.rglob("*.png"))
            rows.append(measure("tiny-shapesworld", images, paths, work))
        if args.jpegs:
            width, height = map(int, args.jpeg_size.split("x"))
            seconds, folder = timed(lambda: jpeg_folder(work / "jpegs", args.jpegs, width, height))
            paths = sorted(str(p) for p in folder.glob("*.jpg"))
            rows.append({**measure(f"{args.jpegs}-jpeg-{args.jpeg_size}", folder, paths, work),
                         "seconds_to_write_them": round(seconds, 1)})
            shutil.rmtree(folder)
    print(f"{'folder':26} {'images':>7} {'MB':>8} {'stat':>7} {'read_all':>9} {'MB/s':>7} {'first':>7} "
          f"{'again':>7} {'no_recheck':>10}")
    for r in rows:
        print(f"{r['folder']:26} {r['images']:>7} {r['megabytes']:>8} {r['stat']:>7} {r['read_all']:>9} "
              f"{r['read_all_mb_per_s']:>7} {r['record_first']:>7} {r['record_again']:>7} {r['record_no_recheck']:>10}")
    if args.out:
        atomic_write_json({"cpu_count": os.cpu_count(), "rows": rows}, args.out)
    return rows


if __name__ == "__main__":
    main()
