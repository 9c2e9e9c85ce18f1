"""Pictures of the recipe's ideas, drawn by code from the package's own settings and functions.

One ``draw_*`` function per idea; each returns the matplotlib ``Figure`` (drawn into ``ax`` when given):

- :func:`draw_recipe_overview`: stage 0 -> stage 1 -> stage 2 -> evaluation, with the default settings.
- :func:`draw_mask_cartoon`: a 15-position stage-1 attention mask, computed by ``comalite.mask``.
- :func:`draw_pooling`: the stage-2 token layout and every registered pooling (``comalite.pooling``).
- :func:`draw_infonce`: a B x B similarity matrix and its loss, computed by ``comalite.loss``.
- :func:`draw_gradcache`: GradCache's two passes as ``comalite.gradcache`` runs them.

The numbers printed (K, tau, batch and chunk sizes, ...) come from ``comalite.config``'s defaults or the
``config`` passed, so the pictures change with the code. ``save_diagrams(folder)`` writes all five as PNGs;
``python -m comalite.viz.diagrams docs/figures`` refreshes the committed ones. Torch loads only when a
diagram that computes something is drawn.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..config import Config
from ..pooling import POOLINGS
from ..records import META_TASKS
from ..roles import ANSWER, COMPRESS, CONTEXT, PAD, QUESTION
from .attention_mask import role_segments
from .diagram_parts import GRADCACHE_STEPS, arrow, box, canvas
from .style import DIAGONAL_COLOUR, MASK_ALLOWED_COLOUR, MASK_BLOCKED_COLOUR, ROLE_COLOURS, save

MASK_CARTOON_SEGMENTS = (
    ("text prefix", CONTEXT, 2),          # <|im_start|>user\n
    ("image", CONTEXT, 4),                # <|vision_start|> image tokens <|vision_end|>
    ("prompt", CONTEXT, 2),               # "Summarize above image in a few words."
    ("compression tokens", COMPRESS, 3),  # <|cmp_0|> .. <|cmp_K-1|>
    ("question", QUESTION, 2),
    ("answer", ANSWER, 2),
)
"""The cartoon's stage-1 sequence, in ``comalite.sequence``'s order: (name, role, positions)."""

SEGMENT_COLOURS = {"text prefix": ROLE_COLOURS["text"], "image": ROLE_COLOURS["image"],
                   "prompt": ROLE_COLOURS["prompt"], "compression tokens": ROLE_COLOURS["compress"],
                   "question": ROLE_COLOURS["question"], "answer": ROLE_COLOURS["answer"],
                   "pad": ROLE_COLOURS["pad"], "instruction": ROLE_COLOURS["instruction"]}

POOLING_LAYOUT = (("pad", PAD, 1), ("instruction", CONTEXT, 2), ("image", CONTEXT, 4),
                  ("compression tokens", COMPRESS, 4))
"""The stage-2 input drawn by ``draw_pooling`` (left padded, the K compression tokens last, as in the card)."""


def _roles_of(segments) -> list[int]:
    return [role for _, role, count in segments for _ in range(count)]


def _names_of(segments) -> list[str]:
    return [name for name, _, count in segments for _ in range(count)]


def mask_cartoon_grid(segments=MASK_CARTOON_SEGMENTS) -> np.ndarray:
    """The (L, L) boolean stage-1 mask of ``segments``, made by ``comalite.mask.attention_allowed`` itself."""
    import torch

    from ..mask import attention_allowed

    roles = torch.tensor([_roles_of(segments)])
    return attention_allowed(roles, torch.ones_like(roles)).numpy()[0]


# -------------------------------------------------------------------------------------- recipe overview


def draw_recipe_overview(config: Config | None = None, *, ax=None) -> Figure:
    """The whole recipe in four boxes: stage 0, stage 1, stage 2 and evaluation, with ``config``'s settings."""
    cfg = config or Config()
    m, s1, s2 = cfg.model, cfg.stage1, cfg.stage2
    fig, ax = canvas(ax, (14, 4.2), 28, 8.4)
    ax.text(14, 8.3, "The CoMa recipe: compress, then match", ha="center", va="top", fontsize=13, weight="bold")
    width, gap, bottom, height = 5.6, 1.6, 2.2, 4.9
    stages = [
        ("Stage 0:\na VLM that answers",
         "tiny world only: a tiny Qwen2-VL\ntrained to answer questions\nabout ShapesWorld scenes\n\n"
         "real path: a pre-trained\nQwen2-VL, used as it is", "#eeeeee", "--"),
        ("Stage 1:\ncompression pre-training",
         f"image → K = {m.n_compress} compression\ntokens → question/answer text\n"
         f"answers reach the image only\nthrough the K tokens (the mask)\nnext-token loss on the {s1.supervise}\n"
         f"LoRA (r = {m.lora_r}) on a 4-bit ({m.quantization})\nbackbone", ROLE_COLOURS["compress"] + "55", "-"),
        ("Stage 2:\ncontrastive tuning",
         f"the K compression tokens'\nlast hidden states, pooled\n({s2.pooling}) → one embedding\n"
         f"InfoNCE, in-batch negatives\nτ = {s2.temperature}, batches of {s2.train.batch_size} pairs\n"
         f"(GradCache, chunks of {s2.chunk_size})", ROLE_COLOURS["question"] + "55", "-"),
        ("Evaluation:\nMMEB subsets",
         f"datasets by meta-task:\n{', '.join(META_TASKS[:2])},\n{', '.join(META_TASKS[2:])}\n"
         "rank each query's candidates\nby cosine similarity\nscore: Precision@1", ROLE_COLOURS["image"] + "55", "-"),
    ]
    lefts = [0.1 + i * (width + gap) for i in range(len(stages))]
    for left, (title, body, colour, line) in zip(lefts, stages):
        box(ax, left, bottom, width, height, title, body, colour, linestyle=line)
    handed_over = ["the\nbackbone", "LoRA +\nK token\nrows", "the\nembedder"]
    for left, label in zip(lefts[1:], handed_over):
        arrow(ax, (left - gap, bottom + height / 2), (left, bottom + height / 2))
        ax.text(left - gap / 2, bottom + height / 2 + 0.2, label, ha="center", va="bottom", fontsize=7.5)
    # The contrastive-only baseline skips stage 1: stage 2 starts from the backbone itself.
    ax.annotate("", xy=(lefts[2] + width / 2, bottom), xytext=(lefts[0] + width / 2, bottom),
                arrowprops=dict(arrowstyle="-|>", color="#777777", ls="--", connectionstyle="arc3,rad=0.15"))
    ax.text(lefts[1] + width / 2, 0.6, "contrastive-only baseline (stage2.init = backbone): no stage 1",
            ha="center", va="center", fontsize=8, color="#555555")
    return fig


