"""Every knob of a run, as dataclasses with commented defaults, and presets as small YAML files.

A preset (``comalite/presets/tiny.yaml``, ``qwen2-vl-2b.yaml``, ...) lists only what differs from the
defaults below, or from the preset it names as ``base``; ``--set section.field=value`` on the command line
overrides one field. Mapping settings (``stage2.subset_caps``, ``eval.meta_tasks``) are the exception: a preset
or ``--set stage2.subset_caps=ImageNet_1K=50000,MSCOCO_i2t=1000`` adds or replaces those entries and keeps the
others; an empty value (``--set stage2.subset_caps=``) empties the mapping. The defaults are the paper's
recipe where the paper says something. ``tiny-smoke`` is
the tiny preset shrunk to a minute: tests, CI and the notebooks' quick check use it.

Values are checked when they are set (an unknown key, a wrong type, ``steps=2.5``, ``mask=2``) and as a
whole by ``Config.validate`` (choices, ranges, divisibility), so a bad setting fails before any model loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .bounds import check_sizes
from .errors import ConfigError
from .paths import data_dir, home_dir
from .pooling import POOLINGS
from .records import META_TASKS

LANGUAGES = (1, 2)
"""ShapesWorld's question languages (``data.language``): 1 = the first one (a question drawn uniformly among a
type's questions, so answers follow the scene's statistics: "no" for most places and colour/shape combinations,
"zero" for most colours); 2, the default and what the shipped tiny VLM is built on = balanced answers and leak-free
dialogues (``comalite.shapesworld.asking``)."""

BOOKKEEPING = ("root", "image_root", "backbone", "dialogues", "device", "cpu_threads", "vision_cache_mb",
               "save_every", "log_every")
"""Settings that never change what a run learns: where its inputs are (their content is fingerprinted
instead), where it runs and how it is kept. A run record leaves them out (``comalite.runs``), so they may change
between a run and its resume; a lesson's overrides of them keep the preset's run folder (``comalite.lesson``)."""


@dataclass
class ModelConfig:
    backbone: str = "tiny"            # "tiny" (shipped in data/), "tiny-smoke", a hub id, or a local checkpoint folder
    quantization: str = "nf4"         # "nf4" (bitsandbytes 4-bit, double quant) or "none"
    dtype: str = "auto"               # compute dtype: "auto" = bf16 where the GPU has it, else fp32
    device: str = "auto"              # "auto" = cuda if available, else cpu
    cpu_threads: int = 0              # torch threads on CPU; 0 = $COMALITE_CPU_THREADS if set, else every core
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
    vision_cache_mb: int = 0          # keep the frozen ViT's tokens per image in memory (comalite.vision_cache)
    embed_max_length: int = 4096      # tokens of one embedding input (query or candidate; its image span and the K
                                      # compression tokens included), in stage 2 and in evaluation alike
    embed_too_long: str = "refuse"    # an input over embed_max_length: "refuse" (names its file and row) or
                                      # "truncate" (cuts its text, keeps the image and the K tokens; counted in the log)


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
    divergence_factor: float = 5.0    # stop when a loss is this many times its recent mean (and 1 nat over its
                                      # recent max); 0: off


@dataclass
class DataConfig:
    """Where the data comes from. ``shapesworld`` builds the synthetic world under ``data/``."""

    source: str = "shapesworld"       # "shapesworld" or "mmeb"
    name: str = "shapesworld"         # ShapesWorld's folder under data/ (smoke mode keeps its own)
    root: str = ""                    # folder of the data; "" = data/<name> for ShapesWorld (required for mmeb)
    image_root: str = ""              # images for real MMEB files ("" = root)
    seed: int = 0
    image_size: int = 112             # ShapesWorld render size (multiple of 28)
    n_stage1_images: int = 2000
    n_train_per_subset: int = 1000
    n_eval_queries: int = 100
    n_candidates: int = 10
    language: int = 2                 # ShapesWorld question language (LANGUAGES): 2 = balanced, leak-free; 1 = the first
    workers: str = "auto"             # threads that read and process images ahead of training and evaluation
                                      # (comalite.prefetch): a number (0 = in turn, in the main thread), or "auto"
                                      # = min(8, cores - 1) on a GPU, 0 on a CPU (the step's threads use every core)


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
    max_length: int = 8192            # tokens of one stage-1 sequence (image span, prompt, K, every turn): the paper's
    too_long: str = "refuse"          # a dialogue over max_length: "refuse" (names its file and line) or "truncate"
                                      # (keeps the first turns that fit; counted in the log)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=8))


@dataclass
class WriterConfig:
    """The VLM that writes stage-1 dialogues for real images (``comalite stage1-data``,
    ``comalite.stage1_data``): questions about each image, then their answers in one chat."""

    backbone: str = ""                # "" = model.backbone; the model that writes and answers (paper: Qwen2.5-VL-7B)
    quantization: str = ""            # "" = model.quantization; "nf4" or "none"
    n_questions: int = 4              # questions written per image (paper: 3-5)
    max_question_tokens: int = 192    # new tokens for the whole list of questions
    max_answer_tokens: int = 64       # new tokens per answer; answers cut there are counted in the log
    max_pixels: int = 0               # the writer's view of an image; 0 = model.max_pixels
    min_pixels: int = 0               # 0 = model.min_pixels
    strict: bool = False              # an unreadable image stops stage1-data (true) or is skipped and listed in <out>.skipped
    question_prompt: str = ("Write {n} different questions about this image whose answers, taken together, would "
                            "single it out among many similar images: ask about the main objects, their "
                            "attributes, counts, positions, any text, and the setting. One question per line, "
                            "without answers.")  # {n} becomes n_questions

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the ``writer.*`` setting that is out of range."""
        if self.quantization not in ("", "nf4", "none"):
            raise ConfigError(f"writer.quantization={self.quantization!r}: choose one of nf4, none, or \"\" "
                              "(= model.quantization)")
        for name in ("n_questions", "max_question_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"writer.{name}={getattr(self, name)}: must be at least 1")
        if self.min_pixels < 0 or self.max_pixels < 0 or (self.max_pixels and self.min_pixels > self.max_pixels):
            raise ConfigError(f"writer.min_pixels={self.min_pixels}, writer.max_pixels={self.max_pixels}: give "
                              "0 (= the model's) or 0 < min_pixels <= max_pixels")


@dataclass
class Stage2Config:
    """Contrastive tuning."""

    init: str = "stage1"              # "stage1" (CoMa) or "backbone" (contrastive-only baseline)
    subsets: tuple[str, ...] = ()     # MMEB-train subsets (() = every subset found)
    per_subset_cap: int = 0           # rows per subset, a seeded sample (0 = all)
    subset_caps: dict[str, int] = field(default_factory=dict)  # rows per named subset; wins over per_subset_cap
    sub_batch_size: int = 64          # pairs per same-subset sub-batch (0 = fully mixed batches)
    chunk_size: int = 8               # GradCache chunk (sequences encoded at once)
    loss: str = "infonce"             # a name in comalite.loss.LOSSES (InfoNCE, the paper's)
    temperature: float = 0.03
    symmetric: bool = False           # InfoNCE: add the target->query direction
    hard_negatives: bool = False      # use the neg_* columns
    share_hard_negatives: bool = True # one pool of hard negatives for every query (else each query its own)
    pooling: str = "mean"             # "mean" over compression tokens (paper) or "last" (comalite.pooling)
    train_compress_rows: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=1024, steps=1500))


