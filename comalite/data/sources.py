"""Where a config's data comes from: the ``DataSource`` that ``data.source`` names, resolved once by
``data_source(cfg)`` from a small registry.

Two sources ship: ``mmeb``, local folders of MMEB subsets (``MmebSource``, here), and ``shapesworld``, built
on first use (``comalite.shapesworld.source``). A source says how its folder is made ready and where in it the
images, the stage-1 dialogues, the training subsets and the eval datasets are; the functions below
(``ensure_data``, ``train_pairs``, ``eval_datasets``, ...) are what the rest of comalite calls, and each asks
the config's source. The same readers (``comalite.data.io``) read every source, so every stage runs the same
code on the tiny preset and on real MMEB subsets; only the folders differ. A dataset folder is one that holds
data files of its split (``original*`` for training, ``test*`` for evaluation); hidden folders (``.cache``) and
folders without such files (an unzipped ``images/``) are not datasets and are skipped.

Adding a source: subclass ``DataSource``, decorate it with ``@register_source``, and import its module before
use, or name that module in ``SOURCE_MODULES`` to have it imported on first use (how ``shapesworld``, which
lives above ``data/``, is found without ``data/`` importing it). ``tests/test_data_source.py`` adds one.
"""
from __future__ import annotations

import abc
import importlib
import logging
from pathlib import Path

from ..config import Config
from ..errors import ConfigError, DataFormatError
from ..records import Dialogue, EvalDataset, TrainPair
from .io import data_files, read_dialogues, read_eval_dataset, read_train_subset, sample_rows

log = logging.getLogger(__name__)


class DataSource(abc.ABC):
    """One kind of data a config can name as ``data.source``, bound to that config. Its folder is ``data.root``
    (else ``data/<data.name>``); the settings ``data.image_root``, ``stage1.dialogues`` and ``eval.root``, when
    set, win over what a source says here. The defaults are a folder of MMEB-train subsets and nothing else."""

    name = ""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @abc.abstractmethod
    def ensure(self) -> Path:
        """The data root, ready to read: built first if this source generates it, else checked (a
        ``ConfigError`` that says what to set when it is missing)."""

    def prepare(self) -> None:
        """Build what comalite generates, once, before a run (``pipeline.prepare``, on rank 0). Data that must
        be downloaded is not asked for here: each step asks for the folders it reads."""

    def image_folder(self, root: Path) -> Path:
        """The folder image paths of training files and stage-1 dialogues are relative to, in data root
        ``root``, when ``data.image_root`` is not set."""
        return root

    def train_folder(self, root: Path) -> Path:
        """The folder of the training subsets (one sub-folder each) in data root ``root``."""
        return root

    def dialogues_file(self) -> Path:
        """The stage-1 jsonl when ``stage1.dialogues`` is not set."""
        raise ConfigError("stage1.dialogues is not set: give the stage-1 jsonl (write one with "
                          "`comalite stage1-data`), e.g. --set stage1.dialogues=/data/stage1.jsonl")

    def eval_folders(self) -> tuple[Path, Path]:
        """(folder with one sub-folder per eval dataset, image root) when ``eval.root`` is not set."""
        raise ConfigError("eval.root is not set: --set eval.root=/path/to/MMEB-eval (one folder per dataset; "
                          "see data/README.md)")

    def question_language(self) -> int:
        """The ShapesWorld question language (``data.language``) of this data's text, which the tiny VLM's
        tokenizer is trained on: 1, as the shipped one was built, unless the source writes ShapesWorld's."""
        return 1


SOURCES: dict[str, type[DataSource]] = {}
"""The registered data sources by name (``data.source``)."""
SOURCE_MODULES = {"shapesworld": "comalite.shapesworld.source"}
"""Sources that live above ``data/`` -> the module that registers them, imported on first use of the name."""


def register_source(cls: type[DataSource]) -> type[DataSource]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    SOURCES[cls.name] = cls
    return cls


def source_names() -> tuple[str, ...]:
    """Every name ``data.source`` may take."""
    return tuple(dict.fromkeys([*SOURCE_MODULES, *SOURCES]))


