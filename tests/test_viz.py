"""Tests for comalite.viz: each plot's content (data, colours, marks, labels) and its saved PNG."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import same_color, to_rgb
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.patches import Rectangle
from PIL import Image

from comalite import viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    """Close every figure a test made, so pyplot does not pile them up across tests."""
    yield
    plt.close("all")


def assert_png(path) -> None:
    """``path`` is a non-empty, readable PNG picture of a sensible size."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100


def axes_by_label(fig, label):
    """The one axes of ``fig`` whose label is ``label``."""
    (ax,) = [ax for ax in fig.axes if ax.get_label() == label]
    return ax


def legend_texts(legend) -> list[str]:
    """The entry texts of a legend."""
    return [text.get_text() for text in legend.get_texts()]


def luminance(colour) -> float:
    """Perceived brightness of a colour in [0, 1]."""
    r, g, b = to_rgb(colour)
    return 0.299 * r + 0.587 * g + 0.114 * b


# ------------------------------------------------------------------------------------------------ top_k


def test_top_k_orders_by_score_and_breaks_ties_by_lower_index():
    indices, values = viz.top_k([0.5, 0.9, 0.5, 0.9, np.nan, 0.1], 4)
    assert indices.tolist() == [1, 3, 0, 2]
    assert values.tolist() == [0.9, 0.9, 0.5, 0.5]


def test_top_k_ranks_nan_last_and_caps_k():
    indices, _ = viz.top_k(np.array([np.nan, 0.2, 0.3]), 10)
    assert indices.tolist() == [2, 1, 0]
    assert viz.top_k([0.1, 0.2], 0)[0].size == 0
    with pytest.raises(ValueError):
        viz.top_k(np.zeros((2, 2)), 1)


# ---------------------------------------------------------------------------------------- attention mask


def coma_mask_and_roles():
    """A small CoMa stage-1 mask: causal, but question/answer rows blind to the image and prompt."""
    lengths = {"image": 8, "prompt": 3, "compress": 4, "question": 3, "answer": 4, "pad": 2}
    roles = [role for role, n in lengths.items() for _ in range(n)]
    mask = np.tril(np.ones((len(roles), len(roles)), dtype=int))
    qa = np.isin(roles, ["question", "answer"])
    context = np.isin(roles, ["image", "prompt"])
    mask[np.ix_(qa, context)] = 0
    return mask, roles


def test_attention_mask_draws_mask_bands_and_legend(tmp_path):
    mask, roles = coma_mask_and_roles()
    out = tmp_path / "figs" / "mask.png"
    fig = viz.plot_attention_mask(mask, roles, title="CoMa mask", save_to=out)
    assert_png(out)

    ax = axes_by_label(fig, "mask")
    (image,) = ax.images
    np.testing.assert_array_equal(np.asarray(image.get_array()), mask)
    allowed_rgba, blocked_rgba = image.cmap(image.norm(1)), image.cmap(image.norm(0))
    assert luminance(allowed_rgba) < 0.3 < 0.8 < luminance(blocked_rgba)

    # One band patch per segment along each axis, coloured by role.
    top, left = axes_by_label(fig, "roles-top"), axes_by_label(fig, "roles-left")
    segment_roles = ["image", "prompt", "compress", "question", "answer", "pad"]
    for band in (top, left):
        patches = [p for p in band.patches if isinstance(p, Rectangle)]
        assert len(patches) == len(segment_roles)
        for patch, role in zip(patches, segment_roles):
            assert same_color(patch.get_facecolor(), viz.ROLE_COLOURS[role])
    compress_patch = top.patches[2]
    assert (compress_patch.get_x(), compress_patch.get_width()) == (10.5, 4)
    assert "image" in [t.get_text() for t in top.texts]

    assert top.get_title() == "CoMa mask"
    assert legend_texts(ax.get_legend()) == ["allowed: i sees j", "blocked", *segment_roles]


def test_attention_mask_without_roles_is_just_the_mask():
    mask, _ = coma_mask_and_roles()
    fig = viz.plot_attention_mask(mask.astype(bool))
    assert [ax.get_label() for ax in fig.axes] == ["mask"]
    assert fig.axes[0].get_title() == "Stage-1 attention mask"
    assert len(legend_texts(fig.axes[0].get_legend())) == 2