@dataclass
class EvalConfig:
    datasets: tuple[str, ...] = ()    # names; () = every dataset found under the data root
    root: str = ""                    # MMEB-eval-layout folder ("" = ShapesWorld's eval/)
    image_root: str = ""
    max_queries: int = 0              # sample this many queries per dataset, seeded (0 = all)
    meta_tasks: dict[str, str] = field(default_factory=dict)  # a dataset of your own -> its meta-task
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
    writer: WriterConfig = field(default_factory=WriterConfig)

    def run_dir(self) -> Path:
        """The folder this run writes to."""
        return Path(self.out_dir) if self.out_dir else home_dir() / self.name

    def data_root(self) -> Path:
        """The data folder (ShapesWorld is built there if missing)."""
        return Path(self.data.root) if self.data.root else data_dir() / self.data.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check choices, ranges and the settings that must agree; raises ``ConfigError`` naming the setting."""
        self.writer.validate()
        for where, low, high in (("model", self.model.min_pixels, self.model.max_pixels),
                                 ("writer", self.writer.min_pixels or self.model.min_pixels,
                                  self.writer.max_pixels or self.model.max_pixels)):
            if not 0 < low <= high:
                inherited = " (a writer's 0 takes the model's)" if where == "writer" else ""
                raise ConfigError(f"{where}.min_pixels={low} and {where}.max_pixels={high}{inherited}: give "
                                  "0 < min_pixels <= max_pixels")
        for where, value, choices in (
            ("model.quantization", self.model.quantization, ("nf4", "none")),
            ("model.dtype", self.model.dtype, ("auto", "bf16", "fp16", "fp32")),
            ("model.attn_implementation", self.model.attn_implementation, ("sdpa", "eager")),
            ("data.source", self.data.source, ("shapesworld", "mmeb")),
            ("stage1.supervise", self.stage1.supervise, ("answers", "all")),
            ("stage2.init", self.stage2.init, ("stage1", "backbone")),
            ("stage2.pooling", self.stage2.pooling, tuple(POOLINGS)),
            ("data.language", self.data.language, LANGUAGES),
            ("stage1.too_long", self.stage1.too_long, ("refuse", "truncate")),
            ("model.embed_too_long", self.model.embed_too_long, ("refuse", "truncate")),
        ):
            if value not in choices:
                raise ConfigError(f"{where}={value!r}: choose one of {', '.join(map(str, choices))}")
        for where, value in (("model.n_compress", self.model.n_compress), ("stage1.heldout", self.stage1.heldout),
                             ("stage2.chunk_size", self.stage2.chunk_size), ("eval.batch_size", self.eval.batch_size)):
            if value < 1:
                raise ConfigError(f"{where}={value}: must be at least 1")
        if self.data.workers != "auto" and not self.data.workers.isdigit():
            raise ConfigError(f"data.workers={self.data.workers!r}: give a whole number of threads (0 = none) or auto")
        if self.stage2.temperature <= 0:
            raise ConfigError(f"stage2.temperature={self.stage2.temperature}: must be > 0")
        check_sizes(self)
        caps = {"stage2.per_subset_cap": self.stage2.per_subset_cap,
                **{f"stage2.subset_caps.{name}": cap for name, cap in self.stage2.subset_caps.items()}}
        for where, cap in caps.items():
            if cap < 0:
                raise ConfigError(f"{where}={cap}: must be at least 0 (0 = every row)")
        for name, task in self.eval.meta_tasks.items():
            if task not in META_TASKS:
                raise ConfigError(f"eval.meta_tasks.{name}={task!r}: choose one of {', '.join(META_TASKS)}")
        for stage in ("stage1", "stage2"):
            train = getattr(self, stage).train
            for name in ("steps", "batch_size", "grad_accum"):
                if getattr(train, name) < 1:
                    raise ConfigError(f"{stage}.train.{name}={getattr(train, name)}: must be at least 1")
            if train.lr <= 0:
                raise ConfigError(f"{stage}.train.lr={train.lr}: must be > 0")
            for name, low, high in (("warmup_ratio", 0, 1), ("weight_decay", 0, math.inf),
                                    ("max_grad_norm", 0, math.inf), ("divergence_factor", 0, math.inf)):
                if not low <= getattr(train, name) <= high:
                    bound = f"between {low} and {high}" if high < math.inf else f"at least {low}"
                    raise ConfigError(f"{stage}.train.{name}={getattr(train, name)}: must be {bound}")
        s1 = self.stage1.train
        if s1.batch_size % s1.grad_accum:
            raise ConfigError(f"stage1.train.batch_size={s1.batch_size} is not divisible by "
                              f"stage1.train.grad_accum={s1.grad_accum}")
        if self.stage2.train.grad_accum != 1:  # accumulation would shrink the pool of in-batch negatives
            raise ConfigError(f"stage2.train.grad_accum={self.stage2.train.grad_accum}: stage 2 does not accumulate "
                              "(each part would only see its own negatives); bound memory with stage2.chunk_size "
                              "(GradCache: the same gradients as the whole batch)")
        sub, batch = self.stage2.sub_batch_size, self.stage2.train.batch_size
        if sub and (sub > batch or batch % sub):
            raise ConfigError(f"stage2.sub_batch_size={sub} must divide stage2.train.batch_size={batch} (0: mixed)")
        return self


def _update(obj, values: dict, source: str, section: str = "") -> None:
    """Set dataclass fields from a nested dict, refusing unknown keys (a typo must not pass silently).
    Messages name the setting as ``<source> <section.field>`` (source: a preset file or ``--set``)."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        where = f"{source} {section}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), list(names), n=1)
            hint = f" (did you mean '{section}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown setting{hint}; known in {section.rstrip('.') or 'the top level'}: "
                              f"{', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} is a section; give a mapping, not {value!r}")
            _update(current, value, source, f"{section}{key}.")
        elif isinstance(current, dict):  # a mapping setting adds to (or replaces entries of) what it has; "" empties
            entries = _mapping(value, typing.get_args(typing.get_type_hints(type(obj))[key])[1], where)
            setattr(obj, key, {**current, **entries} if entries else {})
        else:
            setattr(obj, key, _coerce(value, current, where))


