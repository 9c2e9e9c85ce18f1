"""The export: a stage-2 result as one plain peft adapter that embeds exactly as comalite does.

The model card's snippet is run as written, in another interpreter where ``import comalite`` fails, on
texts, images and image + text, and compared with ``EmbeddingModel.load(...).embed``: for the trained
result and for the same weights with last-token pooling or an unquantised base. The same snippet on an
export that lacks the stage-1 half of the stack shows that the comparison can fail. peft itself checks, on a
toy, that one merged LoRA computes what a stack of two (other ranks, alphas, rsLoRA) computes.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer

from cli_checks import cli
from comalite.cli import main
from comalite.config import load_config
from comalite.embedding import EmbeddingModel
from comalite.errors import ComaliteError
from comalite.export import ADAPTER_CONFIG, EXPORT_INFO, export_model, merge_lora_stack, usage_snippet
from comalite.pipeline import ensure_stage
from comalite.records import EmbedInput

README = Path(__file__).resolve().parent.parent / "README.md"

RUN_SNIPPETS = r"""
import json, re, sys
sys.modules["comalite"] = None  # `import comalite` now fails: the snippet must not need it
import numpy as np
from PIL import Image

cards, inputs, out = sys.argv[1:]
inputs = json.load(open(inputs))
vectors = {}
for card in json.loads(cards):
    namespace = {}
    exec(re.search(r"```python\n(.*?)```", open(card).read(), re.S).group(1), namespace)
    images = [Image.open(p).convert("RGB") if p else None for _, p in inputs]
    vectors[card] = namespace["embed"]([t for t, _ in inputs], images).numpy()