def test_attention_mask_rejects_additive_masks_and_wrong_roles():
    mask, roles = coma_mask_and_roles()
    additive = np.where(mask == 1, 0.0, -np.inf)
    with pytest.raises(ValueError, match="mask == 0"):
        viz.plot_attention_mask(additive)
    with pytest.raises(ValueError, match="positions"):
        viz.plot_attention_mask(mask, roles[:-1])
    with pytest.raises(ValueError, match="square"):
        viz.plot_attention_mask(mask[:, :-1])


def test_role_segments_gives_runs_of_equal_roles_with_exclusive_stops():
    roles = ["image", "image", "prompt", "compress", "compress", "image"]
    expected = [("image", 0, 2), ("prompt", 2, 3), ("compress", 3, 5), ("image", 5, 6)]
    assert viz.role_segments(roles) == expected
    assert viz.role_segments(iter(["pad"])) == [("pad", 0, 1)]
    assert viz.role_segments([]) == []
    # Role ids work too and come back as given; the runs tile the positions in order.
    segments = viz.role_segments(np.array([2, 2, 2, 0, 1, 1]))
    assert segments == [(2, 0, 3), (0, 3, 4), (1, 4, 6)]
    assert [stop for _, _, stop in segments[:-1]] == [start for _, start, _ in segments[1:]]
    # The bands of the mask plot are these runs: compress at 11..15 in the fixture (its patch at x = 10.5).
    _, fixture_roles = coma_mask_and_roles()
    assert viz.role_segments(fixture_roles)[2] == ("compress", 11, 15)


# ------------------------------------------------------------------------------------------- loss curves


def test_ema_smooth_is_bias_corrected():
    np.testing.assert_allclose(viz.ema_smooth([2.0, 2.0, 2.0], 0.9), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(viz.ema_smooth([1.0, 0.0], 0.5), [1.0, 1 / 3])
    with pytest.raises(ValueError):
        viz.ema_smooth([1.0], 1.0)


def test_loss_curves_plots_each_run(tmp_path):
    curves = {"stage 1": [3.0, 2.0, 1.5, 1.2], "stage 2": np.array([1.0, 0.8, 0.7])}
    out = tmp_path / "loss.png"
    fig = viz.plot_loss_curves(curves, xlabel="epoch", title="training", save_to=out)
    assert_png(out)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("epoch", "loss", "training")
    assert [line.get_ydata().tolist() for line in ax.lines] == [[3.0, 2.0, 1.5, 1.2], [1.0, 0.8, 0.7]]
    assert legend_texts(ax.get_legend()) == ["stage 1", "stage 2"]


def test_loss_curves_on_log_steps_count_from_one():
    fig = viz.plot_loss_curves({"short": [3.0, 2.0], "long": [3.0, 2.0, 1.0, 0.5]}, log_steps=True)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert [line.get_xdata().tolist() for line in ax.lines] == [[1, 2], [1, 2, 3, 4]]


def test_loss_curves_smoothing_keeps_raw_line_in_same_colour():
    fig = viz.plot_loss_curves({"run": [4.0, 1.0, 3.0, 0.5]}, smooth=0.6)
    (ax,) = fig.axes
    raw, smoothed = ax.lines
    assert raw.get_color() == smoothed.get_color()
    assert raw.get_alpha() < 1
    np.testing.assert_allclose(smoothed.get_ydata(), viz.ema_smooth([4.0, 1.0, 3.0, 0.5], 0.6))
    assert legend_texts(ax.get_legend()) == ["run"]


# ------------------------------------------------------------------------------------- similarity matrix


def test_similarity_matrix_has_colorbar_labels_and_diagonal_frames(tmp_path):
    sim = np.array([[0.9, 0.1, 0.2, 0.0], [0.3, 0.8, 0.1, 0.2], [0.2, 0.1, 0.7, 0.4]])
    out = tmp_path / "sim.png"
    fig = viz.plot_similarity_matrix(
        sim, row_labels=list("abc"), col_labels=list("wxyz"), title="S", save_to=out
    )
    assert_png(out)
    ax, colorbar_ax = fig.axes
    assert colorbar_ax.get_ylabel() == "cosine similarity"
    assert ax.get_title() == "S"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), sim)
    frames = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted(p.get_xy() for p in frames) == [(-0.5, -0.5), (0.5, 0.5), (1.5, 1.5)]
    assert "0.90" in [t.get_text() for t in ax.texts] and len(ax.texts) == sim.size


