"""Evaluation under the MMEB protocol, one idea per module.

- ``metric``: Precision@1 with exact tie credit, chance levels, unweighted aggregates;
- ``cache``: embeddings cached by model fingerprint and inputs, resumable;
- ``protocol``: ``evaluate`` (models x datasets) and ``evaluate_dataset``;
- ``report``: ``results.json`` and the markdown table (``format_table``);
- ``registry``: the 36 MMEB-V1 datasets (and ShapesWorld's): meta-task, IND/OOD, instruction.
"""
from comalite.eval.metric import aggregate, at_chance, score_queries
from comalite.eval.protocol import Embedder, evaluate, evaluate_dataset
from comalite.eval.registry import get_dataset_info
from comalite.eval.report import format_table, save_results

__all__ = ["Embedder", "aggregate", "at_chance", "evaluate", "evaluate_dataset", "format_table",
           "get_dataset_info", "save_results", "score_queries"]