def data_source(cfg: Config) -> DataSource:
    """The data source ``cfg.data.source`` names, bound to ``cfg``."""
    name = cfg.data.source
    if name not in SOURCES and name in SOURCE_MODULES:
        importlib.import_module(SOURCE_MODULES[name])
    if name not in SOURCES:
        raise ConfigError(f"data.source={name!r}: choose one of {', '.join(source_names())}")
    return SOURCES[name](cfg)


@register_source
class MmebSource(DataSource):
    """Local copies of TIGER-Lab/MMEB-train (``data.root``: one folder per subset, images unzipped) and
    MMEB-eval (``eval.root``); stage-1 dialogues from ``stage1.dialogues``."""

    name = "mmeb"

    def ensure(self) -> Path:
        root = self.cfg.data_root()
        if not self.cfg.data.root:
            raise ConfigError("data.source is 'mmeb' but data.root is not set: --set data.root=/path/to/MMEB-train "
                              "(one folder per subset, images unzipped; see data/README.md)")
        if not root.is_dir():
            raise ConfigError(f"data.root={root} does not exist: set it to a local copy of TIGER-Lab/MMEB-train "
                              "(see data/README.md)")
        return root


def ensure_data(cfg: Config) -> Path:
    """The data root; for a generated source (ShapesWorld), built there first if it is missing (seeded,
    idempotent)."""
    return data_source(cfg).ensure()


def image_root(cfg: Config, root: Path) -> Path:
    """The folder the image paths of training files and stage-1 dialogues are relative to: ``data.image_root``,
    else the source's in the data folder ``root`` (MMEB: ``root``; ShapesWorld: ``root/images``)."""
    if cfg.data.image_root:
        return Path(cfg.data.image_root)
    return data_source(cfg).image_folder(root)


def holds_split(folder: Path, split: str) -> bool:
    """Whether ``folder`` holds data files of ``split`` (``<split>*.parquet`` or ``<split>*.jsonl``)."""
    return any(folder.glob(f"{split}*.parquet")) or any(folder.glob(f"{split}*.jsonl"))


def dataset_folders(root: Path, *splits: str) -> list[str]:
    """Names of the sub-folders of ``root`` that hold data files of one of ``splits``, sorted; hidden folders
    (the hub client's ``.cache``) are skipped, and so are folders without such files (an unzipped ``images/``)."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: check the path")
    names = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(holds_split(path, split) for split in splits):
            names.append(path.name)
        else:
            log.info("skipping %s: no %s in it", path, " or ".join(f"{s}*.parquet or {s}*.jsonl" for s in splits))
    return names


def stage1_dialogues_path(cfg: Config) -> Path:
    """The stage-1 jsonl: ``stage1.dialogues``, else the source's (ShapesWorld's; MMEB has none)."""
    if cfg.stage1.dialogues:
        return Path(cfg.stage1.dialogues)
    return data_source(cfg).dialogues_file()


def stage1_files(cfg: Config) -> list[Path]:
    """The files stage 1's data is made of (what its run record fingerprints): what it reads, nothing else, so
    that a change to the evaluation sets or the data folder's manifest keeps every trained run."""
    return [stage1_dialogues_path(cfg)]


def stage1_dialogues(cfg: Config) -> list[Dialogue]:
    """The stage-1 QA dialogues (ShapesWorld's, or ``stage1.dialogues`` for real images)."""
    path = stage1_dialogues_path(cfg)
    if not path.exists():
        raise ConfigError(f"stage-1 dialogues {path} not found: build them with `comalite stage1-data` "
                          "or set stage1.dialogues")
    dialogues = read_dialogues(path, image_root(cfg, ensure_data(cfg)))
    return dialogues[:cfg.stage1.max_dialogues] if cfg.stage1.max_dialogues else dialogues


def _train_dir(cfg: Config) -> Path:
    source = data_source(cfg)
    return source.train_folder(source.ensure())


def train_subsets(cfg: Config) -> tuple[str, ...]:
    """The training subsets: ``stage2.subsets``, else every subset folder found."""
    train_dir = _train_dir(cfg)
    subsets = cfg.stage2.subsets or tuple(dataset_folders(train_dir, "original"))
    if not subsets:
        raise DataFormatError(f"{train_dir}: no training subsets (folders with original*.parquet files). "
                              "Download MMEB-train subsets there or fix data.root.")
    return subsets


