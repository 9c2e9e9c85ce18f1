"""The stage-1 attention mask with its segments (image, prompt, compress, ...) as coloured bands."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from mpl_toolkits.axes_grid1 import make_axes_locatable

from .style import EXTRA_COLOURS, MASK_ALLOWED_COLOUR, MASK_BLOCKED_COLOUR, ROLE_COLOURS, save

Role = TypeVar("Role")


def role_segments(roles: Iterable[Role]) -> list[tuple[Role, int, int]]:
    """Split per-position roles into runs of equal roles, as ``(role, start, stop)`` with ``stop`` exclusive.

    ``role_segments(["image", "image", "prompt", "compress"])`` is
    ``[("image", 0, 2), ("prompt", 2, 3), ("compress", 3, 4)]``: ``tokens[start:stop]`` is one segment.
    The runs cover every position in order, and a role that comes back later starts a new run. Roles
    may be names or ids (the values are returned as given); no roles give no runs.
    """
    roles = list(roles)
    segments: list[tuple[Role, int, int]] = []
    start = 0
    for pos in range(1, len(roles) + 1):
        if pos == len(roles) or roles[pos] != roles[start]:
            segments.append((roles[start], start, pos))
            start = pos
    return segments


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
    """Check ``mask`` is a square 0/1 (or boolean) matrix and return it as booleans (True = may attend)."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"mask must be a square (L, L) matrix, got shape {arr.shape}")
    # An additive mask (0 = allowed, -inf = blocked) would silently come out inverted, so refuse it.
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(
            "mask must hold 0/1 or booleans (1 = may attend); for an additive mask pass `mask == 0`"
        )
    return arr.astype(bool)


def _role_colours(segments: list[tuple[str, int, int]]) -> dict[str, str]:
    """Colour of each role, in order of first appearance (which is also the legend order)."""
    colours: dict[str, str] = {}
    extra = itertools.cycle(EXTRA_COLOURS)
    for role, _, _ in segments:
        if role not in colours:
            colours[role] = ROLE_COLOURS.get(role) or next(extra)
    return colours


def _draw_role_bands(ax, segments: list[tuple[str, int, int]], colours: dict[str, str]):
    """Add coloured segment bands above and left of the mask; return the top band (it carries the title)."""
    divider = make_axes_locatable(ax)
    top = divider.append_axes("top", size="5%", pad=0.05, sharex=ax)
    left = divider.append_axes("left", size="5%", pad=0.05, sharey=ax)
    top.set_label("roles-top")
    left.set_label("roles-left")
    length = segments[-1][2]
    for role, start, stop in segments:
        style = {"facecolor": colours[role], "edgecolor": "white", "lw": 0.5}
        top.add_patch(Rectangle((start - 0.5, 0), stop - start, 1, **style))
        left.add_patch(Rectangle((0, start - 0.5), 1, stop - start, **style))
        # Name a segment in place when its name fits (about 80 characters span the band at this size);
        # narrow ones (short turns, pads) rely on the legend.
        if stop - start >= (len(role) + 1) * length / 80:
            top.text((start + stop - 1) / 2, 0.5, role, ha="center", va="center", fontsize=8)
    top.set_ylim(0, 1)
    left.set_xlim(0, 1)
    top.tick_params(labelbottom=False, bottom=False, left=False, labelleft=False)
    left.tick_params(bottom=False, labelbottom=False)
    # The mask's own y tick labels would sit between band and mask, so the band carries them instead.
    ax.tick_params(labelleft=False)
    left.set_ylabel(ax.get_ylabel())
    ax.set_ylabel("")
    return top


def plot_attention_mask(
    mask: np.ndarray,
    roles: Sequence[str] | None = None,
    title: str = "Stage-1 attention mask",
    save_to: str | Path | None = None,
) -> Figure:
    """Draw an attention mask: row i is the attending position, column j the attended one.

    Allowed pairs are dark and blocked ones light. With ``roles`` (one name per position, e.g. "image",
    "prompt", "compress", "question", "answer", "pad") coloured bands along both axes show the segments,
    thin lines separate them, and the legend names them: in the CoMa mask the question/answer rows are
    light under the image and prompt columns, so the answers reach the image only through the
    compression tokens.
    """
    allowed = _as_binary_mask(mask)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.set_label("mask")
    ax.imshow(
        allowed.astype(np.uint8),
        cmap=ListedColormap([MASK_BLOCKED_COLOUR, MASK_ALLOWED_COLOUR]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xlabel("attended position j (key)")
    ax.set_ylabel("attending position i (query)")
    handles = [
        Patch(facecolor=MASK_ALLOWED_COLOUR, label="allowed: i sees j"),
        Patch(facecolor=MASK_BLOCKED_COLOUR, edgecolor="#999999", label="blocked"),
    ]
    title_ax = ax
    if roles is not None:
        if len(roles) != allowed.shape[0]:
            raise ValueError(f"roles names {len(roles)} positions but the mask has {allowed.shape[0]}")
        segments = [(str(role), start, stop) for role, start, stop in role_segments(roles)]
        colours = _role_colours(segments)
        for _, start, _ in segments[1:]:
            ax.axhline(start - 0.5, color="#888888", lw=0.6)
            ax.axvline(start - 0.5, color="#888888", lw=0.6)
        title_ax = _draw_role_bands(ax, segments, colours)
        handles += [Patch(facecolor=colour, label=role) for role, colour in colours.items()]
    title_ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    save(fig, save_to)
    return fig
