"""The ``comalite`` command: one entry point, one subcommand per step of the recipe.

    comalite demo       [--preset P] [--overwrite]   # both stages, the baseline and the table (tiny: minutes)
    comalite stage1     [--preset P] [--set section.field=value ...] [--overwrite]
    comalite stage2     [--preset P] [--set stage2.init=backbone]   # contrastive-only baseline
    comalite eval       [--preset P] [--models base,stage1,stage2,...] [--overwrite]
    comalite data       [--preset P]                 # build ShapesWorld (tiny) or check data.root
    comalite check-data DIR [--images DIR]           # report on a local MMEB-train or MMEB-eval folder
    comalite build-tiny [--smoke]                    # rebuild the tiny VLM in data/
    comalite stage1-data --images DIR --out FILE     # QA dialogues for real images
    comalite export RESULT --out DIR [--base B]      # a result folder for plain transformers + peft
    comalite reference  [--preset P] [--out DIR]     # ship a finished run as the demo's converged reference
    comalite config     [--preset P]                 # print the resolved configuration

A run folder records the settings and inputs that made it: the same command resumes or reuses it; other
settings are refused unless ``--overwrite`` (or another ``--set out_dir=...``). Mistakes in input or
settings end in one message naming the file, row or setting; ``--debug`` (or ``COMALITE_DEBUG=1``) shows the
traceback too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from .atomic import atomic_write_text
from .config import load_config, preset_names
from .errors import ComaliteError
from .paths import data_dir
from .stages import for_init


def _config(args):
    return load_config(args.preset, args.set)


def _writable_folder(folder: Path) -> Path:
    """``folder``, created if missing; a ComaliteError naming it when it cannot be written. Commands call
    it before loading a model, so a bad output path costs no work."""
    try:
        if folder.is_file():
            raise NotADirectoryError(20, "a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise ComaliteError(f"cannot write into the output folder {folder} ({err.strerror}): choose a writable "
                            "one (for runs: --set out_dir=... or COMALITE_HOME)") from None
    return folder


def _pipeline():
    # Commands that train or evaluate import torch and transformers (seconds); `config` and `--help` stay instant.
    from . import pipeline

    return pipeline


def cmd_config(args) -> None:
    print(json.dumps(_config(args).to_dict(), indent=2))


def cmd_data(args) -> None:
    from .data.sources import ensure_data

    root = ensure_data(_config(args))
    print(f"data ready in {root}")
    manifest = root / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        print(json.dumps({k: v for k, v in info.items() if k in ("counts", "params")}, indent=2))


def cmd_check_data(args) -> None:
    from .data.check import check_folder

    rows = check_folder(args.folder, image_root=args.images)
    print("| dataset | kind | rows | distinct images | candidates per query | problem |\n|---|---|---:|---:|---|---|")
    for r in rows:
        cells = (r["dataset"], r["kind"], r["rows"], r["images"], r["candidates"], r["problem"] or "ok")
        print("| " + " | ".join(map(str, cells)) + " |")
    bad = [r for r in rows if r["problem"]]
    print(f"\n{len(rows)} datasets, {len(bad)} with a problem" + (": see the first problem named above" if bad else ""))
    if bad:
        sys.exit(1)


def cmd_build_tiny(args) -> None:
    path = _pipeline().build_tiny("tiny-smoke" if args.smoke else "tiny")
    print(f"tiny VLM in {path}")
    print((path / "tiny_report.json").read_text())


def cmd_stage(args) -> None:
    cfg = _config(args)
    # `stage2 --set stage2.init=backbone` is the contrastive-only baseline (its own folder), not CoMa's stage 2.
    stage = for_init(cfg.stage2.init).name if args.command == "stage2" else args.command
    folder = _pipeline().ensure_stage(cfg, stage, overwrite=args.overwrite)
    from .result import read_result

    print(json.dumps(read_result(folder)["metrics"], indent=2))


def cmd_eval(args) -> None:
    from .eval import format_table

    cfg = _config(args)
    _writable_folder(cfg.run_dir() / "eval")
    results = _pipeline().evaluate_models(cfg, _names(args.models, "--models"), overwrite=args.overwrite)
    print(format_table(results))
    print(f"saved {cfg.run_dir() / 'eval' / 'results.json'} and results.md")


def cmd_demo(args) -> None:
    from .eval import format_table

    cfg = _config(args)
    results = _pipeline().run_all(cfg, overwrite=args.overwrite)
    print(format_table(results))
    from . import reference

    beside = reference.report(cfg, results)
    atomic_write_text(cfg.run_dir() / "eval" / "beside_reference.md", beside)
    print(beside)
    print(f"results, checkpoints and plots under {cfg.run_dir()}")


def cmd_reference(args) -> None:
    from . import reference

    cfg = _config(args)
    results = _pipeline().run_all(cfg, overwrite=args.overwrite)
    out = Path(args.out) if args.out else data_dir() / "references" / cfg.name
    reference.ship(cfg.run_dir(), out)
    print(f"shipped {cfg.run_dir()} as the converged reference {out} (overall P@1: "
          + ", ".join(f"{m} {100 * results['aggregates'][m]['overall']:.1f}" for m in results["models"]) + ")")


def _one_process(command: str) -> None:
    """Refuse to run ``command`` under torchrun: every process would do all of its work and write the same files."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ComaliteError(f"{command} runs in one process: start it without torchrun (stage1, stage2 and eval "
                            "are the commands that share their work across processes)")