# ----------------------------------------------------------------------------------------- mask cartoon


def draw_mask_cartoon(segments=MASK_CARTOON_SEGMENTS, *, ax=None) -> Figure:
    """The stage-1 mask of a tiny sequence: row i may attend to column j where the cell is dark.

    The grid is ``comalite.mask.attention_allowed`` on the roles of ``segments`` (name, role, positions).
    """
    allowed = mask_cartoon_grid(segments)
    length = allowed.shape[0]
    fig, ax = canvas(ax, (8.6, 7.2), None, None)
    ax.imshow(allowed.astype(np.uint8), cmap=ListedColormap([MASK_BLOCKED_COLOUR, MASK_ALLOWED_COLOUR]),
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlim(-4.6, length + 7.5)
    ax.set_ylim(length - 0.5, -6.2)
    ax.set_aspect("equal")
    names = _names_of(segments)
    for name, start, stop in role_segments(names):
        colour = SEGMENT_COLOURS.get(name, "#cccccc")
        ax.add_patch(Rectangle((start - 0.5, -1.6), stop - start, 0.9, fc=colour, ec="white"))
        ax.add_patch(Rectangle((-1.6, start - 0.5), 0.9, stop - start, fc=colour, ec="white"))
        ax.text((start + stop - 1) / 2, -1.8, name, ha="left", va="bottom", rotation=40, fontsize=9)
        ax.text(-1.8, (start + stop - 1) / 2, name, ha="right", va="center", fontsize=9)
        if start:
            ax.plot([start - 0.5] * 2, [-0.5, length - 0.5], color="#888888", lw=0.6)
            ax.plot([-0.5, length - 0.5], [start - 0.5] * 2, color="#888888", lw=0.6)
    # Frame the block the compression mask adds: question/answer rows x context (text, image, prompt) columns.
    roles = np.array(_roles_of(segments))
    rows = np.flatnonzero(np.isin(roles, (QUESTION, ANSWER)))
    columns = np.flatnonzero(roles == CONTEXT)
    if rows.size and columns.size:
        ax.add_patch(Rectangle((columns[0] - 0.5, rows[0] - 0.5), columns[-1] - columns[0] + 1,
                               rows[-1] - rows[0] + 1, fill=False, ec=DIAGONAL_COLOUR, lw=2))
        ax.text(length + 0.2, rows[0] - 0.5,
                "blocked: question and answer\nrows never see the image\n(nor the text around it):\n"
                "they read it only through\nthe compression tokens", fontsize=9, va="top", color=DIAGONAL_COLOUR)
    ax.text(length + 0.2, -0.5, "dark: row i may\nattend to column j\n(causal: j ≤ i)", fontsize=9, va="top")
    ax.text(-10.0, (length - 1) / 2, "attending position i (query)", ha="center", va="center", rotation=90,
            fontsize=9)
    ax.text(length / 2 - 0.5, length + 0.6, "attended position j (key)", ha="center", va="top", fontsize=9)
    ax.set_title("Stage-1 attention mask, as comalite.mask.attention_allowed computes it", fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------- pooling


def pooling_weights(name: str, layout=POOLING_LAYOUT) -> np.ndarray:
    """How much each position of ``layout`` counts in the pooled vector of the registered pooling ``name``.

    Position j's hidden state is the j-th unit vector, so the pooled vector's j-th entry is j's weight.
    """
    import torch

    roles = torch.tensor([_roles_of(layout)])
    hidden = torch.eye(roles.shape[1])[None]
    return POOLINGS[name].pool(hidden, roles)[0].numpy()


def draw_pooling(config: Config | None = None, *, ax=None) -> Figure:
    """The stage-2 input (left padded, K compression tokens last) and each registered pooling's arrows."""
    cfg = config or Config()
    names = _names_of(POOLING_LAYOUT)
    length, n_drawn = len(names), sum(count for _, role, count in POOLING_LAYOUT if role == COMPRESS)
    fig, ax = canvas(ax, (11, 6.2), length + 6, 12.4)
    ax.text(0, 12.2, "Stage 2: the compression tokens' hidden states become one embedding", fontsize=12,
            weight="bold", va="top")
    for j, name in enumerate(names):
        colour = SEGMENT_COLOURS[name]
        ax.add_patch(Rectangle((j + 0.1, 0.9), 0.8, 0.8, fc=colour, ec="#555555"))
        ax.add_patch(Rectangle((j + 0.1, 4.0), 0.8, 0.8, fc=colour, ec="#555555", alpha=0.6))
        ax.text(j + 0.5, 4.4, f"h{j + 1}", ha="center", va="center", fontsize=8)
        arrow(ax, (j + 0.5, 1.7), (j + 0.5, 2.3))
        arrow(ax, (j + 0.5, 3.4), (j + 0.5, 4.0))
    for name, start, stop in role_segments(names):
        ax.text((start + stop) / 2, 0.75, name, ha="center", va="top", fontsize=8.5)
    ax.text(length + 0.2, 1.3, f"tokens (K = {n_drawn} drawn;\nmodel.n_compress = {cfg.model.n_compress})",
            fontsize=8.5, va="center")
    box(ax, 0.1, 2.3, length - 0.2, 1.1, "Qwen2-VL + LoRA, causal attention", "", "#f4f4f4")
    ax.text(length + 0.2, 2.85, "the K tokens come last:\neach sees the whole input", fontsize=8.5, va="center")
    ax.text(length + 0.2, 4.4, "last hidden states", fontsize=8.5, va="center")
    # One box per registered pooling, each fed by the positions its own function weighs.
    poolings = list(POOLINGS)
    box_width = (length + 5.5) / len(poolings) - 0.4
    for i, name in enumerate(poolings):
        weights, left = pooling_weights(name), 0.2 + i * (box_width + 0.4)
        chosen = " (stage2.pooling)" if name == cfg.stage2.pooling else ""
        method = POOLINGS[name]
        box(ax, left, 6.6, box_width, 2.2, f'"{name}"{chosen}', f"{method.snippet}\n{method.words}", fontsize=8)
        used = np.flatnonzero(weights)
        each = " each" if used.size > 1 else ""
        for j in used:  # the arrows fan in to the box's middle; the first one carries the weight
            arrow(ax, (j + 0.5, 4.8), (left + box_width / 2 + (j - length + n_drawn / 2) * 0.25, 6.6),
                  colour=f"C{i}", label=f"weight {weights[j]:.3g}{each}" if j == used[0] else None)
        arrow(ax, (left + box_width / 2, 8.8), ((length + 6) / 2, 9.6), colour=f"C{i}")
    box(ax, (length + 6) / 2 - 4.5, 9.6, 9, 1.3, "one embedding vector (D numbers), L2-normalised",
        "so a dot product is the cosine similarity", ROLE_COLOURS["compress"] + "44")
    return fig


# --------------------------------------------------------------------------------------------- InfoNCE


def draw_infonce(batch_size: int = 5, config: Config | None = None, *, seed: int = 0, ax=None) -> Figure:
    """A B x B matrix of query-target cosines (diagonal = positive pairs) and its InfoNCE, row by row.

    Seeded toy embeddings; the logits and the loss come from ``comalite.loss`` with ``stage2.temperature``.
    """
    import torch
    import torch.nn.functional as F

    from ..loss import InfoNCELoss, similarity_logits

    tau = (config or Config()).stage2.temperature
    generator = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(batch_size, 16, generator=generator), dim=-1)
    # Each target is its query moved a fixed distance in a random direction: related, never identical.
    noise = F.normalize(torch.randn(batch_size, 16, generator=generator), dim=-1)
    target = F.normalize(query + 1.3 * noise, dim=-1)
    logits = similarity_logits(query, target, temperature=tau)
    row_losses = F.cross_entropy(logits, torch.arange(batch_size), reduction="none").numpy()
    row_losses = np.maximum(row_losses, 0.0) + 0.0  # no "-0.00" from rounding
    loss = InfoNCELoss(temperature=tau)(query, target).item()
    cosine = (logits * tau).numpy()
    fig, ax = canvas(ax, (9.5, 6.6), None, None)
    ax.imshow(cosine, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    for (i, j), value in np.ndenumerate(cosine):
        # viridis is dark at the low end, so low cells get white text.
        ax.text(j, i, f"{value:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=9,
                color="white" if value < 0.3 else "black")
    for i in range(batch_size):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec=DIAGONAL_COLOUR, lw=2))
        ax.text(batch_size - 0.3, i, f"row {i + 1}: p(own target) = {np.exp(-row_losses[i]):.2f},"
                f" loss {row_losses[i]:.2f}", va="center", fontsize=9)
        ax.text(-0.6, i, f"query {i + 1}", ha="right", va="center", fontsize=9)
        ax.text(i, -0.6, f"target {i + 1}", ha="left", va="bottom", rotation=40, fontsize=9)
    ax.set_xlim(-2.3, batch_size + 4.6)
    ax.set_ylim(batch_size + 2.8, -2.0)
    formula = r"$\mathcal{L} = -\frac{1}{B}\sum_{i}\ \log\ \frac{\exp(s_{ii}/\tau)}{\sum_{j}\ \exp(s_{ij}/\tau)}$"
    ax.text(-2.2, batch_size + 0.1, formula, fontsize=15, va="top")
    ax.text(-2.2, batch_size + 1.6,
            f"s = cosine similarity, τ = {tau} (stage2.temperature), B = {batch_size}: "
            f"this batch's loss = {loss:.3f}\n"
            "red frames: the positive pairs; every other target in a row is a negative.\n"
            "Each row is a softmax cross-entropy over its B targets.", fontsize=9, va="top", linespacing=1.5)
    ax.set_title("InfoNCE: each query picks its own target among the batch's", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------- GradCache


def draw_gradcache(config: Config | None = None, *, ax=None) -> Figure:
    """GradCache's steps as ``comalite.gradcache.gradcache_step`` runs them, and what it keeps in memory."""
    s2 = (config or Config()).stage2
    n_chunks = -(-s2.train.batch_size // s2.chunk_size)
    fig, ax = canvas(ax, (13.5, 4.9), 27, 9.8)
    ax.text(13.5, 9.7, f"GradCache: a batch of {s2.train.batch_size} pairs, encoded {s2.chunk_size} at a time "
            f"({n_chunks} chunks a side), exact full-batch gradients", ha="center", va="top", fontsize=12,
            weight="bold")
    width, bottom, height = 6.0, 3.4, 5.0
    lefts = [0.3 + i * (width + 0.9) for i in range(len(GRADCACHE_STEPS))]
    # The two encoder passes share a colour; the loss and the result stand apart.
    colours = ("#f4f4f4", ROLE_COLOURS["compress"] + "33", "#f4f4f4", "#ffffff")
    for i, (left, (title, body, _), colour) in enumerate(zip(lefts, GRADCACHE_STEPS, colours)):
        box(ax, left, bottom, width, height, f"{i + 1}. {title}", body, colour)
        if i:
            arrow(ax, (left - 0.9, bottom + height / 2), (left, bottom + height / 2))
    # The memory point: pass 1 keeps no activations, pass 2 holds one chunk's at a time.
    for step, held in ((0, None), (2, 1)):
        for c in range(6):
            x = lefts[step] + 0.4 + c * 0.9
            ax.add_patch(Rectangle((x, bottom + 0.3), 0.7, 0.5, ec="#555555",
                                   fc=MASK_ALLOWED_COLOUR if c == held else MASK_BLOCKED_COLOUR))
    ax.text(lefts[0] + width / 2, bottom + 1.0, "chunks: no activations kept", ha="center", fontsize=8)
    ax.text(lefts[2] + width / 2, bottom + 1.0, "the dark chunk holds its activations", ha="center", fontsize=8)
    box(ax, 0.3, 0.2, 26.4, 2.4, "Memory: one chunk's activations at a time, plus the B × D embeddings",
        "the price: a second forward per chunk.  Not gradient accumulation: every query still meets all B targets "
        "(accumulation_step\nwould give each chunk its own loss and shrink the negatives to its chunk)",
        ROLE_COLOURS["instruction"] + "88")
    return fig


# ------------------------------------------------------------------------------------------------ save

DIAGRAMS: dict[str, Callable[..., Figure]] = {
    "recipe_overview": draw_recipe_overview,
    "mask_cartoon": draw_mask_cartoon,
    "pooling": draw_pooling,
    "infonce": draw_infonce,
    "gradcache": draw_gradcache,
}
"""File name (without ``.png``) -> the function that draws it with the defaults."""


def save_diagrams(folder: str | Path) -> list[Path]:
    """Draw every diagram with the defaults and write ``<folder>/<name>.png``; return the paths in order.

    Saved as every figure of :mod:`comalite.viz` is (``style.save``): the PNG's only metadata is matplotlib's
    version, no time stamp, so the same code and the same matplotlib write the same bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DIAGRAMS.items():
        fig = draw()
        path = folder / f"{name}.png"
        save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m comalite.viz.diagrams", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write the PNGs (the committed ones: docs/figures)")
    for path in save_diagrams(parser.parse_args(argv).folder):
        print(path)


if __name__ == "__main__":
    main()
