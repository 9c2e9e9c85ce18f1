"""The stages a run folder holds, as records: what each is called, where it writes, where it starts from.

A stage's name is also its folder under the run folder and the model name ``eval --models`` takes. Stage 2 is
one trainer with two starts (``stage2.init``): from stage 1's result (CoMa's ``stage2``) or from the plain
backbone (the ``contrastive_only`` baseline), so ``for_init`` maps the setting to the record.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str             # folder under the run folder, and the model's name
    label: str            # in progress bars and logs
    init: str | None      # stage 2's ``stage2.init`` for this stage; None for stage 1
    inherits: str | None  # the stage whose result it starts from and stacks on (None: the backbone)


STAGE1 = Stage("stage1", "stage 1", None, None)
STAGE2 = Stage("stage2", "stage 2", "stage1", "stage1")
CONTRASTIVE_ONLY = Stage("contrastive_only", "contrastive only", "backbone", None)
STAGES = {s.name: s for s in (STAGE1, STAGE2, CONTRASTIVE_ONLY)}
"""Every stage by name, in the order a run makes them."""


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, not {name!r}")
    return STAGES[name]


def for_init(init: str) -> Stage:
    """The stage-2 record that ``stage2.init`` selects."""
    return next(s for s in STAGES.values() if s.init == init)