def cmd_export(args) -> None:
    from .export import export_model

    _one_process("export")
    _writable_folder(Path(args.out).absolute().parent)
    out = export_model(args.result, args.out, base=args.base or None)
    print(f"exported {args.result} to {out}: loads with transformers + peft, no comalite (see {out / 'README.md'})")


def _names(text: str, option: str) -> list[str]:
    """A comma-separated option as its names: at least one, each once; else ComaliteError naming the option."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ComaliteError(f"{option} {text!r}: give at least one name, comma-separated")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ComaliteError(f"{option} {text!r} names {', '.join(twice)} more than once: give each once")
    return names


def _ints(text: str, option: str, *, low: int, empty: bool = True, once: bool = False) -> list[int]:
    """A comma-separated option of whole numbers >= ``low``; ComaliteError naming the option otherwise."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items and not empty:
        raise ComaliteError(f"{option} {text!r}: give at least one whole number, comma-separated (e.g. 0,1,2)")
    bad = [x for x in items if not re.fullmatch(r"-?[0-9]+", x) or int(x) < low]
    if bad:
        raise ComaliteError(f"{option} {text!r}: {bad[0]!r} is not a whole number >= {low}; give comma-separated "
                            "whole numbers (e.g. 0,1,2)")
    numbers = [int(x) for x in items]
    if once and len(set(numbers)) < len(numbers):  # a seed run twice would count twice in the statistics
        raise ComaliteError(f"{option} {text!r} repeats a number: give each once")
    return numbers


def cmd_experiment(args) -> None:
    from .experiment import run_experiment

    seeds = _ints(args.seeds, "--seeds", low=0, empty=False, once=True)
    budgets = _ints(args.budgets, "--budgets", low=1)
    out = args.out or _config(args).run_dir() / "report"
    run_experiment(args.preset, tuple(args.set), Path(out), parts=tuple(args.parts.split(",")), seeds=seeds,
                   budgets=budgets, overwrite=args.overwrite, finished_only=args.finished_only)
    print((Path(out) / "results.md").read_text())