def _mapping(value, value_type: type, where: str) -> dict:
    """``name=value,name=value`` (command line) or a YAML mapping as ``{name: value_type}``; "" or an empty
    YAML entry is the empty mapping."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        items = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not name.strip() for name, sep, _ in items):
            raise ConfigError(f"{where}: expected name=value pairs separated by commas, got {value!r}")
        value = {name.strip(): entry.strip() for name, _, entry in items}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping (name=value,... or YAML name: value), got {value!r}")
    return {str(name): _coerce(entry, value_type(), f"{where}.{name}") for name, entry in value.items()}


def _coerce(value, current, where: str):
    """``value`` (from YAML or the command line) as the type of the default it replaces, or ConfigError."""
    if isinstance(current, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a comma-separated list of names, got {value!r}")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(current, int):
        number = _number(value, where)
        if number != int(number):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(number)
    if isinstance(current, float):
        return float(_number(value, where))
    if isinstance(value, (dict, list, bool)) or value is None:
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return str(value)


def _number(value, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def preset_names() -> list[str]:
    """The presets shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("comalite.presets").iterdir() if p.name.endswith(".yaml"))


def _read_preset(preset: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """``[(file name, values)]`` of a preset and the presets it is based on, base first."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        text, label = path.read_text(), str(path)
    else:
        if preset not in preset_names():
            raise ConfigError(f"no preset '{preset}'; known presets: {', '.join(preset_names())} (or a .yaml path)")
        text, label = resources.files("comalite.presets").joinpath(f"{preset}.yaml").read_text(), f"{preset}.yaml"
    if preset in seen:
        raise ConfigError(f"presets based on each other in a circle: {' -> '.join((*seen, preset))}")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:  # one line: where and what, not the parser's excerpt of the file
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{label}{where}: not valid YAML ({problem}). Fix the file there") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{label} must be a mapping of sections")
    base = values.pop("base", None)
    return (_read_preset(str(base), (*seen, preset)) if base else []) + [(label, values)]


def load_config(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset's YAML (after the presets it is based on), then ``section.field=value``
    overrides, in that order; validated."""
    cfg = Config()
    for label, values in _read_preset(preset):
        _update(cfg, values, label)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like section.field=value")
        nested: dict = {}
        node = nested
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[last] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            node[last] = value
        _update(cfg, nested, "--set")
    return cfg.validate()
