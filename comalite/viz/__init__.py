"""Pictures for the lessons: the stage-1 attention mask, training curves, similarity matrices, embedding
spaces, retrieval galleries, benchmark bars, paired differences over seeds, cosine histograms, the
experiment's budget curve and an interactive neighbour explorer.

Every plotting function takes plain numpy arrays or lists (never a model object), returns the matplotlib
``Figure`` and, given ``save_to``, also writes it to that file (a PNG unless the suffix names another
format), so a notebook both shows the plot and keeps a copy next to the run's other outputs.

The figures are made with ``pyplot``, so a notebook shows them at the end of the cell; end the call with
``;`` (or assign the result) to avoid a second copy from the cell's return value.

What is where (import everything from ``comalite.viz`` itself):

- ``style``: the save resolution ``SAVE_DPI``, the colours and markers, and saving a figure.
- ``attention_mask``: :func:`plot_attention_mask` and :func:`role_segments` (runs of equal roles).
- ``figures``: :func:`plot_loss_curves` with :func:`ema_smooth`, :func:`plot_similarity_matrix`,
  :func:`plot_results_bars` (error bars from :func:`binomial_interval`, the Wilson interval, and each
  model's floor as a tick over its own bar).
- ``compare``: :func:`plot_paired_differences` (a forest plot of per-seed paired differences with their
  95 % t-intervals) and :func:`plot_cosine_histogram` (own-target against other-candidate cosines).
- ``space``: :func:`project_2d` (PCA or UMAP) and :func:`plot_embedding_space`.
- ``gallery``: :func:`plot_query_candidates`, :func:`plot_answer_cards` (a model's answers under each image),
  :func:`top_k`, :func:`plot_retrieval_gallery`, :func:`plot_search_results` and :func:`neighbour_explorer`.
- ``sliders``: :func:`slider` (a widget that redraws a picture as one setting moves) and :func:`strip` (the
  same picture for a few values side by side, its static copy), with the pictures the lessons move:
  :func:`draw_softmax_rows` (InfoNCE's probabilities at a temperature, from :func:`softmax_rows`),
  :func:`draw_token_grid` (an image at a pixel budget, one cell per LLM token) and :func:`draw_toy_scores`.
- ``budget``: :func:`plot_budget_curve` (the miniature experiment's Precision@1 against stage-2 steps).
- ``diagrams``: pictures of the ideas drawn from the code itself: :func:`draw_recipe_overview`,
  :func:`draw_mask_cartoon`, :func:`draw_pooling`, :func:`draw_infonce`, :func:`draw_gradcache`, and
  :func:`save_diagrams` (all five as PNGs; ``python -m comalite.viz.diagrams docs/figures``).
"""
import importlib

from .attention_mask import plot_attention_mask, role_segments
from .budget import plot_budget_curve
from .compare import plot_cosine_histogram, plot_paired_differences
from .figures import binomial_interval, ema_smooth, plot_loss_curves, plot_results_bars, plot_similarity_matrix
from .gallery import (
    neighbour_explorer,
    plot_answer_cards,
    plot_query_candidates,
    plot_retrieval_gallery,
    plot_search_results,
    top_k,
)
from .sliders import draw_softmax_rows, draw_token_grid, draw_toy_scores, slider, softmax_rows, strip
from .space import plot_embedding_space, project_2d
from .style import (
    CORRECT_COLOUR,
    DIAGONAL_COLOUR,
    EXTRA_COLOURS,
    MASK_ALLOWED_COLOUR,
    MASK_BLOCKED_COLOUR,
    MODALITY_MARKERS,
    ROLE_COLOURS,
    SAVE_DPI,
    WRONG_COLOUR,
)

# The diagrams load on first use: ``python -m comalite.viz.diagrams`` would otherwise find the module already
# imported by this package (runpy warns), and ``import comalite.viz`` does not pay for the settings they read.
_LAZY = {name: "comalite.viz.diagrams" for name in (
    "draw_gradcache", "draw_infonce", "draw_mask_cartoon", "draw_pooling", "draw_recipe_overview", "save_diagrams")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'comalite.viz' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "CORRECT_COLOUR",
    "DIAGONAL_COLOUR",
    "EXTRA_COLOURS",
    "MASK_ALLOWED_COLOUR",
    "MASK_BLOCKED_COLOUR",
    "MODALITY_MARKERS",
    "ROLE_COLOURS",
    "SAVE_DPI",
    "WRONG_COLOUR",
    "binomial_interval",
    "draw_gradcache",
    "draw_infonce",
    "draw_mask_cartoon",
    "draw_pooling",
    "draw_recipe_overview",
    "draw_softmax_rows",
    "draw_token_grid",
    "draw_toy_scores",
    "ema_smooth",
    "neighbour_explorer",
    "plot_answer_cards",
    "plot_attention_mask",
    "plot_budget_curve",
    "plot_cosine_histogram",
    "plot_embedding_space",
    "plot_loss_curves",
    "plot_paired_differences",
    "plot_query_candidates",
    "plot_results_bars",
    "plot_retrieval_gallery",
    "plot_search_results",
    "plot_similarity_matrix",
    "project_2d",
    "role_segments",
    "save_diagrams",
    "slider",
    "softmax_rows",
    "strip",
    "top_k",
]
