"""What the lesson notebooks (``notebooks/0*.ipynb``) share besides the recipe: their set-up and displays.

``start(notebook, PRESET, OVERRIDES)`` turns a notebook's parameters into its ``Lesson``: the config, quiet
logging, and where its figures go. Figures of the full ``tiny`` preset in a checkout go to
``docs/figures/<notebook>_<name>.png`` (the committed ones); any other preset (``tiny-smoke`` above all, the
quick check) or any ``OVERRIDES`` write them under the run folder, so a quick check or an exercise never
overwrites the committed figures. ``figures=`` puts them anywhere else.

Where a run goes: ``OVERRIDES`` that change what a stage learns (``model.n_compress=4``, ``stage1.mask=false``,
...) give the lesson its own run folder, ``<preset name>-<those overrides>``, so an exercise never meets the
folder of a run made with other settings. Overrides that only say where things are or how to evaluate
(``data.root``, ``model.backbone``, ``eval.*``, the device) keep the preset's folder, which the command line
shares (``comalite stage1 --preset ... --set ...``). ``name=`` or ``out_dir=`` in ``OVERRIDES`` always win.

Everything a lesson prints shows paths as ``shown`` writes them: relative to the checkout, or under
``$COMALITE_DATA`` / ``$COMALITE_HOME`` / ``~``, never the machine's absolute paths.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import transformers

from .config import BOOKKEEPING, Config, load_config
from .paths import figures_dir, repo_dir
from .progress import progress_enabled
from .reference import find as find_reference
from .runs import flatten
from .roles import CONTEXT, ROLE_NAMES
from .viz import SAVE_DPI, role_segments

COMMITTED_PRESET = "tiny"
"""The preset whose lesson figures are the committed ones in ``docs/figures``."""

@dataclass
class Lesson:
    """One notebook's run: its name (``02_stage1_compression``), preset, overrides, config and figure folder.

    ``committed`` says whether this is the run the committed outputs come from (the ``tiny`` preset, no
    overrides): the notebooks check their strongest claims only there.
    """

    notebook: str
    preset: str
    cfg: Config
    overrides: tuple[str, ...]
    figures: Path
    committed: bool = False

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

    def reference(self) -> Path | None:
        """The converged reference made from this run's VLM, data and model settings (``comalite.reference``:
        the same recipe trained far longer), or None after saying why there is none."""
        folder, why_not = find_reference(self.cfg)
        if folder is None:
            print(f"no converged reference for this run ({'; '.join(why_not)})")
        return folder

    @staticmethod
    def shown(path: str | Path | None) -> str:
        """A path as the lesson prints it (``comalite.lesson.shown``)."""
        return shown(path)

    def __repr__(self) -> str:
        settings = ", ".join(self.overrides) if self.overrides else "no overrides"
        return (f"{self.notebook}: preset {self.preset!r} ({settings}); runs in {shown(self.cfg.run_dir())}, "
                f"data in {shown(self.cfg.data_root())}, figures to {shown(self.figures)}")


def lesson_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config a lesson runs: the preset with ``overrides``, in its own run folder when they change what
    a stage learns (see the module docstring). ``scripts/render_notebooks.py`` uses it too."""
    cfg = load_config(preset, overrides)
    keys = {item.partition("=")[0].strip() for item in overrides}
    if not overrides or keys & {"name", "out_dir"}:
        return cfg
    base = _learned_settings(load_config(preset))
    changed = {k: v for k, v in _learned_settings(cfg).items() if base.get(k) != v}
    if not changed:
        return cfg
    suffix = "-".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return dataclasses.replace(cfg, name=f"{cfg.name}-{re.sub(r'[^A-Za-z0-9._=,-]+', '_', suffix)[:120]}")


def _learned_settings(cfg: Config) -> dict:
    """The settings of the sections a stage learns from (model, data, stage 1, stage 2), flattened, without
    ``config.BOOKKEEPING``."""
    sections = ("model", "data", "stage1", "stage2")
    tree = flatten({section: dataclasses.asdict(getattr(cfg, section)) for section in sections})
    return {k: v for k, v in tree.items() if k.rsplit(".", 1)[-1] not in BOOKKEEPING}


def _short_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as ``Category: message``: the default format starts with the absolute path of the file."""
    return f"{category.__name__}: {message}\n"


class _ShownPaths(logging.Filter):
    """Log records name their files as the lesson prints paths (``shown``): no output holds a machine's paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(shown(a) if isinstance(a, Path) else a for a in record.args)
        return True