def test_similarity_matrix_large_unmarked_has_no_annotations():
    fig = viz.plot_similarity_matrix(np.eye(16), mark_diagonal=False, vmin=-1, vmax=1)
    ax = fig.axes[0]
    assert not ax.patches and not ax.texts
    assert ax.images[0].get_clim() == (-1, 1)
    with pytest.raises(ValueError, match="row labels"):
        viz.plot_similarity_matrix(np.eye(2), row_labels=["only one"])


def test_similarity_matrices_side_by_side_share_a_colour_scale():
    before = np.array([[0.2, 0.3], [0.3, 0.4]])
    after = np.array([[0.9, 0.1], [0.1, 0.8]])
    # By default each matrix spans its own range, so the same colour means different cosines.
    assert viz.plot_similarity_matrix(before).axes[0].images[0].get_clim() == (0.2, 0.4)
    shared = [viz.plot_similarity_matrix(m, vmin=0.0, vmax=1.0).axes[0].images[0] for m in (before, after)]
    assert [image.get_clim() for image in shared] == [(0.0, 1.0), (0.0, 1.0)]
    # The shared scale reaches the colours: 0.4 is in the dark lower half of [0, 1], not the top of [0.2, 0.4].
    assert shared[0].norm(0.4) == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------- projections


def test_project_2d_pca_finds_the_main_direction_deterministically():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    xy = viz.project_2d(x)
    assert xy.shape == (50, 2)
    np.testing.assert_allclose(viz.project_2d(x), xy)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.95
    # The sign rule: in each column the entry of largest magnitude is positive.
    assert (xy[np.abs(xy).argmax(axis=0), [0, 1]] > 0).all()


def test_project_2d_pads_one_dimensional_input_and_rejects_unknown_method():
    xy = viz.project_2d(np.arange(6.0).reshape(6, 1))
    assert xy.shape == (6, 2) and np.all(xy[:, 1] == 0)
    with pytest.raises(ValueError, match="unknown"):
        viz.project_2d(np.zeros((4, 3)), method="tsne")
    with pytest.raises(ValueError, match="at least 4"):
        viz.project_2d(np.zeros((3, 3)), method="umap")