def cmd_stage1_data(args) -> None:
    from .stage1_data import build_stage1_data

    _one_process("stage1-data")
    _writable_folder(Path(args.out).absolute().parent)
    cfg = _config(args)
    r = build_stage1_data(cfg, images=args.images, out=args.out, generator=args.generator, limit=args.limit,
                          questions=args.question or None, retry_skipped=args.retry_skipped)
    print(f"{args.out}: {r.dialogues} dialogues, {r.new} new ({r.skipped} images skipped); {r.answers_cut} of "
          f"{r.answers} new answers cut at writer.max_answer_tokens={cfg.writer.max_answer_tokens}")
    if r.unreadable or r.not_retried:
        print(f"{r.unreadable} unreadable images skipped now, {r.not_retried} listed earlier not retried: see "
              f"{r.skipped_file} (--retry-skipped tries them again; --set writer.strict=true stops at one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comalite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, *, preset=True, overwrite=False):
        p = sub.add_parser(name, help=help_text)
        if preset:
            p.add_argument("--preset", default="tiny", help=f"one of {', '.join(preset_names())}, or a YAML path")
            p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                           help="override one setting (repeatable)")
        if overwrite:
            p.add_argument("--overwrite", action="store_true",
                           help="replace a run made from other settings in the same folder (default: refuse)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    add("config", cmd_config, "print the resolved configuration")
    add("data", cmd_data, "build ShapesWorld or check data.root")
    p = add("check-data", cmd_check_data, "report on a local MMEB folder (datasets, columns, images)", preset=False)
    p.add_argument("folder", help="folder with one sub-folder per dataset (MMEB-train or MMEB-eval layout)")
    p.add_argument("--images", default=None, help="folder the image paths are relative to (default: the folder)")
    p = add("build-tiny", cmd_build_tiny, "rebuild the tiny VLM into data/", preset=False)
    p.add_argument("--smoke", action="store_true", help="the smoke-mode copy (short training, for tests)")
    add("stage1", cmd_stage, "compression pre-training", overwrite=True)
    add("stage2", cmd_stage, "contrastive tuning (stage 1 first if missing)", overwrite=True)
    add("eval", cmd_eval, "MMEB-protocol evaluation (merged with the other models' results in its folder)",
        overwrite=True).add_argument(
        "--models", default="base,stage1,contrastive_only,stage2",
        help="comma-separated: base, stage1, stage2, contrastive_only, or result folders")
    add("demo", cmd_demo, "the whole recipe on the preset (default: tiny)", overwrite=True)
    add("reference", cmd_reference, "train and evaluate the preset, then ship it as a converged reference "
        "into data/references/<preset> (the demo shows it beside its own run)", overwrite=True).add_argument(
        "--out", default="", help="reference folder to write (default: data/references/<preset name>)")
    p = add("export", cmd_export, "a result folder as one plain transformers + peft model", preset=False)
    p.add_argument("result", help="a stage-1 or stage-2 result folder (holds result.json)")
    p.add_argument("--out", required=True, help="folder to write (replaces an earlier export there)")
    p.add_argument("--base", default="", help="the base checkpoint the export names (default: the one trained on)")
    p = add("experiment", cmd_experiment, "does compression help? arms x pairs x budgets x seeds, with a report",
            overwrite=True)
    p.add_argument("--parts", default="pairs,budget,transfer,ablations,compute",
                   help="comma-separated: pairs (the pre-registered data-scarcity curve), budget, transfer, "
                        "ablations, compute")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated seeds (8 by default: the spread "
                   "seen so far needs about that many to tell a gap of a few points)")
    p.add_argument("--budgets", default="", help="stage-2 steps, comma-separated (the preset's steps always run)")
    p.add_argument("--out", default="", help="folder for results.json, results.md, budget_curve.png "
                                            "(default: <run folder>/report)")
    p.add_argument("--finished-only", action="store_true", help="train nothing: an interim report of the cells "
                   "already finished (the grid running in other processes, or over days), naming the others")
    p = add("stage1-data", cmd_stage1_data, "write stage-1 QA dialogues for a folder of real images")
    p.add_argument("--images", required=True, help="folder of images (searched recursively), under data.image_root "
                   "or data.root: the paths written are relative to that folder, as stage 1 reads them")
    p.add_argument("--out", required=True, help="output jsonl")
    p.add_argument("--generator", default="", help="VLM that writes the QA (overrides writer.backbone; default: "
                   "the preset's writer.backbone, else model.backbone)")
    p.add_argument("--limit", type=int, default=0, help="this many images, a seeded sample of all of them "
                   "(data.seed; 0 = all)")
    p.add_argument("--question", action="append", default=[],
                   help="a question to answer about every image (repeatable; default: the generator writes them)")
    p.add_argument("--retry-skipped", action="store_true", help="try again the images an earlier run could not "
                   "read (listed in <out>.skipped; default: leave them out)")
    return parser


def _sigterm(signum, frame):
    raise KeyboardInterrupt(signum)  # SIGTERM stops a run as Ctrl-C does: checkpoints kept, one message


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    writer = True
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # under torchrun (torch loads here only then: `config` stays instant)
        from .distributed import init_from_env, is_writer

        init_from_env()
        writer = is_writer()
        if not writer:  # rank 0 alone prints results
            sys.stdout = open(os.devnull, "w")
    logging.basicConfig(level=logging.INFO if writer else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "transformers", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm)
        installed = True
    except ValueError:  # not the main thread: signals cannot be caught there
        installed = False
    try:
        args.func(args)
    except ComaliteError as err:
        if args.debug or os.environ.get("COMALITE_DEBUG"):
            raise
        print(f"comalite {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        print(f"\ncomalite {args.command}: interrupted; the same command resumes from the last checkpoint",
              file=sys.stderr)
        sys.exit(128 + signal.SIGTERM if interrupt.args == (signal.SIGTERM,) else 130)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    main()