def start(notebook: str, preset: str = "tiny", overrides: list[str] | tuple[str, ...] = (), *,
          figures: str | Path | None = None) -> Lesson:
    """Load the notebook's config and quieten the libraries' logs (and their progress bars when
    ``TQDM_DISABLE`` is set, as the render script and the tests do)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ShownPaths) for f in handler.filters):
            handler.addFilter(_ShownPaths())
    logging.getLogger("comalite.eval.protocol").setLevel(logging.ERROR)  # its warnings also come as Python warnings
    warnings.filterwarnings("ignore", message=".*gemm_4bit_forward from kernels-community.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.formatwarning = _short_warning
    for noisy in ("transformers", "bitsandbytes", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not progress_enabled():
        transformers.utils.logging.disable_progress_bar()
    overrides = tuple(overrides)
    cfg = lesson_config(preset, overrides)
    committed = preset == COMMITTED_PRESET and not overrides
    if figures is None:
        figures = (figures_dir() if committed else None) or cfg.run_dir() / "figures"
    return Lesson(notebook, preset, cfg, overrides, Path(figures), committed)


# ------------------------------------------------------------------------------------------ displays


def shown(path: str | Path | None) -> str:
    """``path`` as a lesson prints it: relative to the checkout, else under ``$COMALITE_DATA``,
    ``$COMALITE_HOME`` or ``~``; a path under none of them is returned as it is (a folder the reader gave)."""
    if path is None or path == "":
        return ""
    path = Path(path)
    roots = [(Path(os.environ[var]), f"${var}") for var in ("COMALITE_DATA", "COMALITE_HOME") if os.environ.get(var)]
    repo = repo_dir()
    if repo is not None:
        roots.append((repo, ""))
    roots.append((Path.home(), "~"))
    for root, label in roots:
        for candidate, base in ((path, root), (path.resolve(), root.resolve())):
            try:
                relative = candidate.relative_to(base)
            except ValueError:
                continue
            return str(Path(label) / relative) if label else (str(relative) or ".")
    return str(path)


def show_tree(folder: str | Path, *, depth: int = 2, shown_per_folder: int = 4) -> None:
    """Print a folder as a tree, a few entries per sub-folder, sizes of files; PNG-only folders are counted."""
    folder = Path(folder)
    print(f"{shown(folder)}/")

    def walk(path: Path, level: int) -> None:
        entries = sorted(path.iterdir())
        for entry in entries if level == 0 else entries[:shown_per_folder]:
            indent = "  " * (level + 1)
            pngs = sum(1 for _ in entry.rglob("*.png")) if entry.is_dir() else 0
            if entry.is_dir() and pngs and not any(entry.rglob("*.parquet")) and not any(entry.rglob("*.jsonl")):
                print(f"{indent}{entry.name}/  ({pngs} PNG files)")
            elif entry.is_dir():
                print(f"{indent}{entry.name}/")
                if level + 1 < depth:
                    walk(entry, level + 1)
            else:
                print(f"{indent}{entry.name}  ({entry.stat().st_size / 1024:.0f} KiB)")
        if level and len(entries) > shown_per_folder:
            print(f"{'  ' * (level + 1)}... {len(entries) - shown_per_folder} more")

    walk(folder, 0)


def token_roles(processor, example) -> list[str]:
    """A role name per position of a ``comalite.sequence.Example``, its context split into ``image`` (the
    vision span) and ``prompt`` (the text around it) for display."""
    image_ids = {processor.vision_start_id, processor.image_pad_id, processor.vision_end_id}
    return [("image" if tid in image_ids else "prompt") if role == CONTEXT else ROLE_NAMES[role]
            for tid, role in zip(example.input_ids, example.roles)]


def segments_table(processor, example):
    """One row per segment of an example (``comalite.viz.role_segments`` over ``token_roles``): its role,
    positions, token count and text, the image span written as ``<|image_pad|> x n``."""
    rows = []
    for role, begin, end in role_segments(token_roles(processor, example)):
        text = processor.tokenizer.decode(example.input_ids[begin:end])
        text = re.sub(r"(<\|image_pad\|>)+", lambda m: f" <|image_pad|> x {m[0].count('<|image_pad|>')} ", text)
        rows.append({"role": role, "positions": f"{begin}-{end - 1}", "tokens": end - begin,
                     "text": text.replace("\n", "\\n")})
    return pd.DataFrame(rows)