def test_project_2d_umap_small_and_seeded():
    # Compiling UMAP's numba code costs 9-16 s per process, while 20 points run interpreted in about a
    # second. A child process keeps NUMBA_DISABLE_JIT from slowing any later numba user in this session.
    code = (
        "import json, numpy as np\n"
        "from comalite.viz import project_2d\n"
        "x = np.random.default_rng(1).normal(size=(20, 6))\n"
        "runs = [project_2d(x, method='umap', seed=3, n_neighbors=5).tolist() for _ in range(2)]\n"
        "print(json.dumps(runs))\n"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "MPLBACKEND": "Agg"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    first, second = (np.array(run) for run in json.loads(child.stdout))
    assert first.shape == (20, 2) and np.isfinite(first).all()
    np.testing.assert_allclose(second, first)  # same seed, same picture


# ------------------------------------------------------------------------------------- embedding space


def test_embedding_space_one_panel_per_model_coloured_by_class(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["cat", "dog", "bird"] * 4
    modality = ["query"] * 6 + ["target"] * 6
    points = {name: rng.normal(size=(12, 8)) for name in ["base", "stage 1", "stage 2"]}
    out = tmp_path / "space.png"
    fig = viz.plot_embedding_space(points, labels=labels, modality=modality, title="spaces", save_to=out)
    assert_png(out)

    assert [ax.get_title() for ax in fig.axes] == ["base", "stage 1", "stage 2"]
    assert fig.get_suptitle() == "spaces"
    for ax in fig.axes:
        assert ax.get_xlabel() == "PC1"
        query_dots, target_dots = ax.collections  # one scatter per modality
        assert len(query_dots.get_offsets()) == len(target_dots.get_offsets()) == 6
        colours = [tuple(c) for c in query_dots.get_facecolors()]
        # Points 0 and 3 are both "cat"; cat, dog and bird differ.
        assert colours[0] == colours[3]
        assert len({colours[0], colours[1], colours[2]}) == 3
        assert query_dots.get_paths()[0] != target_dots.get_paths()[0]

    (legend,) = fig.legends
    assert legend_texts(legend) == ["bird", "cat", "dog", "query", "target"]


def test_embedding_space_without_modality_and_bad_shapes():
    labels = [0, 1, 0, 1, 2]
    fig = viz.plot_embedding_space({"m": np.eye(5)}, labels=labels, normalize=False)
    (ax,) = fig.axes
    (dots,) = ax.collections
    assert len(dots.get_offsets()) == 5
    assert legend_texts(fig.legends[0]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="expected"):
        viz.plot_embedding_space({"m": np.eye(4)}, labels=labels)


# ----------------------------------------------------------------------------------- retrieval gallery


def gallery_candidates():
    """Mixed image and text-only candidates."""
    return [
        (Image.new("RGB", (32, 32), "red"), "a red square"),
        (None, "a long text-only candidate describing a blue circle on a white background"),
        (Image.new("RGB", (40, 24), "green"), ""),
        (None, "cat"),
        (Image.new("L", (32, 32), 128), "grey"),
    ]


def test_retrieval_gallery_marks_correct_candidate(tmp_path):
    out = tmp_path / "gallery.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing ✓ glyph would warn while saving
        fig = viz.plot_retrieval_gallery(
            Image.new("RGB", (32, 32), "red"), "find the red one", gallery_candidates(),
            scores=[0.7, 0.9, 0.1, 0.3, 0.7], correct_index=0, k=3, save_to=out,
        )
    assert_png(out)
    assert [ax.get_label() for ax in fig.axes] == ["query", "candidate 1", "candidate 0", "candidate 4"]
    titles = {ax.get_label(): ax.get_title() for ax in fig.axes}
    assert titles["candidate 1"] == "#1  score 0.900"
    assert titles["candidate 0"] == "#2  score 0.700  ✓"
    assert titles["candidate 4"] == "#3  score 0.700"
    correct, wrong = axes_by_label(fig, "candidate 0"), axes_by_label(fig, "candidate 1")
    assert same_color(correct.spines["left"].get_edgecolor(), viz.CORRECT_COLOUR)
    assert not same_color(wrong.spines["left"].get_edgecolor(), viz.CORRECT_COLOUR)
    assert correct.spines["left"].get_linewidth() > wrong.spines["left"].get_linewidth()
    # The text-only candidate is a wrapped text box; image candidates show their image.
    (box,) = wrong.texts
    assert "blue circle" in box.get_text() and "\n" in box.get_text()
    assert len(correct.images) == 1 and correct.get_xlabel() == "a red square"
    assert fig.get_suptitle() == "correct candidate ranked #2 of 5"


def test_retrieval_gallery_appends_a_missed_correct_candidate():
    fig = viz.plot_retrieval_gallery(
        None, "a text query", gallery_candidates(), scores=[0.1, 0.9, 0.8, 0.2, 0.5], correct_index=0, k=2,
    )
    assert [ax.get_label() for ax in fig.axes] == ["query", "candidate 1", "candidate 2", "candidate 0"]
    assert axes_by_label(fig, "candidate 0").get_title() == "#5  score 0.100  ✓"
    assert "a text query" in axes_by_label(fig, "query").texts[0].get_text()
    with pytest.raises(ValueError, match="scores"):
        viz.plot_retrieval_gallery(None, "q", gallery_candidates(), [0.1], correct_index=0)


# ---------------------------------------------------------------------------------------- results bars


def test_results_bars_groups_models_and_draws_chance(tmp_path):
    table = {"base": {"Cls": 20.0, "VQA": 10.0, "Overall": 15.0}, "CoMa": {"Cls": 60.0, "Overall": 55.5}}
    out = tmp_path / "bars.png"
    fig = viz.plot_results_bars(table, chance={"Cls": 5.0, "Overall": 2.0}, title="MMEB", save_to=out)
    assert_png(out)
    (ax,) = fig.axes
    assert ax.get_title() == "MMEB"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Cls", "VQA", "Overall"]
    bars = ax.patches
    assert sorted(bar.get_height() for bar in bars) == [10.0, 15.0, 20.0, 55.5, 60.0]
    # Each model keeps one colour; CoMa has no VQA bar.
    base_bars = [b for b in bars if same_color(b.get_facecolor(), bars[0].get_facecolor())]
    assert len(base_bars) == 3
    assert "55.5" in [t.get_text() for t in ax.texts]

    chance_lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    levels = sorted(segment[0][1] for lines in chance_lines for segment in lines.get_segments())
    assert levels == [2.0, 5.0]
    assert legend_texts(ax.get_legend()) == ["chance", "base", "CoMa"]


def test_binomial_interval_is_wilson_by_hand():
    # 50 of 100, z = 1.96: z²/n = 0.038416, centre (0.5 + 0.019208) / 1.038416 = 0.5,
    # half 1.96 / 1.038416 * sqrt(0.0025 + 0.00009604) = 0.096170.
    low, high = viz.binomial_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.403830, abs=1e-6), pytest.approx(0.596170, abs=1e-6))
    # 0 of 10: z²/n = 0.38416, centre 0.19208 / 1.38416 = 0.138770 and half 1.96 / 1.38416 * sqrt(0.009604)
    # = 0.138770 too, so the interval starts at exactly 0 and is not empty.
    low, high = viz.binomial_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.277541, abs=1e-6)
    # Mirror image: 10 of 10 is 1 minus the interval of 0 of 10.
    assert viz.binomial_interval(1.0, 10) == pytest.approx((1 - high, 1.0))
    with pytest.raises(ValueError, match="successes_fraction"):
        viz.binomial_interval(55.0, 100)
    with pytest.raises(ValueError, match="n must"):
        viz.binomial_interval(0.5, 0)


