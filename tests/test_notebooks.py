"""The lesson notebooks: the house layout, clean committed outputs, and every one run top to bottom.

Each notebook is executed with nbclient in a fresh ``python3`` kernel of this interpreter (the venv), with
an injected ``PRESET = "tiny-smoke"`` after its ``parameters`` cell, in a scratch working directory (paths
must come from the package, never from the working directory). The kernel inherits this session's
environment, so it works under the session's ``COMALITE_HOME`` on the smoke-mode tiny VLM and data
(``tiny_home``). The notebooks run in order and share the smoke run folder: later ones reuse the stages
earlier ones ran. Each ends with one "Check yourself" cell of asserts; any error fails the test, and so does
an output that a full render must not commit: an absolute path of the machine, or a frozen progress bar.

What the lessons compute by hand to show a point (the loss, the pooling, the token budgets) is pinned at
the end of this file, on the smoke tiny VLM, so the notebooks need no assert cells of their own for it.
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
nbformat = pytest.importorskip("nbformat")

REPO_DIR = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600  # seconds per cell; a smoke notebook takes well under a minute


def _render_module():
    spec = importlib.util.spec_from_file_location("render_notebooks", REPO_DIR / "scripts" / "render_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()
NOTEBOOKS = render.notebooks()
EXPECTED = ["01_data", "02_stage1_compression", "03_stage2_contrastive", "04_mmeb_subsets", "05_embedding_space",
            "06_does_compression_help"]
ABSOLUTE_PATH = re.compile(r"(/tmp/|/home/|/root/|/work/|/Users/|/private/var/)")
"""Machine paths that must never show in an output (a lesson prints paths relative to the checkout or data)."""
LESSON_PARAMETERS = {"RESULTS"}
"""Parameters a lesson may add after PRESET and OVERRIDES (06 reads an experiment report from ``RESULTS``)."""
PROGRESS_BAR = re.compile(r"\d+%\|")
"""A progress bar frozen into an output (``TQDM_DISABLE`` must switch every bar off in a render)."""


def _outputs_text(nb) -> str:
    """Every output of every code cell as one text: streams, errors and each mime type of display data."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts += [out.get("text", ""), out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
            for mime, data in out.get("data", {}).items():
                if not mime.startswith("image/"):
                    parts.append(data if isinstance(data, str) else json.dumps(data))
    return "\n".join(parts)


def _absolute_paths(nb) -> list[str]:
    text = _outputs_text(nb)
    return sorted({text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in ABSOLUTE_PATH.finditer(text)})


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_the_numbered_series_is_complete():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_the_kernel_is_this_python():
    assert Path(render.kernel_python()).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_show_no_absolute_paths(path):
    found = _absolute_paths(nbformat.read(path, as_version=4))
    assert not found, f"{path.name} shows absolute paths of the machine that rendered it: {found[:5]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_keep_the_house_layout(path):
    """Hosted-service cell first, then the parameters (PRESET, OVERRIDES), then the lesson's set-up; asserts
    only in the one closing "Check yourself" cell; "Try it" at the end."""
    nb = nbformat.read(path, as_version=4)
    code = _code(nb)
    assert "REPOSITORY = " in code[0] and "%pip install" in code[0], "the first code cell installs on hosted services"
    index = render.parameters_cell(nb)
    assert nb.cells[index].source == code[1]
    names = re.findall(r"^(\w+)", nb.cells[index].source, re.MULTILINE)
    assert names[:2] == ["PRESET", "OVERRIDES"] and set(names[2:]) <= LESSON_PARAMETERS
    assert 'PRESET = "tiny"' in code[1] and "OVERRIDES: list[str] = []" in code[1]
    assert f'comalite.lesson.start("{path.stem}", PRESET, OVERRIDES)' in code[2]
    with_asserts = [i for i, source in enumerate(code) if re.search(r"^\s*assert\b", source, re.MULTILINE)]
    assert with_asserts in ([], [len(code) - 1]), "asserts belong in the closing 'Check yourself' cell only"
    if with_asserts:
        last_code = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        assert nb.cells[last_code - 1].source.startswith("## Check yourself")
    assert nb.cells[-1].cell_type == "markdown" and nb.cells[-1].source.startswith("## Try it")
    assert any(f"{name} = " in nb.cells[-1].source for name in ("PRESET", "OVERRIDES", *LESSON_PARAMETERS))