assert not [m for m in sys.modules if m.split(".")[0] == "comalite" and sys.modules[m] is not None]
np.savez(out, *[vectors[card] for card in json.loads(cards)])
"""
"""Run in a fresh interpreter: each model card's python block exactly as written (its example embeds
``photo.png`` from the working folder), then its ``embed`` on the test inputs."""


@pytest.fixture(scope="module")
def stage2(tiny_home, tmp_path_factory) -> Path:
    """A CoMa stage-2 result after 2 + 2 steps: both LoRA halves have moved off zero."""
    out = tmp_path_factory.mktemp("export-run")
    cfg = load_config("tiny-smoke", [f"out_dir={out}", "stage1.train.steps=2", "stage2.train.steps=2"])
    return ensure_stage(cfg, "stage2")


@pytest.fixture(scope="module")
def inputs(data_root, tmp_path_factory) -> list[EmbedInput]:
    scenes = sorted(p for p in (data_root / "images").rglob("*.png") if "_" not in p.stem)
    strip = tmp_path_factory.mktemp("export-images") / "strip.png"
    with Image.open(scenes[2]) as scene:
        scene.convert("RGB").resize((168, 56)).save(strip)  # another grid: another number of image tokens
    return [EmbedInput(text="a small red square at the top left and a large blue circle"),
            EmbedInput(text="", image=str(scenes[0])),
            EmbedInput(text="<|image_1|>\nRepresent the given image.", image=str(scenes[1])),
            EmbedInput(text="two"),
            EmbedInput(text="Find the object <|image_1|> in the scene", image=str(strip))]


def _variant(stage2: Path, folder: Path, edit) -> Path:
    """A copy of the result whose ``result.json`` ``edit`` changes (the weights stay the same)."""
    shutil.copytree(stage2, folder, ignore=shutil.ignore_patterns("checkpoint.pt", ".lock"))
    info = json.loads((folder / "result.json").read_text())
    edit(info)
    (folder / "result.json").write_text(json.dumps(info))
    return folder


VARIANTS = {
    "stage 2": lambda info: None,
    "pooling last": lambda info: info["settings"].update(pooling="last"),
    "unquantised": lambda info: info["model"].update(quantization="none"),
    # The half a wrong merge could drop: comalite's numbers still come from the full stack.
    "stage-1 adapter dropped": lambda info: info.update(adapters=[a for a in info["adapters"] if a[0] != "stage1"]),
}
"""Results to export: the trained one, the same weights pooled or loaded as the other settings, and a foil."""


@pytest.fixture(scope="module")
def embeddings(stage2, inputs, data_root, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per variant: (comalite's embeddings of ``inputs``, the exported model card's snippet's), the snippets
    all run in one interpreter that cannot import comalite."""
    tmp = tmp_path_factory.mktemp("export")
    results = {name: _variant(stage2, tmp / f"result-{i}", edit) for i, (name, edit) in enumerate(VARIANTS.items())}
    cards = [str(export_model(folder, tmp / f"export-{i}") / "README.md") for i, folder in enumerate(results.values())]
    Image.open(inputs[1].image).save(tmp / "photo.png")  # the snippet's own example embeds "photo.png"
    (tmp / "inputs.json").write_text(json.dumps([[i.text, i.image] for i in inputs]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # -I: no PYTHONPATH, no script folder on the path
    done = subprocess.run([sys.executable, "-I", "-c", RUN_SNIPPETS, json.dumps(cards), str(tmp / "inputs.json"),
                           str(tmp / "out.npz")], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    snippets = np.load(tmp / "out.npz")
    reference = {name: EmbeddingModel.load(folder).embed(inputs) for name, folder in results.items()
                 if name != "stage-1 adapter dropped"}
    reference["stage-1 adapter dropped"] = reference["stage 2"]
    return {name: (reference[name], snippets[f"arr_{i}"]) for i, name in enumerate(VARIANTS)}


def test_both_adapters_of_the_stack_have_trained(stage2):
    for name in ("stage1", "stage2"):
        weights = load_file(str(stage2 / "adapters" / name / "adapter_model.safetensors"))
        assert max(float(w.abs().max()) for k, w in weights.items() if "lora_B" in k) > 1e-4


@pytest.mark.parametrize("variant", ["stage 2", "pooling last", "unquantised"])
def test_the_exported_snippet_embeds_as_comalite_does_without_comalite(embeddings, variant):
    want, got = embeddings[variant]
    diff = np.abs(got - want).max()
    print(f"\n{variant}: max |snippet - comalite| over texts, images, image + text: {diff:.2g}")
    assert got.shape == want.shape == (5, 128)
    assert diff <= 1e-5


def test_the_comparison_fails_when_the_stage1_half_is_missing_or_the_base_is_not_quantised_alike(embeddings):
    want, got = embeddings["stage-1 adapter dropped"]
    dropped = np.abs(got - want).max()
    other_base = np.abs(embeddings["unquantised"][1] - embeddings["stage 2"][0]).max()
    print(f"\nmax |snippet - comalite|: without stage 1 {dropped:.2g}; unquantised against nf4 {other_base:.2g}")
    assert dropped > 1e-3
    assert other_base > 1e-3


def _toy_stack(tmp_path: Path) -> tuple[nn.Module, nn.Module, list[tuple[dict, dict]]]:
    """A two-layer toy (and a copy of it, bare) with two LoRA adapters of other ranks, alphas and rsLoRA, both
    active, B nonzero."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10), nn.Linear(10, 6))
    bare = copy.deepcopy(base)
    configs = {"one": LoraConfig(r=3, lora_alpha=7, target_modules=["0", "1"]),
               "two": LoraConfig(r=5, lora_alpha=4, use_rslora=True, target_modules=["0", "1"])}
    model = get_peft_model(base, configs["one"], adapter_name="one")
    model.add_adapter("two", configs["two"])
    model.base_model.set_adapter(["one", "two"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(str(tmp_path))
    stack = [(json.loads((tmp_path / sub / ADAPTER_CONFIG).read_text()),
              load_file(str(tmp_path / sub / "adapter_model.safetensors"))) for sub in ("one", "two")]
    return bare, model.eval(), stack


def test_one_merged_lora_computes_what_the_stack_computes(tmp_path):
    bare, stacked, stack = _toy_stack(tmp_path / "saved")
    x = torch.randn(4, 12)
    merged_weights = merge_lora_stack(stack)
    rank = merged_weights["base_model.model.0.lora_A.weight"].shape[0]
    merged = get_peft_model(bare, LoraConfig(r=rank, lora_alpha=rank, target_modules=["0", "1"]))
    set_peft_model_state_dict(merged, merged_weights)
    with torch.no_grad():
        with stacked.disable_adapter():
            bare = stacked(x)
        want, got = stacked(x), merged.eval()(x)
    assert rank == 3 + 5
    assert float((want - bare).abs().max()) > 0.1      # the adapters do change the output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
AB = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(3, 2)}


@pytest.mark.parametrize("stack, says", [
    ([({**LORA, "use_dora": True}, AB)], "no DoRA"),
    ([({**LORA, "rank_pattern": {"m": 4}}, AB)], "per-module ranks"),
    ([(LORA, AB), (LORA, {k.replace("m.", "n."): v for k, v in AB.items()})], "different modules"),
])
def test_a_stack_that_is_not_one_lora_is_refused(stack, says):
    with pytest.raises(ComaliteError, match=says):
        merge_lora_stack(stack)


def test_a_table_without_room_for_the_compression_rows_is_refused(stage2, tmp_path, monkeypatch):
    import comalite.export

    real = comalite.export.input_embedding
    monkeypatch.setattr(comalite.export, "input_embedding", lambda c: (real(c)[0], 500, real(c)[2]))
    last_id = int(load_file(str(stage2 / "compression.safetensors"))["token_ids"].max())
    with pytest.raises(ComaliteError, match=f"has 500 rows, too few for the compression token ids up to {last_id}"):
        export_model(stage2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_command_writes_a_folder_plain_libraries_read(stage2, tmp_path, capsys):
    out = tmp_path / "exported"
    main(["export", str(stage2), "--out", str(out), "--base", "Qwen/Qwen2-VL-2B-Instruct"])
    assert "exported" in capsys.readouterr().out
    adapter = json.loads((out / ADAPTER_CONFIG).read_text())
    info = json.loads((out / EXPORT_INFO).read_text())
    rows = load_file(str(stage2 / "compression.safetensors"))
    assert adapter["base_model_name_or_path"] == info["base_model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert adapter["r"] == adapter["lora_alpha"] == 32 and not adapter["use_rslora"]   # two rank-16 adapters
    assert adapter["trainable_token_indices"] == {"embed_tokens": rows["token_ids"].tolist()}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids([f"<|cmp_{i}|>" for i in range(8)]) == rows["token_ids"].tolist()
    pixels = json.loads((out / "preprocessor_config.json").read_text())["size"]
    assert pixels == {"shortest_edge": info["min_pixels"], "longest_edge": info["max_pixels"]}
    assert "Qwen/Qwen2-VL-2B-Instruct" in (out / "README.md").read_text()

    main(["export", str(stage2), "--out", str(out)])                     # an earlier export is replaced
    assert json.loads((out / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] != "Qwen/Qwen2-VL-2B-Instruct"


@pytest.mark.parametrize("case", ["not a result", "out is another folder"])
def test_export_command_refuses_with_one_line(case, stage2, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    args = ([str(tmp_path), "--out", str(tmp_path / "x")] if case == "not a result"
            else [str(stage2), "--out", str(other)])
    err = cli(capsys, "export", *args)[1]   # exit 2, no traceback
    assert err.startswith("comalite export: error: ") and "Traceback" not in err
    assert ("result.json not found" in err) if case == "not a result" else ("is not a comalite export" in err)
    assert (other / "notes.txt").read_text() == "keep me"


def test_the_readme_shows_the_snippet_an_export_of_the_2b_preset_writes():
    model = load_config("qwen2-vl-2b").model
    section = README.read_text().split("## Use the result anywhere", 1)[1]
    shown = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert shown == usage_snippet("exports/coma-2b", model.backbone, model_class="Qwen2VLForConditionalGeneration",
                                  k=model.n_compress, pooling="mean", quantization=model.quantization,
                                  dtype=model.dtype)


def test_export_and_stage1_data_refuse_to_run_under_torchrun(monkeypatch):
    """Each torchrun process would repeat the whole export (racing on one folder) or write every dialogue."""
    from comalite.cli import _one_process
    from comalite.errors import ComaliteError

    _one_process("export")                              # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("export", "stage1-data"):
        with pytest.raises(ComaliteError, match=f"^{command} runs in one process: start it without torchrun"):
            _one_process(command)