def test_results_bars_draws_the_wilson_interval_as_error_bars():
    table = {"base": {"Cls": 20.0, "VQA": 10.0}, "CoMa": {"Cls": 60.0, "VQA": 55.5}}
    counts = {"base": {"Cls": 50, "VQA": 30}, "CoMa": {"Cls": 50}}  # CoMa's VQA has no count: no error bar
    fig = viz.plot_results_bars(table, counts=counts, scale=100)
    (ax,) = fig.axes
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    drawn = []
    for container in containers:
        _, _, (whiskers,) = container.lines
        drawn += [(float(segment[0][1]), float(segment[1][1])) for segment in whiskers.get_segments()]
    expected = [tuple(100 * v for v in viz.binomial_interval(p, n)) for p, n in [(0.2, 50), (0.1, 30), (0.6, 50)]]
    np.testing.assert_allclose(sorted(drawn), sorted(expected))
    assert drawn[0][0] < 20.0 < drawn[0][1]
    # Each value label sits on top of its whisker (or its bar where there is none), so they do not cross.
    label_heights = {t.get_text(): t.xy[1] for t in ax.texts}
    assert label_heights["20"] == pytest.approx(expected[0][1])
    assert label_heights["55.5"] == 55.5
    assert ax.get_ylim()[1] > max(high for _, high in expected)
    assert legend_texts(ax.get_legend()) == ["base", "CoMa"]  # error bars add no legend entry
    with pytest.raises(ValueError, match="scale"):
        viz.plot_results_bars(table, counts=counts)  # percentages read as fractions


def test_results_bars_draws_each_models_floor_over_its_own_bar():
    table = {"base": {"Cls": 20.0, "VQA": 10.0}, "CoMa": {"Cls": 60.0, "VQA": 55.5}}
    floors = {"base": {"Cls": 25.0, "VQA": 8.0}, "CoMa": {"Cls": 12.0}}  # CoMa's VQA has no floor: no tick
    fig = viz.plot_results_bars(table, chance={"Cls": 5.0, "VQA": 5.0}, floors=floors)
    (ax,) = fig.axes
    ticks = [c for c in ax.collections if c.get_gid() == "floor"]
    segments = [segment for collection in ticks for segment in collection.get_segments()]
    assert sorted(float(s[0][1]) for s in segments) == [8.0, 12.0, 25.0]
    # Each tick spans exactly its own model's bar (not the whole group, as the chance line does).
    bars = {(round(b.get_x(), 6), round(b.get_width(), 6)): b.get_height() for b in ax.patches}
    for (x0, _), (x1, level) in (tuple(map(tuple, s)) for s in segments):
        assert (round(x0, 6), round(x1 - x0, 6)) in bars
    spans = {float(s[0][1]): bars[(round(s[0][0], 6), round(s[1][0] - s[0][0], 6))] for s in segments}
    assert spans == {25.0: 20.0, 8.0: 10.0, 12.0: 60.0}
    # A bar below its own floor gets its value label above the tick, not crossed by it.
    assert {t.get_text(): t.xy[1] for t in ax.texts}["20"] == 25.0
    assert legend_texts(ax.get_legend()).count("floor") == 1
    assert "chance" in legend_texts(ax.get_legend())
    assert ax.get_ylim()[1] > 60.0


