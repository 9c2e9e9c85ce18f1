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

from .errors import ConfigError
from .paths import data_dir, home_dir
from .records import META_TASKS


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
    divergence_factor: float = 5.0    # stop when a loss is this many times (and 1 nat over) its recent mean; 0: off


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
    ``comalite.data.dialogues``): questions about each image, then their answers in one chat."""

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
            ("stage2.pooling", self.stage2.pooling, ("mean", "last")),
            ("stage1.too_long", self.stage1.too_long, ("refuse", "truncate")),
            ("model.embed_too_long", self.model.embed_too_long, ("refuse", "truncate")),
        ):
            if value not in choices:
                raise ConfigError(f"{where}={value!r}: choose one of {', '.join(choices)}")
        for where, value in (("model.n_compress", self.model.n_compress), ("stage1.heldout", self.stage1.heldout),
                             ("stage2.chunk_size", self.stage2.chunk_size), ("eval.batch_size", self.eval.batch_size)):
            if value < 1:
                raise ConfigError(f"{where}={value}: must be at least 1")
        if self.stage2.temperature <= 0:
            raise ConfigError(f"stage2.temperature={self.stage2.temperature}: must be > 0")
        self._validate_sizes()
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
        sub, batch = self.stage2.sub_batch_size, self.stage2.train.batch_size
        if sub and (sub > batch or batch % sub):
            raise ConfigError(f"stage2.sub_batch_size={sub} must divide stage2.train.batch_size={batch} (0: mixed)")
        return self


    def _validate_sizes(self) -> None:
        """Numbers that are not finite, sizes below their floor, and the memory-relevant sizes against sane
        limits (``MAX_COMPRESS``, ``MAX_SEQUENCE_LENGTH``): every one is answered here, before any model loads."""
        for where, value in _floats(self):
            if not math.isfinite(value):
                raise ConfigError(f"{where}={value}: must be a finite number")
        m, d = self.model, self.data
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
                             ("stage1.max_dialogues", self.stage1.max_dialogues),
                             ("eval.max_queries", self.eval.max_queries)):
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
        for where, names in (("eval.datasets", self.eval.datasets), ("stage2.subsets", self.stage2.subsets)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"{where} names {', '.join(repr(n) for n in twice)} more than once: give each "
                                  "name once")
        image_tokens = m.max_pixels // TOKEN_PIXELS + 2  # the vision span: its tokens, <|vision_start|>, <|vision_end|>
        for where, length in (("stage1.max_length", self.stage1.max_length),
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
