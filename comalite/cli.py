"""The ``comalite`` command: one entry point, one subcommand per step of the recipe.

    comalite demo                          # everything on the tiny preset: data, tiny VLM, both stages, eval
    comalite data      [--preset P]        # build ShapesWorld (tiny) / check the MMEB folder
    comalite build-tiny [--force] [--smoke] # (re)build the tiny VLM
    comalite stage1    [--preset P] [--set section.field=value ...]
    comalite stage2    [--preset P] [--set stage2.init=backbone]   # contrastive-only baseline
    comalite eval      [--preset P] [--models base,stage1,stage2,...]
    comalite stage1-data --images DIR --out FILE [--preset P]     # QA dialogues for real images
    comalite config    [--preset P]        # print the resolved configuration
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import load_config


def _config(args):
    return load_config(args.preset, args.set)


def cmd_config(args) -> None:
    print(json.dumps(_config(args).to_dict(), indent=2))


def cmd_data(args) -> None:
    from .datasets import ensure_data

    cfg = _config(args)
    root = ensure_data(cfg)
    print(f"data ready in {root}")
    manifest = root / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        print(json.dumps({k: v for k, v in info.items() if k in ("counts", "sizes", "seconds", "seed")}, indent=2))


def cmd_build_tiny(args) -> None:
    import shutil

    from .config import home_dir
    from .tiny import ensure_tiny_vlm

    if args.force:
        shutil.rmtree(home_dir() / ("tiny-vlm-smoke" if args.smoke else "tiny-vlm"), ignore_errors=True)
    path = ensure_tiny_vlm(smoke=args.smoke)
    print(f"tiny VLM in {path}")
    print((path / "tiny_report.json").read_text())


def cmd_stage1(args) -> None:
    from .result import read_result
    from .stage1 import run_stage1

    out = run_stage1(_config(args))
    print(json.dumps(read_result(out)["metrics"], indent=2))


def cmd_stage2(args) -> None:
    from .result import read_result
    from .stage2 import run_stage2

    out = run_stage2(_config(args))
    print(json.dumps(read_result(out)["metrics"], indent=2))


def cmd_eval(args) -> None:
    from .evaluate import format_table
    from .experiment import evaluate_models

    cfg = _config(args)
    results = evaluate_models(cfg, [m for m in args.models.split(",") if m])
    print(format_table(results))
    print(f"saved {cfg.run_dir() / 'eval' / 'results.json'} and results.md")


def cmd_demo(args) -> None:
    from .evaluate import format_table
    from .experiment import run_all

    cfg = _config(args)
    results = run_all(cfg)
    print(format_table(results))
    print(f"results, checkpoints and plots under {cfg.run_dir()}")


def cmd_stage1_data(args) -> None:
    from .stage1_data import build_stage1_data

    n = build_stage1_data(_config(args), images=args.images, out=args.out, generator=args.generator,
                          limit=args.limit)
    print(f"wrote {n} dialogues to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="comalite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", default="tiny", help="preset name in configs/ or a YAML path")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one setting (repeatable)")
        p.set_defaults(func=func)
        return p

    add("config", cmd_config, "print the resolved configuration")
    add("data", cmd_data, "build ShapesWorld or check the data folder")
    p = add("build-tiny", cmd_build_tiny, "build the tiny VLM (cached under the home folder)")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.add_argument("--smoke", action="store_true", help="the smoke-mode copy (short stage 0)")
    add("stage1", cmd_stage1, "compression pre-training")
    add("stage2", cmd_stage2, "contrastive tuning")
    add("eval", cmd_eval, "MMEB-protocol evaluation").add_argument(
        "--models", default="base,stage1,contrastive_only,stage2",
        help="comma-separated: base, stage1, stage2, contrastive_only, or result folders")
    add("demo", cmd_demo, "the whole recipe on the preset (default: tiny)")
    p = add("stage1-data", cmd_stage1_data, "write stage-1 QA dialogues for a folder of real images")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output jsonl")
    p.add_argument("--generator", default="", help="VLM that writes the QA (default: the preset's backbone)")
    p.add_argument("--limit", type=int, default=0, help="at most this many images (0 = all)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "transformers", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
