"""ShapesWorld as a data source (``data.source: shapesworld``): built under the data root on first use,
seeded and idempotent, and laid out as::

    <root>/images/                 every image (the image root of all the files below)
    <root>/stage1/dialogues.jsonl  the stage-1 dialogues
    <root>/train/<subset>/         MMEB-train-schema subsets
    <root>/eval/<dataset>/         MMEB-eval-schema datasets
    <root>/manifest.json           its parameters (fingerprinted with the data files)

Importing this module registers the source; ``comalite.data.sources`` imports it on first use of the name.
"""
from __future__ import annotations

from pathlib import Path

from comalite.data.sources import DataSource, register_source

from .build import build_shapesworld


@register_source
class ShapesWorldSource(DataSource):
    """The synthetic world, built from the ``data`` settings (seed, counts, image size, question language)."""

    name = "shapesworld"

    def ensure(self) -> Path:
        root, d = self.cfg.data_root(), self.cfg.data
        build_shapesworld(root, seed=d.seed, n_stage1_images=d.n_stage1_images,
                          n_train_per_subset=d.n_train_per_subset, n_eval_queries=d.n_eval_queries,
                          n_candidates=d.n_candidates, image_size=d.image_size, language=d.language)
        return root

    def prepare(self) -> None:
        self.ensure()

    def image_folder(self, root: Path) -> Path:
        return root / "images"

    def train_folder(self, root: Path) -> Path:
        return root / "train"

    def dialogues_file(self) -> Path:
        return self.ensure() / "stage1" / "dialogues.jsonl"

    def eval_folders(self) -> tuple[Path, Path]:
        root = self.ensure()
        return root / "eval", self.image_folder(root)

    def question_language(self) -> int:
        return self.cfg.data.language