def test_results_bars_turns_crowded_value_labels_upright():
    rng = np.random.default_rng(0)
    crowded = {f"model {j}": {f"task {i}": round(float(rng.uniform(0.45, 0.55)), 3) for i in range(6)}
               for j in range(6)}
    fig = viz.plot_results_bars(crowded)
    (ax,) = fig.axes
    assert {t.get_rotation() for t in ax.texts} == {90.0}
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # Upright labels stay inside the axes.
    assert max(box.y1 for box in boxes) < ax.get_window_extent(renderer).y1
    # Two models leave room: the labels stay level.
    few = {name: crowded[name] for name in ["model 0", "model 1"]}
    assert {t.get_rotation() for t in viz.plot_results_bars(few).axes[0].texts} == {0.0}


# ------------------------------------------------------------------------------------- comparison plots


def test_paired_differences_forest_plot_shows_the_t_interval_and_zero(tmp_path):
    out = tmp_path / "forest.png"
    differences = {"CoMa - contrastive-only": [1.0, 2.0, 3.0, 6.0], "one run": [0.5]}
    fig = viz.plot_paired_differences(differences, reference="contrastive-only", title="seeds", save_to=out)
    assert_png(out)
    (ax,) = fig.axes
    assert ax.get_title() == "seeds"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(differences)

    # mean 3, sd sqrt(14/3); 3.182446 is the Student t 0.975 quantile for 3 degrees of freedom.
    values = np.array(differences["CoMa - contrastive-only"])
    half = 3.182446305284263 * values.std(ddof=1) / np.sqrt(values.size)
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # none for one seed
    mean_marker, _, (interval,) = container.lines
    assert (mean_marker.get_xdata()[0], mean_marker.get_ydata()[0]) == (pytest.approx(3.0), 0)
    (segment,) = interval.get_segments()
    assert [segment[0][0], segment[1][0]] == pytest.approx([3.0 - half, 3.0 + half])
    assert 3.0 - half < 0  # this interval holds zero: the seeds do not agree on the sign

    zero_lines = [line for line in ax.lines if list(line.get_xdata()) == [0, 0]]
    assert len(zero_lines) == 1
    dots = np.concatenate([collection.get_offsets()[:, 0] for collection in ax.collections
                           if not isinstance(collection, LineCollection)])
    assert sorted(dots.tolist()) == [0.5, 1.0, 2.0, 3.0, 6.0]  # every seed is drawn
    texts = [t.get_text() for t in ax.texts]
    assert f"+3 [{3 - half:+.3g}, {3 + half:+.3g}]" in texts and "+0.5 (one seed: no interval)" in texts
    assert "no difference from contrastive-only" in legend_texts(fig.legends[0])
    with pytest.raises(ValueError, match="finite"):
        viz.plot_paired_differences({"empty": []})


def test_cosine_histogram_shares_bins_and_marks_medians(tmp_path):
    own = np.linspace(0.4, 0.9, 40)
    other = np.linspace(-0.2, 0.6, 300)
    out = tmp_path / "cosines.png"
    fig = viz.plot_cosine_histogram(own, other, bins=20, title="cosines", save_to=out)
    assert_png(out)
    (ax,) = fig.axes
    other_bars, own_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    edges = np.histogram_bin_edges(np.concatenate([own, other]), bins=20)
    for bars in (own_bars, other_bars):
        assert [bar.get_x() for bar in bars] == pytest.approx(edges[:-1].tolist())
        assert sum(bar.get_height() * bar.get_width() for bar in bars) == pytest.approx(1.0)  # a density
    medians = sorted(line.get_xdata()[0] for line in ax.lines)
    assert medians == pytest.approx(sorted([np.median(own), np.median(other)]))
    assert legend_texts(ax.get_legend()) == [f"other candidates (median {np.median(other):.2f})",
                                             f"own target (median {np.median(own):.2f})"]
    own_density, _ = np.histogram(own, edges, density=True)
    other_density, _ = np.histogram(other, edges, density=True)
    overlap = np.sum(np.minimum(own_density, other_density) * np.diff(edges))
    assert 0.05 < overlap < 0.95
    assert ax.get_legend().get_title().get_text() == f"overlap {overlap:.0%}"


