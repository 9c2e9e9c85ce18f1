"""The limits on sizes that decide memory and time, checked from the settings before anything runs.

A sequence's attention mask grows as the square of its length, so an unbounded setting (thousands of
compression tokens, an absurd maximum length) would only surface as the kernel killing the process. Each
limit has a reason, said in its error message.
"""
from __future__ import annotations

import dataclasses
import difflib
import math

from .errors import ConfigError

LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The language model's linear layers LoRA can adapt (``model.lora_targets``; ``comalite.backbone.lora_config``)."""
MAX_COMPRESS = 1024
"""Most compression tokens ``model.n_compress`` may ask for: the paper tries up to 64, and every one lengthens
every sequence (the attention mask grows as the square of the length)."""
MAX_SEQUENCE_LENGTH = 32768
"""Largest ``stage1.max_length`` / ``model.embed_max_length``: Qwen2-VL's context; one sequence's (L x L)
attention mask alone is 1 GiB there."""
TOKEN_PIXELS = 28 * 28
"""Pixels per LLM image token (a merged 2x2 group of 14-pixel patches)."""


def check_sizes(cfg) -> None:
    """Refuse (``ConfigError``) numbers that are not finite, sizes below their floor, and the memory-relevant
    sizes of a ``Config`` over their limits (``MAX_COMPRESS``, ``MAX_SEQUENCE_LENGTH``): each is answered
    here, from the settings alone, before any model loads."""
    for where, value in _floats(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value}: must be a finite number")
    m, d = cfg.model, cfg.data
    if m.n_compress > MAX_COMPRESS:
        raise ConfigError(f"model.n_compress={m.n_compress}: at most {MAX_COMPRESS} (the paper uses 1-64). Every "
                          "compression token lengthens every sequence, and the attention mask grows as the square "
                          "of the length")
    for where, value in (("model.lora_r", m.lora_r), ("data.n_stage1_images", d.n_stage1_images),
                         ("data.n_train_per_subset", d.n_train_per_subset),
                         ("data.n_eval_queries", d.n_eval_queries)):
        if value < 1:
            raise ConfigError(f"{where}={value}: must be at least 1")
    for where, value in (("model.cpu_threads", m.cpu_threads), ("model.vision_cache_mb", m.vision_cache_mb),
                         ("stage1.max_dialogues", cfg.stage1.max_dialogues),
                         ("eval.max_queries", cfg.eval.max_queries)):
        if value < 0:
            raise ConfigError(f"{where}={value}: must be at least 0 (0 = no limit)" if "max_" in where
                              else f"{where}={value}: must be at least 0")
    if m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1:
        raise ConfigError(f"model.lora_alpha={m.lora_alpha}, model.lora_dropout={m.lora_dropout}: give "
                          "lora_alpha > 0 and 0 <= lora_dropout < 1")
    unknown = [t for t in m.lora_targets if t not in LM_PROJECTIONS]
    if unknown or not m.lora_targets:
        close = difflib.get_close_matches(unknown[0], LM_PROJECTIONS, n=1, cutoff=0.8) if unknown else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"model.lora_targets={','.join(m.lora_targets)!r}: "
                          + (f"{unknown[0]!r} is not a projection of the language model{hint}"
                             if unknown else "name at least one projection")
                          + f"; choose from {', '.join(LM_PROJECTIONS)}")
    if d.image_size < 28 or d.image_size % 28:
        raise ConfigError(f"data.image_size={d.image_size}: ShapesWorld renders images whose side is a positive "
                          "multiple of 28 (Qwen2-VL's merged patch), e.g. 112")
    if d.n_candidates < 2:
        raise ConfigError(f"data.n_candidates={d.n_candidates}: must be at least 2 (the ground truth and one "
                          "other; with one candidate every query scores Precision@1 = 1)")
    if d.n_eval_queries < d.n_candidates:
        raise ConfigError(f"data.n_eval_queries={d.n_eval_queries} must be at least data.n_candidates="
                          f"{d.n_candidates}: retrieval candidates come from the other queries")
    for where, names in (("eval.datasets", cfg.eval.datasets), ("stage2.subsets", cfg.stage2.subsets)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{where} names {', '.join(repr(n) for n in twice)} more than once: give each "
                              "name once")
    image_tokens = m.max_pixels // TOKEN_PIXELS + 2  # the vision span: its tokens, <|vision_start|>, <|vision_end|>
    for where, length in (("stage1.max_length", cfg.stage1.max_length),
                          ("model.embed_max_length", m.embed_max_length)):
        if not 1 <= length <= MAX_SEQUENCE_LENGTH:
            raise ConfigError(f"{where}={length}: must be between 1 and {MAX_SEQUENCE_LENGTH:,} tokens (Qwen2-VL's "
                              "context; the attention mask of one sequence grows as the square of its length)")
        if image_tokens + m.n_compress > length:
            raise ConfigError(f"{where}={length}: an image at model.max_pixels={m.max_pixels} takes up to "
                              f"{image_tokens} tokens and model.n_compress={m.n_compress} more, so no input "
                              f"with an image would fit: raise {where} or lower model.max_pixels / "
                              "model.n_compress")


def _floats(obj, section: str = ""):
    """``(setting, value)`` of every float setting under ``obj``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _floats(value, f"{section}{f.name}.")
        elif isinstance(value, float):
            yield f"{section}{f.name}", value
