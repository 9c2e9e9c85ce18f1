"""Small helpers the lesson notebooks (``notebooks/0*.ipynb``) share; nothing here is part of the recipe.

``start(notebook, PRESET, SMOKE)`` turns a notebook's parameters into its ``Lesson``: the config
(smoke mode = ``load_config(preset, smoke=True)``, its own run folder, data and tiny VLM), where its
figures go (``docs/figures/<notebook>_<name>.png`` for a full run, the run folder in smoke mode, so a quick
check never overwrites the committed figures) and quiet, CPU-friendly settings. ``ensure_result`` runs a
stage only when its result folder is missing, so the notebooks reuse each other's runs but each one also
works on its own.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_DIR, Config, load_config

FIGURES_DIR = REPO_DIR / "docs" / "figures"
"""Where the committed figures live (written only by full, non-smoke runs)."""

STAGES = ("stage1", "stage2", "contrastive_only")

# Set on import, before a notebook's other imports pull bitsandbytes and transformers in.
warnings.filterwarnings("ignore", message=".*gemm_4bit_forward from kernels-community.*")
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
for _noisy in ("transformers", "bitsandbytes", "peft"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


@dataclass
class Lesson:
    """One notebook's run: its name (``02_stage1_compression``), preset, smoke flag, config and overrides."""

    notebook: str
    preset: str
    smoke: bool
    cfg: Config
    overrides: tuple[str, ...] = ()

    def figure(self, name: str) -> Path:
        """Path for the figure ``name``: ``docs/figures/<notebook>_<name>.png``, or under the run folder in
        smoke mode."""
        folder = self.cfg.run_dir() / "figures" if self.smoke else FIGURES_DIR
        return folder / f"{self.notebook}_{name}.png"

    def variant(self, suffix: str, *overrides: str) -> Config:
        """The same preset and mode with ``overrides``, running in its own folder ``<run name>-<suffix>``
        (an ablation, e.g. ``variant("nomask", "stage1.mask=false")``)."""
        return load_config(self.preset, [*self.overrides, *overrides, f"name={self.cfg.name}-{suffix}"],
                           smoke=self.smoke)

    def save(self, fig, name: str) -> Path:
        """Write a figure made in the notebook itself (``comalite.viz`` plots take ``save_to=``)."""
        from .viz import SAVE_DPI

        path = self.figure(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
        return path


def start(notebook: str, preset: str = "tiny", smoke: bool = True, overrides: list[str] | tuple[str, ...] = ()) -> Lesson:
    """Load the notebook's config and set the process up for it (logging, warnings, CPU threads)."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("comalite.evaluate").setLevel(logging.ERROR)  # its warnings also come as Python warnings
    overrides = tuple(overrides)
    cfg = load_config(preset, overrides, smoke=smoke)
    if cfg.model.backbone in ("tiny", "tiny-smoke") and not torch.cuda.is_available():
        # The tiny model's matrices are too small to split across threads: on a busy 2-core machine one
        # thread runs a stage-1 step about 4x faster than two.
        torch.set_num_threads(1)
    if os.environ.get("TQDM_DISABLE"):
        _no_progress_bars()
    return Lesson(notebook, preset, smoke, cfg, overrides)


def _no_progress_bars() -> None:
    """Honour ``TQDM_DISABLE`` (set by the render script and the tests) everywhere. In a kernel ``tqdm.auto``
    is the widget bar, which passes ``disable=`` itself and so ignores the variable; the training loop passes
    it too, and transformers draws its own loading bars. A rendered notebook would otherwise keep a frozen
    "0%" bar per run and per evaluated dataset."""
    import tqdm.auto
    import transformers

    from . import trainer

    bar = tqdm.auto.tqdm
    if getattr(bar, "comalite_quiet", False):
        return

    def quiet(*args, **kwargs):
        kwargs["disable"] = True
        return bar(*args, **kwargs)

    quiet.comalite_quiet = True
    tqdm.auto.tqdm = trainer.tqdm = quiet
    transformers.utils.logging.disable_progress_bar()


def ensure_result(cfg: Config, stage: str) -> dict:
    """``result.json`` of ``stage`` (``stage1``, ``stage2`` = CoMa, ``contrastive_only``) in the config's run
    folder, running the stage first (and stage 1 before stage 2) if it has not finished there yet."""
    from .result import RESULT_FILE, read_result

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    folder = cfg.run_dir() / stage
    if not (folder / RESULT_FILE).exists():
        if stage == "stage1":
            from .stage1 import run_stage1

            run_stage1(cfg)
        else:
            from .stage2 import run_stage2

            if stage == "stage2":
                ensure_result(cfg, "stage1")
            init = "stage1" if stage == "stage2" else "backbone"
            run_stage2(dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, init=init)))
    return read_result(folder)


def without_last_answer(example):
    """``(example cut before its last answer, the answer's token ids)``: a prompt for ``generate_answer``."""
    from .sequence import ANSWER, Example

    end = len(example.roles)
    while end and example.roles[end - 1] == ANSWER:
        end -= 1
    prompt = Example(example.input_ids[:end], example.roles[:end], example.pixel_values, example.image_grid_thw)
    return prompt, example.input_ids[end:]


def compression_states(backbone, inputs):
    """Last-layer hidden states at the K compression positions, (n, K, H), not pooled or normalised:
    what ``comalite.embedding.pool`` averages."""
    import torch

    from .sequence import COMPRESS, collate, embed_example

    examples = [embed_example(backbone.processor, item) for item in inputs]
    batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
    with torch.no_grad():
        hidden = backbone.hidden_states(batch)
    k = len(backbone.processor.compress_ids)
    is_compress = (batch["roles"] == COMPRESS).to(hidden.device)
    return hidden[is_compress].reshape(len(inputs), k, -1).float().cpu()


def tiny_report(cfg: Config) -> dict | None:
    """The tiny VLM's build report (``tiny_report.json``: its stage-0 accuracy and the image-blind
    baseline), or None for any other backbone."""
    import json

    if cfg.model.backbone not in ("tiny", "tiny-smoke"):
        return None
    from .backbone import resolve_checkpoint

    return json.loads((Path(resolve_checkpoint(cfg.model.backbone)) / "tiny_report.json").read_text())
