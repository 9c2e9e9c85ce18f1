"""Benchmark building the tiny VLM: wall time, stage-0 speed, and whether it learned to look at images.

    python benchmarks/bench_tiny_build.py --threads 1          # the real build (TinyConfig's defaults), temp home
    python benchmarks/bench_tiny_build.py --steps 50           # a shorter stage 0 (--vision-steps: ViT pre-training)
    python benchmarks/bench_tiny_build.py --home /tmp/h        # keep the data and the model in /tmp/h
    python benchmarks/bench_tiny_build.py --set data.root=DIR  # reuse an existing ShapesWorld folder
    python benchmarks/bench_tiny_build.py --smoke              # smoke mode: small data, TinyConfig.smoke()

``comalite.tiny.build.build_tiny_vlm`` trains a tokenizer, initialises a small Qwen2-VL, pre-trains its ViT, runs
"stage 0" (a short generative pre-training on ShapesWorld QA dialogues) and scores held-out answers. This
script times it into a fresh data folder (``COMALITE_DATA``: a temporary folder unless ``--home``), after building the
ShapesWorld data there first (timed separately: ``data_seconds``), and reports:

- ``build_seconds``: the whole ``build_tiny_vlm`` call (tokenizer, init, ViT pre-training, stage 0, scoring,
  save); ``vision_token_accuracy``: what the pre-trained ViT's tokens tell a linear probe on held-out scenes;
- ``vision_seconds``, ``stage0_seconds`` / ``stage0_steps_per_s``: the ViT pre-training and the stage-0
  training loop alone (timed by the build itself, in ``tiny_report.json``);
- ``heldout_answer_accuracy`` (whole dialogues) and ``heldout_turn_accuracy`` (one QA turn per sequence,
  as stage 0 trains; also by question type) against ``heldout_blind_accuracy`` (from ``tiny_report.json``):
  each question template's most frequent training answer, never below a uniform guess among its answers,
  never looking at the image. The margin is what the model sees; ``heldout_short_accuracy`` / ``_blind``: the
  same without the free description, which ``heldout_description`` scores per attribute it states;
- ``torch_threads``, CPU count and peak RSS.
The numbers go to a JSON file (default ``benchmarks/results/tiny_build.json``) and to stdout.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from comalite.atomic import atomic_write_json
from comalite.config import TrainConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tiny_build.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def set_tiny_field(tc, setting: str) -> None:
    """Apply one ``--tiny FIELD=VALUE`` to the TinyConfig ``tc`` (the value read as a Python literal)."""
    name, sep, value = setting.partition("=")
    if not sep or not hasattr(tc, name) or isinstance(getattr(tc, name), TrainConfig):
        raise SystemExit(f"--tiny {setting!r}: expected FIELD=VALUE with FIELD a plain TinyConfig field "
                         "(--steps/--vision-steps set its training lengths)")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    setattr(tc, name, parsed)


def run_benchmark(home: Path, out_file: str | Path, *, steps: int | None = None, batch_size: int | None = None,
                  vision_steps: int | None = None, overrides: list[str] = (), threads: int | None = None,
                  keep_home: bool = True, smoke: bool = False, tiny_settings: list[str] = (),
                  vision_from: str | None = None) -> dict:
    """Build ShapesWorld and the tiny VLM under ``home``; write and return the timings and accuracies."""
    os.environ["COMALITE_DATA"] = str(home)  # read at call time by comalite.paths.data_dir
    import torch

    from comalite.config import load_config
    from comalite.data.sources import ensure_data
    from comalite.pipeline import TINY_BUILDS
    from comalite.tiny.build import build_tiny_vlm

    # What ``comalite build-tiny [--smoke]`` builds: the same data config and recipe.
    preset, recipe = TINY_BUILDS["tiny-smoke" if smoke else "tiny"]
    data_cfg = load_config(preset, list(overrides))
    tc = recipe()
    if steps is not None:
        tc.stage0.steps = steps
    if batch_size is not None:
        tc.stage0.batch_size = batch_size
    if vision_steps is not None:
        tc.vision.steps = vision_steps
    if threads:
        tc.threads = threads
    for setting in tiny_settings:
        set_tiny_field(tc, setting)

    load_before = os.getloadavg()
    start = time.perf_counter()
    data_root = ensure_data(data_cfg)
    data_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model_dir = build_tiny_vlm(home / ("tiny-vlm-smoke" if smoke else "tiny-vlm"), tc, data_cfg=data_cfg,
                               vision_from=vision_from)
    build_seconds = time.perf_counter() - start

    tiny = json.loads((model_dir / "tiny_report.json").read_text())
    report = {
        "build_seconds": build_seconds,
        "data_seconds": data_seconds,
        "vision_seconds": tiny["vision_seconds"],
        "stage0_seconds": tiny["stage0_seconds"],
        "stage0_steps": tc.stage0.steps,
        "stage0_batch_size": tc.stage0.batch_size,
        "stage0_sequences": tiny["stage0_sequences"],
        "stage0_steps_per_s": tc.stage0.steps / max(tiny["stage0_seconds"], 1e-9),
        "vision_token_accuracy": tiny["vision_token_accuracy"],
        "heldout_answer_accuracy": tiny["heldout_answer_accuracy"],
        "heldout_turn_accuracy": tiny["heldout_turn_accuracy"],
        "heldout_turn_blind": tiny["heldout_turn_blind"],
        "heldout_by_question_type": tiny["heldout_by_question_type"],
        "heldout_blind_accuracy": tiny["heldout_blind_accuracy"],
        "heldout_short_accuracy": tiny["heldout_short_accuracy"],
        "heldout_short_blind": tiny["heldout_short_blind"],
        "heldout_description": tiny["heldout_description"],
        "accuracy_over_blind": tiny["heldout_answer_accuracy"] - tiny["heldout_blind_accuracy"],
        "heldout_answers": tiny["heldout_answers"],
        "heldout_answer_loss": tiny["heldout_answer_loss"],
        "stage0_first_loss": tiny["stage0_first_loss"],
        "stage0_last_loss": tiny["stage0_last_loss"],
        "parameters": tiny["parameters"],
        "report_build_seconds": tiny["build_seconds"],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "peak_rss_mb": peak_rss_mb(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "data_root": str(data_root),
        "smoke": smoke,
        "overrides": list(overrides),
        "tiny_settings": list(tiny_settings),
        "vision_from": vision_from,
        "tiny_config": tiny["config"],
        "model_dir": str(model_dir),
        "home_kept": bool(keep_home),
    }
    atomic_write_json(report, out_file)
    print(f"data (ShapesWorld)     {data_seconds:8.1f} s")
    print(f"build_tiny_vlm         {build_seconds:8.1f} s  ({tiny['parameters']:,} parameters)")
    print(f"stage 0                {report['stage0_seconds']:8.1f} s  {report['stage0_steps']} steps x "
          f"{tc.stage0.batch_size} = {report['stage0_steps_per_s']:.2f} steps/s  "
          f"(loss {tiny['stage0_first_loss']:.3f} -> {tiny['stage0_last_loss']:.3f})")
    probe = "  ".join(f"{k} {100 * v:.0f}%" for k, v in tiny["vision_token_accuracy"].items())
    print(f"ViT tokens (probe)     {probe}")
    print(f"held-out answers       {100 * tiny['heldout_answer_accuracy']:8.1f} %  whole dialogues, "
          f"{100 * tiny['heldout_turn_accuracy']:.1f} % one turn at a time; blind baseline "
          f"{100 * tiny['heldout_blind_accuracy']:.1f} %  ({tiny['heldout_answers']} answers)")
    described = tiny["heldout_description"]
    print(f"short answers          {100 * tiny['heldout_short_accuracy']:8.1f} %  (every type but the description); "
          f"blind {100 * tiny['heldout_short_blind']:.1f} %")
    print("description said right " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in described.items()
                                               if k != "descriptions") + f"  ({described['descriptions']} described)")
    for template, row in tiny["heldout_by_question_type"].items():
        print(f"  {template:45s} {row['answers']:4d}  {100 * row['accuracy']:5.1f} %  "
              f"blind {100 * row['blind']:5.1f} %")
    print(f"torch threads          {report['torch_threads']:8d}    (cpus: {report['cpu_count']}), "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="build what smoke mode uses (small ShapesWorld, TinyConfig.smoke())")
    parser.add_argument("--steps", type=int, help="stage-0 optimizer steps (default: TinyConfig's)")
    parser.add_argument("--batch-size", type=int, help="stage-0 batch size (default: TinyConfig's)")
    parser.add_argument("--vision-steps", type=int, help="ViT pre-training steps (default: TinyConfig's)")
    parser.add_argument("--home", help="data folder (COMALITE_DATA) to build into and keep (default: a temporary "
                                       "folder, deleted afterwards)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a tiny-preset setting for the data, e.g. data.n_stage1_images=360 "
                             "or data.root=DIR (repeatable)")
    parser.add_argument("--tiny", dest="tiny_settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TinyConfig field of the recipe, e.g. image_size=84 (repeatable)")
    parser.add_argument("--vision-from", metavar="DIR",
                        help="reuse the pre-trained ViT of this tiny checkpoint (same vision settings) instead of "
                             "pre-training one: a study of stage 0 alone")
    parser.add_argument("--threads", type=int, help="torch threads for the build (default: TinyConfig.threads)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the numbers")
    args = parser.parse_args(argv)

    temporary = args.home is None
    home = Path(tempfile.mkdtemp(prefix="comalite-bench-")) if temporary else Path(args.home)
    previous = os.environ.get("COMALITE_DATA")
    try:
        return run_benchmark(home, args.out, steps=args.steps, batch_size=args.batch_size,
                             vision_steps=args.vision_steps, overrides=args.overrides, threads=args.threads,
                             keep_home=not temporary, smoke=args.smoke, tiny_settings=args.tiny_settings,
                             vision_from=args.vision_from)
    finally:
        if previous is None:
            os.environ.pop("COMALITE_DATA", None)
        else:
            os.environ["COMALITE_DATA"] = previous
        if temporary:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
