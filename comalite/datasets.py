"""Where a config's data comes from: ShapesWorld (built on first use) or a local MMEB folder.

The same readers (``comalite.mmeb_data``) read both, so every stage runs the same code on the tiny
preset and on real MMEB subsets; only the folders differ.
"""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .records import Dialogue, EvalDataset, TrainPair


def ensure_data(cfg: Config) -> Path:
    """The data root; for ShapesWorld, build it there first if it is missing (seeded, idempotent)."""
    root = cfg.data_root()
    if cfg.data.source == "shapesworld":
        from .shapesworld import build_shapesworld

        d = cfg.data
        build_shapesworld(root, seed=d.seed, n_stage1_images=d.n_stage1_images,
                          n_train_per_subset=d.n_train_per_subset, n_eval_queries=d.n_eval_queries,
                          n_candidates=d.n_candidates, image_size=d.image_size)
    elif cfg.data.source != "mmeb":
        raise ValueError(f"data.source must be 'shapesworld' or 'mmeb', not {cfg.data.source!r}")
    elif not root.exists():
        raise FileNotFoundError(f"MMEB data folder {root} does not exist: set data.root to a local copy of "
                                "TIGER-Lab/MMEB-train (one folder per subset, images unzipped)")
    return root


def _image_root(cfg: Config, root: Path) -> Path:
    if cfg.data.image_root:
        return Path(cfg.data.image_root)
    return root / "images" if cfg.data.source == "shapesworld" else root


def stage1_dialogues(cfg: Config) -> list[Dialogue]:
    """The stage-1 QA dialogues (ShapesWorld's, or ``stage1.dialogues`` for real images)."""
    from .mmeb_data import read_dialogues

    root = ensure_data(cfg)
    path = Path(cfg.stage1.dialogues) if cfg.stage1.dialogues else root / "stage1" / "dialogues.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"stage-1 dialogues {path} not found: build them with `comalite stage1-data` "
                                "or set stage1.dialogues")
    dialogues = read_dialogues(path, _image_root(cfg, root))
    return dialogues[:cfg.stage1.max_dialogues] if cfg.stage1.max_dialogues else dialogues


def train_pairs(cfg: Config) -> list[TrainPair]:
    """Stage-2 pairs from every MMEB-train-schema subset under the train folder (or ``stage2.subsets``)."""
    from .mmeb_data import read_train_subset

    root = ensure_data(cfg)
    train_dir = root / "train" if cfg.data.source == "shapesworld" else root
    subsets = cfg.stage2.subsets or tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()
                                                 and p.name != "images"))
    if not subsets:
        raise FileNotFoundError(f"no training subsets (one folder each) under {train_dir}")
    pairs: list[TrainPair] = []
    for name in subsets:
        pairs += read_train_subset(train_dir / name, _image_root(cfg, root), subset=name,
                                   limit=cfg.stage2.per_subset_cap or None)
    return pairs


def eval_root(cfg: Config) -> tuple[Path, Path]:
    """(folder with one sub-folder per eval dataset, image root) for this config."""
    if cfg.eval.root:
        root = Path(cfg.eval.root)
        return root, Path(cfg.eval.image_root) if cfg.eval.image_root else root
    root = ensure_data(cfg)
    return root / "eval", root / "images"


def eval_datasets(cfg: Config) -> list[EvalDataset]:
    """The evaluation datasets this config names (default: every one found), sampled as configured."""
    from .mmeb_data import read_eval_dataset

    root, image_root = eval_root(cfg)
    names = cfg.eval.datasets or tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "images"))
    return [read_eval_dataset(root, name, image_root=image_root, limit=cfg.eval.max_queries or None,
                              seed=cfg.eval.seed) for name in names]
