"""Every knob of a run, as dataclasses with commented defaults, and presets as small YAML files.

A preset (``configs/tiny.yaml``, ``configs/qwen2-vl-2b.yaml``, ...) only lists what differs from the
defaults below; ``--set section.field=value`` on the command line overrides one field. The defaults are
the paper's recipe where the paper says something (see ``../shared/notes/recipe.md``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
CONFIG_DIR = REPO_DIR / "configs"


def home_dir() -> Path:
    """Where runs, the tiny checkpoint and generated data live: ``$COMALITE_HOME`` or ``<repo>/runs``."""
    default = REPO_DIR / "runs" if (REPO_DIR / "pyproject.toml").exists() else Path.home() / ".cache" / "comalite"
    return Path(os.environ.get("COMALITE_HOME", default))


@dataclass
class ModelConfig:
    backbone: str = "tiny"            # "tiny" (built in code), a hub id, or a local checkpoint folder
    quantization: str = "nf4"         # "nf4" (bitsandbytes 4-bit, double quant) or "none"
    dtype: str = "auto"               # compute dtype: "auto" = bf16 where the GPU has it, else fp32
    device: str = "auto"              # "auto" = cuda if available, else cpu
    cpu_threads: int = 0              # torch threads on CPU (0 = torch's default); tiny: 1, see benchmarks/
    n_compress: int = 32              # K compression tokens (paper: 32 best at 3B; CREM: 16 at 2B)
    lora_r: int = 16
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    use_dora: bool = False            # the paper used DoRA; off by default because it is ~2x slower
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # LLM attention only
    gradient_checkpointing: bool = True
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"; the 4D compression mask works with both
    max_pixels: int = 28 * 28 * 256   # caps LLM tokens per image (one per 28x28 pixels)
    min_pixels: int = 28 * 28 * 4


@dataclass
class TrainConfig:
    """Optimisation shared by stage 0, 1 and 2."""

    steps: int = 1000
    batch_size: int = 8               # sequences per optimizer step (stage 2: pairs per step)
    grad_accum: int = 1               # micro-steps per optimizer step (stages 0/1; stage 2 uses GradCache)
    lr: float = 5e-5
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 200             # checkpoint period in optimizer steps (0: only at the end)
    log_every: int = 10


@dataclass
class DataConfig:
    """Where the data comes from. ``shapesworld`` builds the synthetic world under the run home."""

    source: str = "shapesworld"       # "shapesworld" or "mmeb"
    name: str = "shapesworld"         # ShapesWorld's folder under the home (smoke mode keeps its own)
    root: str = ""                    # folder of the data; "" = <home>/shapesworld for ShapesWorld
    image_root: str = ""              # images for real MMEB files ("" = root)
    seed: int = 0
    image_size: int = 112             # ShapesWorld render size (multiple of 28)
    n_stage1_images: int = 2000
    n_train_per_subset: int = 1000
    n_eval_queries: int = 100
    n_candidates: int = 10


@dataclass
class Stage1Config:
    """Compression pre-training."""

    dialogues: str = ""               # stage-1 jsonl ("" = ShapesWorld's stage1/dialogues.jsonl)
    mask: bool = True                 # the compression mask; False = plain causal (ablation)
    supervise: str = "answers"        # "answers" (paper's P(A|C,Q)) or "all" (released scripts)
    multi_turn: bool = True           # False: keep only the first QA turn (ablation)
    prompt: str = "Summarize above image in a few words."
    text_prompt: str = "Summarize above sentence in a few words."
    max_dialogues: int = 0            # 0 = all
    heldout: int = 200                # last dialogues kept out to measure answers through the tokens
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=8))


@dataclass
class Stage2Config:
    """Contrastive tuning."""

    init: str = "stage1"              # "stage1" (CoMa) or "backbone" (contrastive-only baseline)
    subsets: tuple[str, ...] = ()     # MMEB-train subsets ("" = every subset found)
    per_subset_cap: int = 0           # rows per subset (0 = all)
    sub_batch_size: int = 64          # pairs per same-subset sub-batch (0 = fully mixed batches)
    chunk_size: int = 8               # GradCache chunk (sequences encoded at once)
    temperature: float = 0.03
    symmetric: bool = False
    hard_negatives: bool = False      # use the neg_* columns
    pooling: str = "mean"             # "mean" over compression tokens (paper) or "last"
    train_compress_rows: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=1024, steps=1500))


@dataclass
class EvalConfig:
    datasets: tuple[str, ...] = ()    # names; () = every dataset found under the data root
    root: str = ""                    # MMEB-eval-layout folder ("" = ShapesWorld's eval/)
    image_root: str = ""
    max_queries: int = 0              # sample this many queries per dataset, seeded (0 = all)
    seed: int = 0
    batch_size: int = 16


@dataclass
class Config:
    name: str = "tiny"
    out_dir: str = ""                 # "" = <home>/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def run_dir(self) -> Path:
        """The folder this run writes to."""
        return Path(self.out_dir) if self.out_dir else home_dir() / self.name

    def data_root(self) -> Path:
        """The data folder (ShapesWorld is built there if missing)."""
        return Path(self.data.root) if self.data.root else home_dir() / self.data.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _update(obj, values: dict, where: str) -> None:
    """Set dataclass fields from a nested dict, refusing unknown keys (a typo must not pass silently)."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise KeyError(f"{where}: unknown setting '{key}'; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f"{where}.{key} is a section; give a mapping, not {value!r}")
            _update(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, current, f"{where}.{key}"))


def _coerce(value, current, where: str):
    """Convert a YAML or command-line value to the type of the default it replaces."""
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return tuple(value)
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{where}: expected true/false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(current, (int, float)) and isinstance(value, str):
        try:
            return type(current)(float(value)) if isinstance(current, int) else float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def preset_path(preset: str) -> Path:
    """A preset name (``tiny``) or a path to a YAML file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no preset '{preset}' in {CONFIG_DIR}; known presets: {', '.join(known)}")
    return path


SMOKE_OVERRIDES = (
    # Smoke mode (notebooks' quick switch, tests, CI): the same code on a small ShapesWorld, a tiny VLM
    # with a short stage 0, short runs; all in folders of their own so they never clobber a full run.
    "name=tiny-smoke", "model.backbone=tiny-smoke", "data.name=shapesworld-smoke", "data.n_stage1_images=360", "data.n_train_per_subset=120", "data.n_eval_queries=24", "data.n_candidates=8",
    "stage1.heldout=60", "stage1.train.steps=30", "stage2.train.steps=20", "stage2.train.batch_size=32",
    "stage2.sub_batch_size=16", "stage2.chunk_size=16",
)


def load_config(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = False) -> Config:
    """Defaults, then the preset's YAML, then (``smoke``) ``SMOKE_OVERRIDES``, then ``section.field=value``
    overrides, in that order."""
    cfg = Config()
    overrides = (*SMOKE_OVERRIDES, *overrides) if smoke else tuple(overrides)
    path = preset_path(preset)
    with open(path) as f:
        _update(cfg, yaml.safe_load(f) or {}, path.name)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' must look like section.field=value")
        nested: dict = {}
        node = nested
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value) if value.strip() else ""
        _update(cfg, nested, "--set")
    return cfg