ANSWER = "<details><summary>Answer</summary>"
"""How a "Predict, then run" answer opens: folded, so a student sees it only after answering."""
EXERCISE_TIME = re.compile(r"\b\d+ (s|seconds?|minutes?|hours?)\b")
"""How long an exercise takes, as a "Try it" item says it ("about 2 minutes", "20 s")."""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_end_with_predict_then_run(path):
    """Before "Check yourself": 5-8 questions, each a markdown cell, the code cell that shows its answer, and
    the answer folded under it. Every "Try it" exercise says what to look for and how long it takes."""
    cells = nbformat.read(path, as_version=4).cells
    starts = [i for i, c in enumerate(cells) if c.source.startswith("## Predict, then run")]
    assert len(starts) == 1 and cells[starts[0]].cell_type == "markdown"
    end = next(i for i, c in enumerate(cells) if c.source.startswith("## Check yourself"))
    block = cells[starts[0] + 1:end]
    assert len(block) % 3 == 0 and 5 <= len(block) // 3 <= 8, f"{len(block) / 3:g} questions"
    for n, (question, reveal, answer) in enumerate(zip(block[::3], block[1::3], block[2::3]), start=1):
        assert question.cell_type == "markdown" and question.source.startswith(f"**{n}.**")
        assert reveal.cell_type == "code" and reveal.source.strip(), f"question {n} has no cell to run"
        assert answer.cell_type == "markdown" and answer.source.startswith(ANSWER), f"question {n}"
        assert answer.source.rstrip().endswith("</details>")
    exercises = re.split(r"^\d+\. ", cells[-1].source, flags=re.MULTILINE)[1:]
    assert exercises, "'Try it' has no numbered exercise"
    for n, exercise in enumerate(exercises, start=1):
        assert EXERCISE_TIME.search(exercise), f"exercise {n} does not say how long it takes"
        assert re.search(r"\blook\b", exercise, re.IGNORECASE), f"exercise {n} does not say what to look at"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tiny_home, tmp_path, capsys):
    nb, seconds = render.execute(path, preset="tiny-smoke", timeout=CELL_TIMEOUT, cwd=tmp_path, inject=True)
    with capsys.disabled():  # shown even without -s
        print(f"\n{path.name}: {seconds:.1f} s (smoke mode)")
    assert not list(tmp_path.iterdir()), "the notebook wrote into its working directory"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    found = _absolute_paths(nb)
    assert not found, f"{path.name} prints absolute paths (a full render would commit them): {found[:5]}"
    bars = PROGRESS_BAR.findall(_outputs_text(nb))
    assert not bars, f"{path.name} shows {len(bars)} progress bars although TQDM_DISABLE is set"


# ------------------------------------------- what the lessons show by hand, pinned here instead of in them


@pytest.fixture(scope="module")
def smoke_config(tiny_home):
    """The ``tiny-smoke`` preset on the session's data (reading only: nothing here trains or writes a run)."""
    from comalite.config import load_config

    return load_config("tiny-smoke")


@pytest.fixture(scope="module")
def stage1_model(smoke_config):
    from comalite.stage1 import load_stage1_backbone

    return load_stage1_backbone(smoke_config).eval()


