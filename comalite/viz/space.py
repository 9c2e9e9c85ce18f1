"""Embedding spaces in 2-D: a projection (PCA or UMAP) and a scatter of the same items per model."""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .style import MODALITY_MARKERS, save


def _ordered_unique(values: Sequence[Hashable]) -> list[Hashable]:
    """Distinct values, sorted when they can be (so class 2 comes before 10), else in order of appearance."""
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:
        return unique


def _category_colours(categories: Sequence[Hashable]) -> dict[Hashable, str]:
    """One colour per category: tab10/tab20 while they suffice, else evenly spaced along ``turbo``."""
    n = len(categories)
    if n <= 10:
        palette = matplotlib.colormaps["tab10"].colors[:n]
    elif n <= 20:
        palette = matplotlib.colormaps["tab20"].colors[:n]
    else:
        palette = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return {category: to_hex(colour) for category, colour in zip(categories, palette)}


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal-component scores, with a sign rule so reruns give the same picture."""
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(x), 2))
    n_comp = min(2, len(s))
    coords[:, :n_comp] = u[:, :n_comp] * s[:n_comp]
    # An SVD component's sign is arbitrary; make the entry of largest magnitude positive.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])
    return coords * np.where(signs == 0, 1, signs)


def _umap_2d(x: np.ndarray, seed: int, n_neighbors: int) -> np.ndarray:
    """UMAP to 2-D; ``n_neighbors`` is capped below the number of points so small sets work."""
    if len(x) < 4:
        raise ValueError("UMAP needs at least 4 points; use method='pca'")
    # Imported here: umap pulls in numba, whose compilation costs seconds the PCA path never needs.
    import umap

    with warnings.catch_warnings():
        # A fixed random_state makes umap warn that it runs single-threaded; that is the point of a seed.
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=float)


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0, *, n_neighbors: int = 15) -> np.ndarray:
    """Project ``x`` (n, D) to (n, 2) with ``"pca"`` (deterministic, ``seed`` unused) or ``"umap"``."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"x must be an (n, D) matrix, got shape {arr.shape}")
    if method == "pca":
        return _pca_2d(arr)
    if method == "umap":
        return _umap_2d(arr, seed, n_neighbors)
    raise ValueError(f"unknown projection method {method!r}; use 'pca' or 'umap'")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows left as they are)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def plot_embedding_space(
    points_by_model: Mapping[str, np.ndarray],
    *,
    labels: Sequence[Hashable],
    modality: Sequence[str] | None = None,
    method: str = "pca",
    seed: int = 0,
    normalize: bool = True,
    title: str | None = None,
    save_to: str | Path | None = None,
) -> Figure:
    """Scatter the same n items as embedded by each model, one panel per model.

    Colour is the class (``labels``), marker the ``modality`` (e.g. query/target); one legend serves
    all panels. Each model is projected on its own since their spaces differ. With ``normalize`` the
    rows are L2-normalised first, so the picture reflects the cosine geometry retrieval uses.
    """
    labels = list(labels)
    n = len(labels)
    modality = ["all"] * n if modality is None else [str(m) for m in modality]
    if len(modality) != n:
        raise ValueError(f"{len(modality)} modality entries for {n} labels")
    classes = _ordered_unique(labels)
    colours = _category_colours(classes)
    markers = {m: MODALITY_MARKERS[i % len(MODALITY_MARKERS)] for i, m in enumerate(dict.fromkeys(modality))}
    modality_arr = np.array(modality)
    point_colours = np.array([colours[label] for label in labels])
    axis_name = {"pca": "PC", "umap": "UMAP-"}.get(method, method)

    panels = len(points_by_model)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], points_by_model.items()):
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or len(points) != n:
            raise ValueError(f"{name}: expected ({n}, D) points, got shape {points.shape}")
        xy = project_2d(_unit_rows(points) if normalize else points, method, seed)
        # A scatter call has a single marker, so draw each modality separately.
        for mod, marker in markers.items():
            sel = modality_arr == mod
            ax.scatter(xy[sel, 0], xy[sel, 1], c=point_colours[sel], marker=marker, s=30,
                       edgecolors="white", linewidths=0.4, alpha=0.9)
        ax.set_title(name)
        ax.set_xlabel(f"{axis_name}1")
        ax.set_ylabel(f"{axis_name}2")
        ax.set_xticks([])
        ax.set_yticks([])

    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=str(c)) for c in classes]
    if len(markers) > 1:
        handles += [Line2D([], [], ls="", marker=mk, color="#555555", label=m) for m, mk in markers.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               ncols=1 + len(handles) // 16)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, save_to)
    return fig
