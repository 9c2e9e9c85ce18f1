"""Run one benchmark configuration in a fresh process, so memory peaks never carry over between runs.

Processes fork from a server that has only imported ``PRELOAD`` (multiprocessing "forkserver"): the ~10 s
of imports are paid once, and each configuration's peak RSS is its own.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import traceback
from typing import Callable

PRELOAD = ["torch", "transformers", "peft", "bitsandbytes", "transformers.models.qwen2_vl.modeling_qwen2_vl",
           "comalite.backbone", "comalite.embedding", "comalite.gradcache", "comalite.loss", "comalite.data.sources",
           "comalite.stage1", "comalite.stage2", "comalite.objective"]


# bitsandbytes initialises CUDA when imported (it reads every GPU's compute capability), and a process forked
# from one that has initialised CUDA cannot use it ("Cannot re-initialize CUDA in forked subprocess"). For a
# GPU run the forkserver therefore preloads only what leaves CUDA alone; the workers import the rest.
CUDA_SAFE_PRELOAD = ["torch", "transformers", "transformers.models.qwen2_vl.modeling_qwen2_vl"]


def _preload(device: str) -> list[str]:
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return CUDA_SAFE_PRELOAD if cuda else PRELOAD


MEMORY_UNITS = {"peak_rss": "peak RSS", "cuda_max_allocated": "CUDA max allocated"}  # the "memory" field, in words


def rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(measure: Callable[[dict], dict], spec: dict, label: dict, conn) -> None:
    try:
        result = measure(spec)
    except Exception as err:  # noqa: BLE001 - report any failure to the parent rather than dying silently
        result = {**label, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    conn.send(result)
    conn.close()


def run_isolated(measure: Callable[[dict], dict], spec: dict, label: dict, timeout: float | None = None) -> dict:
    """``measure(spec)`` in a fresh process; on failure, ``label`` plus the error. ``measure`` must be a
    module-level function (it is pickled by reference)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_preload(spec.get("device", "auto")))
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(measure, spec, label, send))
    proc.start()
    send.close()
    result = receive.recv() if receive.poll(timeout) else None
    proc.join(5 if result is not None else 0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        result = {**label, "error": f"the worker died (exit code {proc.exitcode}) or timed out; out of memory?"}
    return result


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options every model benchmark shares: where the model and data come from, and threads."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--checkpoint", help="model.backbone: a checkpoint folder (default: the preset's, e.g. "
                                             "'tiny' = data/tiny-vlm)")
    parser.add_argument("--preset", default="tiny", help="config preset for the model and data settings "
                                                         "(tiny-smoke: the small ShapesWorld and smoke tiny VLM)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a preset setting, e.g. model.quantization=none (repeatable)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each worker (default: torch's "
                                                     "choice; 1 on a CPU shared with other jobs)")


def ensure_checkpoint(preset: str, overrides: list[str], checkpoint: str | None) -> None:
    """Build the preset's named tiny checkpoint here first if it is missing, so that no measured worker pays."""
    if checkpoint:
        return
    from comalite.config import load_config
    from comalite.pipeline import ensure_backbone

    ensure_backbone(load_config(preset, list(overrides)))
