"""comalite: CoMa ("Compression then Matching") multimodal embeddings, small enough to read, run and change.

The handful of names a lesson or a script needs::

    import comalite

    cfg = comalite.load_config("tiny")          # or "tiny-smoke": the same code in about a minute
    results = comalite.run_all(cfg)             # stage 1 -> stage 2 -> contrastive-only -> MMEB table
    print(comalite.format_table(results))

They load on first use, so ``import comalite.config`` (or ``comalite config``) does not pay for torch and
transformers.
"""
from __future__ import annotations

import importlib
import logging

# On AVX512-BF16 CPUs bitsandbytes tries, at import, to fetch a bf16 kernel from the model hub and warns when
# it cannot. comalite never uses that kernel (``backbone.keep_4bit_in_fp32``), so the warning is silenced.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_EXPORTS = {
    "load_config": "comalite.config",
    "ensure_stage": "comalite.pipeline",
    "run_all": "comalite.pipeline",
    "evaluate_models": "comalite.pipeline",
    "embedding_model": "comalite.pipeline",
    "EmbeddingModel": "comalite.embedding",
    "ImageIndex": "comalite.search",
    "format_table": "comalite.eval",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'comalite' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