def test_cosine_histogram_overlap_is_zero_apart_and_full_when_equal():
    apart = viz.plot_cosine_histogram([0.7, 0.8, 0.9], [-0.1, 0.0, 0.1], bins=10)
    assert apart.axes[0].get_legend().get_title().get_text() == "overlap 0%"
    same = viz.plot_cosine_histogram([0.1, 0.5, 0.9], [0.9, 0.5, 0.1], bins=10)
    assert same.axes[0].get_legend().get_title().get_text() == "overlap 100%"
    with pytest.raises(ValueError, match="own"):
        viz.plot_cosine_histogram([], [0.1])


# ----------------------------------------------------------------------------------- neighbour explorer


def explorer_data():
    """Three queries over four candidates; query 2's best match is candidate 3, then 0 (tie with 1)."""
    sim = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.8, 0.3, 0.7], [0.4, 0.4, 0.1, 0.9]])
    return ["q-red", "q-blue", "q-green"], sim, ["red", "blue", "cyan", "green"]


def test_neighbour_explorer_updates_table_when_query_changes():
    queries, sim, candidates = explorer_data()
    box = viz.neighbour_explorer(queries, sim, candidates, k=3, targets=[0, 1, 3])
    picker, output = box.children
    assert picker.value == 0 and picker.options[2] == ("2: q-green", 2)

    def shown() -> str:
        (entry,) = output.outputs
        assert "<table>" in entry["data"]["text/html"]
        return entry["data"]["text/plain"]

    assert shown().splitlines() == ["1. red  0.900 ✓", "2. cyan  0.500", "3. green  0.200"]
    picker.value = 2
    assert shown().splitlines() == ["1. green  0.900 ✓", "2. red  0.400", "3. blue  0.400"]


def test_neighbour_explorer_uses_render_callback():
    queries, sim, candidates = explorer_data()
    calls = []

    def render(query_index, indices, scores):
        calls.append((query_index, indices.tolist(), scores.tolist()))
        fig, ax = plt.subplots()
        ax.bar(range(len(scores)), scores)
        return fig

    box = viz.neighbour_explorer(queries, sim, candidates, render=render, k=2)
    picker, output = box.children
    picker.value = 1
    assert calls == [(0, [0, 2], [0.9, 0.5]), (1, [1, 3], [0.8, 0.7])]
    (entry,) = output.outputs
    assert base64.b64decode(entry["data"]["image/png"])[:8] == PNG_SIGNATURE
    assert not plt.get_fignums()  # rendered figures are closed, not left for pyplot to show again
    with pytest.raises(ValueError, match="shape"):
        viz.neighbour_explorer(queries, sim[:2], candidates)


# ------------------------------------------------------------------------------ sliders and their pictures


def recording_draw(calls):
    def draw(value, ax):
        calls.append(value)
        ax.plot([0, value], [0, value])
    return draw


def test_slider_redraws_the_picture_for_each_value_it_is_moved_to():
    calls = []
    box = viz.slider(recording_draw(calls), [1, 2, 4], description="k", value=2, label=lambda v: f"{v} tokens")
    picker, output = box.children
    assert picker.options == (("1 tokens", 1), ("2 tokens", 2), ("4 tokens", 4))
    assert picker.value == 2 and calls == [2]
    first = output.outputs[0]["data"]["image/png"]
    picker.value = 4
    assert calls == [2, 4]
    (entry,) = output.outputs
    png = base64.b64decode(entry["data"]["image/png"])
    assert png[:8] == PNG_SIGNATURE and entry["data"]["image/png"] != first
    assert not plt.get_fignums()  # each picture is closed once shown, not left for pyplot to show again


def test_slider_refuses_a_start_outside_its_values():
    with pytest.raises(ValueError, match="not one of"):
        viz.slider(recording_draw([]), [1, 2], description="k", value=3)
    with pytest.raises(ValueError, match="at least one"):
        viz.slider(recording_draw([]), [], description="k")


