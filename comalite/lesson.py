"""What the lesson notebooks (``notebooks/0*.ipynb``) share besides the recipe: their set-up and figures.

``start(notebook, PRESET, OVERRIDES)`` turns a notebook's parameters into its ``Lesson``: the config, quiet
logging, and where its figures go. Figures of the full ``tiny`` preset in a checkout go to
``docs/figures/<notebook>_<name>.png`` (the committed ones); any other preset (``tiny-smoke`` above all, the
quick check) writes them under its run folder, so a quick check never overwrites the committed figures.
``figures=`` puts them anywhere else.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import transformers

from .config import Config, load_config
from .paths import figures_dir
from .progress import progress_enabled
from .viz import SAVE_DPI

COMMITTED_PRESET = "tiny"
"""The preset whose lesson figures are the committed ones in ``docs/figures``."""


@dataclass
class Lesson:
    """One notebook's run: its name (``02_stage1_compression``), preset, overrides, config and figure folder."""

    notebook: str
    preset: str
    cfg: Config
    overrides: tuple[str, ...]
    figures: Path

    def figure(self, name: str) -> Path:
        """Path for the figure ``name``: ``<figures>/<notebook>_<name>.png``."""
        return self.figures / f"{self.notebook}_{name}.png"

    def variant(self, suffix: str, *overrides: str) -> Config:
        """The same preset with ``overrides``, running in its own folder ``<run name>-<suffix>`` (an
        ablation, e.g. ``variant("nomask", "stage1.mask=false")``): never another run's weights."""
        return load_config(self.preset, [*self.overrides, *overrides, f"name={self.cfg.name}-{suffix}"])

    def save(self, fig, name: str) -> Path:
        """Write a figure made in the notebook itself (``comalite.viz`` plots take ``save_to=``)."""
        path = self.figure(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
        return path


def start(notebook: str, preset: str = "tiny", overrides: list[str] | tuple[str, ...] = (), *,
          figures: str | Path | None = None) -> Lesson:
    """Load the notebook's config and quieten the libraries' logs (and their progress bars when
    ``TQDM_DISABLE`` is set, as the render script and the tests do)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("comalite.eval.protocol").setLevel(logging.ERROR)  # its warnings also come as Python warnings
    warnings.filterwarnings("ignore", message=".*gemm_4bit_forward from kernels-community.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    for noisy in ("transformers", "bitsandbytes", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not progress_enabled():
        transformers.utils.logging.disable_progress_bar()
    overrides = tuple(overrides)
    cfg = load_config(preset, overrides)
    if figures is None:
        committed = figures_dir() if preset == COMMITTED_PRESET and not overrides else None
        figures = committed or cfg.run_dir() / "figures"
    return Lesson(notebook, preset, cfg, overrides, Path(figures))