def train_files(cfg: Config) -> list[Path]:
    """The files stage 2's data is made of (what its run record fingerprints; see ``stage1_files``)."""
    train_dir = _train_dir(cfg)
    return [f for name in train_subsets(cfg) for f in data_files(train_dir / name, "original")]


def stage_images(cfg: Config, stage: str) -> tuple[Path, list[str]]:
    """(image root, the distinct image files) of ``stage``'s data (``stage1``: its dialogues; ``stage2``: every
    row of its subsets, before caps and ``max_dialogues``, which are settings): what its run record hashes."""
    root = image_root(cfg, ensure_data(cfg))
    if stage == "stage1":
        path = stage1_dialogues_path(cfg)
        images = {d.image for d in (read_dialogues(path, root) if path.exists() else stage1_dialogues(cfg))}
    else:
        train_dir = _train_dir(cfg)
        images = {item.image for name in train_subsets(cfg) for pair in read_train_subset(train_dir / name, root)
                  for item in (pair.query, pair.positive, pair.negative) if item is not None}
    return root, sorted(image for image in images if image)


def subset_cap(cfg: Config, subset: str) -> int:
    """The rows stage 2 takes from ``subset``: ``stage2.subset_caps[subset]``, else ``stage2.per_subset_cap``
    (0 = every row)."""
    return cfg.stage2.subset_caps.get(subset, cfg.stage2.per_subset_cap)


def _check_cap_names(cfg: Config, subsets: tuple[str, ...], train_dir: Path) -> None:
    """A cap whose name differs from a subset found only in spelling (ImageNet-1K for ImageNet_1K) would
    silently cap nothing: refuse it. Caps for subsets not downloaded are fine (presets list all 20)."""
    loose = {name.lower().replace("-", "_"): name for name in subsets}
    unused = [name for name in cfg.stage2.subset_caps if name not in subsets]
    for name in unused:
        near = loose.get(name.lower().replace("-", "_"))
        if near:
            raise ConfigError(f"stage2.subset_caps.{name}: no subset '{name}' under {train_dir}, but there is "
                              f"'{near}': spell the cap as --set stage2.subset_caps.{near}=...")
    if unused:
        log.info("stage2.subset_caps names subsets that are not under %s: %s", train_dir, ", ".join(unused))


def train_pairs(cfg: Config) -> list[TrainPair]:
    """Stage-2 pairs from every MMEB-train-schema subset under the train folder (or ``stage2.subsets``).

    A capped subset keeps a sample of its rows drawn with ``stage2.train.seed`` (in file order). That is
    comalite's choice: the first rows of a file sorted by class would hold only a few classes. VLM2Vec's
    loader takes the first N rows (``split[:N]``); how CoMa's own loader picks them was not checked."""
    train_dir = _train_dir(cfg)
    subsets = train_subsets(cfg)
    _check_cap_names(cfg, subsets, train_dir)
    pairs: list[TrainPair] = []
    for name in subsets:
        rows = read_train_subset(train_dir / name, image_root(cfg, cfg.data_root()), subset=name)
        pairs += [rows[i] for i in sample_rows(len(rows), subset_cap(cfg, name) or None, cfg.stage2.train.seed)]
    return pairs


def eval_root(cfg: Config) -> tuple[Path, Path]:
    """(folder with one sub-folder per eval dataset, image root) for this config."""
    if cfg.eval.root:
        root = Path(cfg.eval.root)
        return root, Path(cfg.eval.image_root) if cfg.eval.image_root else root
    return data_source(cfg).eval_folders()


def eval_datasets(cfg: Config) -> list[EvalDataset]:
    """The evaluation datasets this config names (default: every one found), sampled as configured."""
    root, images = eval_root(cfg)
    names = cfg.eval.datasets or tuple(dataset_folders(root, "test"))
    if not names:
        raise DataFormatError(f"{root}: no evaluation datasets (folders with test*.parquet files). Download "
                              "MMEB-eval datasets there or fix eval.root.")
    return [read_eval_dataset(root, name, image_root=images, limit=cfg.eval.max_queries or None,
                              seed=cfg.eval.seed) for name in names]