def test_strip_draws_one_panel_per_value_and_saves_it(tmp_path):
    calls = []
    fig = viz.strip(recording_draw(calls), [1, 3], save_to=tmp_path / "strip.png")
    assert calls == [1, 3] and len(fig.axes) == 2
    assert [tuple(ax.lines[0].get_xdata()) for ax in fig.axes] == [(0, 1), (0, 3)]
    assert (tmp_path / "strip.png").read_bytes()[:8] == PNG_SIGNATURE


def test_softmax_rows_sharpen_as_the_temperature_falls():
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6], [0.3, 0.3, 0.3]])
    by_hand = np.exp(sim[0] / 0.5) / np.exp(sim[0] / 0.5).sum()
    np.testing.assert_allclose(viz.softmax_rows(sim, 0.5)[0], by_hand)
    np.testing.assert_allclose(viz.softmax_rows(sim, 0.01).sum(axis=1), 1.0)
    assert viz.softmax_rows(sim, 1e-4)[0].argmax() == 0 and viz.softmax_rows(sim, 1e-4)[0, 0] > 0.99  # no overflow
    np.testing.assert_allclose(viz.softmax_rows(sim, 1e4), 1 / 3, atol=1e-3)  # a hot softmax is uniform
    np.testing.assert_allclose(viz.softmax_rows(sim, 0.05)[2], 1 / 3)  # equal cosines: equal odds at any temperature


def test_draw_softmax_rows_frames_the_diagonal_and_names_the_own_target_probability():
    sim = np.array([[0.9, 0.1], [0.2, 0.8]])
    fig, ax = plt.subplots()
    viz.draw_softmax_rows(sim, 0.1, ax)
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown, viz.softmax_rows(sim, 0.1))
    frames = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [p.get_xy() for p in frames] == [(-0.5, -0.5), (0.5, 0.5)]
    own = np.diag(viz.softmax_rows(sim, 0.1)).mean()
    assert f"p(own target) {own:.2f}" in ax.get_title() and "1/B = 0.50" in ax.get_title()


def test_draw_token_grid_shows_one_cell_per_token():
    fig, ax = plt.subplots()
    viz.draw_token_grid(Image.new("RGB", (640, 480), "red"), rows=3, cols=4, ax=ax)
    assert ax.images[0].get_array().shape[:2] == (3 * 28, 4 * 28)
    vertical = [line for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]]
    assert len(vertical) == 4 + 1 and len(ax.lines) == (4 + 1) + (3 + 1)
    assert "12 tokens" in ax.get_title()


def test_draw_toy_scores_colours_the_truth_and_labels_each_cosine():
    fig, ax = plt.subplots()
    viz.draw_toy_scores([0, 60, 90], query=0, candidates=[1, 2], ax=ax, title="a hit")
    arrows = [p for p in ax.get_children() if isinstance(p, matplotlib.text.Annotation)]
    assert len(arrows) == 3  # two candidates and the query
    labels = sorted(t.get_text() for t in ax.texts if not isinstance(t, matplotlib.text.Annotation))
    assert labels == ["0.00", "0.50"]  # cos 90 and cos 60 to the query at 0 degrees
    truth = next(t for t in ax.texts if t.get_text() == "0.50")
    assert matplotlib.colors.same_color(truth.get_color(), viz.CORRECT_COLOUR)
    assert ax.get_title() == "a hit"


def test_answer_cards_put_each_answer_under_its_image_green_when_it_is_the_truth(tmp_path):
    images = [Image.new("RGB", (56, 56), colour) for colour in ("red", "blue")]
    columns = {"question": ["How many?", "What colour?"], "truth": ["two", "blue"],
               "model": ["two", "red"]}
    fig = viz.plot_answer_cards(images, columns, save_to=tmp_path / "cards.png")
    assert len(fig.axes) == 2 and (tmp_path / "cards.png").read_bytes()[:8] == PNG_SIGNATURE
    lines = {t.get_text(): t for t in fig.axes[1].texts}
    assert list(lines) == ["question: What colour?", "truth: blue", "model: red"]
    assert same_color(lines["model: red"].get_color(), viz.WRONG_COLOUR)
    assert same_color(fig.axes[0].texts[2].get_color(), viz.CORRECT_COLOUR)  # "two" is the truth
    assert lines["truth: blue"].get_fontweight() == "bold"
    assert tuple(fig.axes[0].images[0].get_array()[0, 0]) == (255, 0, 0)  # its own image above it
    with pytest.raises(ValueError, match="2 images"):
        viz.plot_answer_cards(images, {"question": ["only one"]})