def test_image_token_budgets_follow_the_28_pixel_rule(tiny_checkpoint):
    """01: one LLM token per 28 x 28 pixels; a budget shrinks the image to the largest multiple of 28 in it."""
    from comalite.config import load_config
    from comalite.processor import VLProcessor

    def tokens(max_pixels, side):
        return VLProcessor.from_pretrained(tiny_checkpoint, min_pixels=4 * 28 * 28,
                                           max_pixels=max_pixels).tokens_for_size(side, side)

    assert [tokens(16384 * 28 * 28, s) for s in (112, 448, 1344)] == [16, 256, 2304]
    assert tokens(1280 * 28 * 28, 1344) == (980 // 28) ** 2 == 1225
    assert tokens(load_config("tiny").model.max_pixels, 112) == 16
    assert tokens(load_config("qwen2-vl-2b").model.max_pixels, 1344) == 1024  # the paper's cap: 896 x 896


def test_lm_loss_is_cross_entropy_on_the_answers_under_the_mask(stage1_model, smoke_config):
    """02: ``lm_loss`` is the mean next-token cross-entropy over the answer tokens, the compression mask on;
    questions and answers never see the image or the prompt, and see every compression token."""
    import torch
    import torch.nn.functional as F

    from comalite.data.sources import stage1_dialogues
    from comalite.mask import attention_allowed
    from comalite.objective import lm_loss
    from comalite.sequence import ANSWER, COMPRESS, CONTEXT, QUESTION, collate, dialogue_examples

    cfg = smoke_config
    examples = dialogue_examples(stage1_model.processor, stage1_dialogues(cfg)[:3], cfg.stage1)
    batch = collate(examples, stage1_model.processor.tokenizer.pad_token_id)
    allowed = attention_allowed(batch["roles"], batch["attention_mask"])
    roles = batch["roles"]
    for b in range(len(examples)):
        qa, context, compress = (roles[b] == QUESTION) | (roles[b] == ANSWER), roles[b] == CONTEXT, roles[b] == COMPRESS
        assert not allowed[b][qa][:, context].any() and allowed[b][qa][:, compress].all()
        assert allowed[b][compress][:, context].all()
    with torch.no_grad():
        loss = lm_loss(stage1_model, batch, supervise="answers")
        hidden = stage1_model.hidden_states(batch, allowed)
        targets = (roles == ANSWER)[:, 1:].to(hidden.device)
        logits = stage1_model.lm_head(hidden[:, :-1][targets]).float()
        by_hand = F.cross_entropy(logits, batch["input_ids"][:, 1:].to(hidden.device)[targets])
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_without_last_answer_leaves_a_prompt_that_generate_answer_completes(stage1_model, smoke_config):
    """02: the prompt ends with the last question; the cut-off ids are that answer and its ``<|im_end|>``."""
    from comalite.data.sources import stage1_dialogues
    from comalite.objective import generate_answer, without_last_answer
    from comalite.sequence import QUESTION, dialogue_example

    cfg = smoke_config
    dialogue = stage1_dialogues(cfg)[0]
    processor = stage1_model.processor
    full = dialogue_example(processor, dialogue, prompt=cfg.stage1.prompt, text_prompt=cfg.stage1.text_prompt)
    prompt, answer = without_last_answer(full)
    assert prompt.roles[-1] == QUESTION
    assert prompt.input_ids + answer == full.input_ids
    assert answer == processor.encode_text(dialogue.turns[-1].answer) + [processor.im_end_id]
    text = generate_answer(stage1_model, prompt, max_new_tokens=4)
    assert isinstance(text, str) and text == generate_answer(stage1_model, prompt, max_new_tokens=4)


def test_answers_right_counts_each_answer_as_greedy_decoding_would(stage1_model, smoke_config):
    """02: ``answers_right`` gives one verdict per turn, each the same as decoding that answer greedily after the
    true earlier turns; ``answer_accuracy`` is their mean."""
    from comalite.data.sources import stage1_dialogues
    from comalite.objective import answer_accuracy, answers_right, generate_answer, without_last_answer
    from comalite.sequence import dialogue_examples

    cfg = smoke_config
    dialogues = stage1_dialogues(cfg)[:6]
    examples = dialogue_examples(stage1_model.processor, dialogues, cfg.stage1)
    right = answers_right(stage1_model, examples, batch_size=4)  # two batches, one of them short
    assert [len(r) for r in right] == [len(d.turns) for d in dialogues]
    for dialogue, example, verdicts in zip(dialogues, examples, right):
        prompt, _ = without_last_answer(example)  # the last turn decoded for real
        decoded = generate_answer(stage1_model, prompt, max_new_tokens=24)
        assert verdicts[-1] == (decoded == dialogue.turns[-1].answer), (decoded, dialogue.turns[-1].answer)
    accuracy = answer_accuracy(stage1_model, examples)
    assert accuracy["answers"] == sum(map(len, right))
    assert accuracy["accuracy"] == pytest.approx(sum(map(sum, right)) / accuracy["answers"])


def test_compression_states_pool_to_the_embedding(tiny_checkpoint, data_root):
    """03 and 05: the mean of the K compression states, L2-normalised, is what ``encode`` returns."""
    import torch
    import torch.nn.functional as F

    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig
    from comalite.embedding import compression_states, encode
    from comalite.records import EmbedInput

    cfg = ModelConfig(backbone=str(tiny_checkpoint), n_compress=4, max_pixels=12544, min_pixels=3136, quantization="none")
    backbone = load_backbone(cfg, train_adapter=None).eval()
    image = str(sorted((data_root / "images").rglob("*.png"))[0])
    inputs = [EmbedInput("<|image_1|>\nRepresent the given image.", image), EmbedInput("a red circle")]
    states = compression_states(backbone, inputs)
    assert states.shape == (2, 4, backbone.hf.config.text_config.hidden_size)
    with torch.no_grad():
        pooled = encode(backbone, inputs, "mean").cpu()
    torch.testing.assert_close(F.normalize(states.mean(dim=1), dim=-1), pooled, atol=1e-5, rtol=0)


def test_lesson_overrides_that_change_learning_get_their_own_run_folder():
    """An exercise (``OVERRIDES = ["model.n_compress=4"]``) never meets the folder of a run made with other
    settings; where-things-are and evaluation overrides keep the preset's folder (shared with the CLI)."""
    from comalite.lesson import lesson_config, shown

    assert lesson_config("tiny").name == "tiny"
    assert lesson_config("tiny", ["model.n_compress=4"]).name == "tiny-model.n_compress=4"
    assert lesson_config("tiny", ["eval.max_queries=20", "model.device=cpu"]).name == "tiny"
    assert lesson_config("qwen2-vl-2b", ["data.root=/data/MMEB-train", "model.backbone=/models/q"]).name == "qwen2-vl-2b"
    assert lesson_config("tiny", ["model.n_compress=4", "name=mine"]).name == "mine"
    assert lesson_config("tiny", ["model.n_compress=8"]).name == "tiny"  # the preset's own value changes nothing
    assert not ABSOLUTE_PATH.search(shown(lesson_config("tiny-smoke").run_dir() / "stage1"))


def test_lesson_logs_name_files_without_the_machines_paths():
    """A library warning that names a file (the data reader's, say) prints it as the lesson prints paths."""
    import logging

    from comalite.lesson import _ShownPaths
    from comalite.paths import repo_dir

    file = Path(repo_dir()) / "data" / "shapesworld" / "eval" / "SW-I2T" / "test.parquet"
    record = logging.LogRecord("comalite.data.io", logging.WARNING, __file__, 1, "%s: %d of %d rows odd",
                               (file, 1, 600), None)
    assert _ShownPaths().filter(record)
    assert record.getMessage() == "data/shapesworld/eval/SW-I2T/test.parquet: 1 of 600 rows odd"
    assert not ABSOLUTE_PATH.search(record.getMessage())
