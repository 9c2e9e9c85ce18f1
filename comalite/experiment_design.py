"""What the miniature experiment compares: its arms, its ablations, the transfer split and the score groups.

Plain data, imported by the grid (``experiment``), the statistics, the report and the budget-curve plot.
"""
from __future__ import annotations

import dataclasses

ARMS = {"contrastive_only": None, "coma": (), "qa_no_mask": ("stage1.mask=false",)}
"""Arm -> the stage-1 overrides that precede its stage 2 (None: no stage 1)."""


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One variant of CoMa's settings: its overrides, and whether contrastive-only runs with them too."""

    overrides: tuple[str, ...]
    changes_baseline: bool = False
    """The overrides change contrastive-only as well (K sets both stages' embedding), so contrastive-only runs
    with them and CoMa is paired against that run; otherwise against plain contrastive-only."""


ABLATIONS = {"k4": Ablation(("model.n_compress=4",), changes_baseline=True),
             "k16": Ablation(("model.n_compress=16",), changes_baseline=True),
             "supervise_all": Ablation(("stage1.supervise=all",)),
             "single_turn": Ablation(("stage1.multi_turn=false",)),
             "hard_negatives": Ablation(("stage2.hard_negatives=true",), changes_baseline=True)}
"""Variant -> its ablation."""

PAIR_CAPS = (10, 40, 200, 0)
"""The data-scarcity curve (part ``pairs``): training pairs per stage-2 subset (``stage2.per_subset_cap``, a
seeded sample; 0: all of them), at the preset's stage-2 steps. The paper's regime: if compression pre-training
helps, it should help most where contrastive pairs are scarce."""

PRIMARY_GROUP = "overall"
"""The pre-registered primary comparisons: CoMa minus contrastive-only on this group, at each of ``PAIR_CAPS``
(paired by seed), Holm-corrected for their number. Every other comparison the report prints is exploratory."""

TRANSFER_SUBSETS = ("SW-Count", "SW-Object", "SW-VQA")
"""Stage 2 of the transfer split trains on classification and VQA only; retrieval and grounding are unseen."""

GROUPS = ("classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall")
"""The groups of datasets an evaluation aggregates, in the report's column order."""
