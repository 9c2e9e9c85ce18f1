"""The README's real recipe, as written, on a stand-in of the hub's MMEB folders; per-subset caps; datasets
of one's own.

``tests/mmeb_standin.py`` lays ShapesWorld's files out as local copies of TIGER-Lab/MMEB-train and
MMEB-eval are (real names, hub shard names, ``images/``, the hub client's ``.cache/``). The commands are read
from README.md's "The real recipe on one GPU" block, so a README that drifts from the code fails here; only
the settings that make them CPU-sized are added.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import mmeb_standin as standin_layout
from cli_checks import cli, refuse_model_loads
from comalite.cli import main
from comalite.config import load_config
from comalite.data.io import read_eval_dataset, read_train_subset
from comalite.data.sources import dataset_folders, stage1_dialogues, train_pairs
from comalite.errors import ConfigError, DataFormatError
from comalite.eval.registry import MMEB_V1_NAMES, dataset_info, datasets, get_dataset_info
from comalite.fingerprint import files_fingerprint
from comalite.runs import differences, stage_record

README = Path(__file__).resolve().parent.parent / "README.md"
CPU_SIZED = ("model.backbone=tiny-smoke", "model.max_pixels=12544", "model.min_pixels=3136",
             "stage1.train.steps=2", "stage1.train.batch_size=2", "stage1.train.grad_accum=1", "stage1.heldout=1",
             "stage2.train.steps=2", "stage2.train.batch_size=16", "stage2.sub_batch_size=8", "stage2.chunk_size=16",
             "writer.n_questions=1", "writer.max_question_tokens=12", "writer.max_answer_tokens=4")
"""All that is added to the README's commands (quantization stays the preset's nf4), plus an out_dir."""
STAGE1_IMAGES = 3  # stage1-data's --limit


def rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows


def run(argv: list[str]) -> str:
    """``comalite argv``; its stdout. A non-zero exit fails the test with what the command printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as stop:
            if stop.code:
                pytest.fail(f"comalite {' '.join(argv)} exited {stop.code}:\n{err.getvalue()[-3000:]}")
    return out.getvalue()


def cpu_sized(argv: list[str], out_dir: Path) -> list[str]:
    if argv[0] == "check-data":
        return argv
    extra = [a for s in (*CPU_SIZED, f"out_dir={out_dir}") for a in ("--set", s)]
    # stage1-data: the smoke VLM is not chat-tuned and writes no questions, so it is given one to answer (the
    # writing itself is tested with a scripted model in test_stage1_data.py)
    writes = ["--limit", str(STAGE1_IMAGES), "--question", "How many objects are there?"]
    return argv + extra + (writes if argv[0] == "stage1-data" else [])


@pytest.fixture(scope="module")
def standin(data_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    standin_layout.build(data_root, folder)
    return folder


@pytest.fixture(scope="module")
def recipe(standin, tiny_home) -> dict:
    """Every command of the README block run in order (stage1-data twice); ``{command: [stdout, ...]}``, and
    the stage-1 file's bytes after its first run under ``"stage1.jsonl"``."""
    commands = [standin_layout.at(argv, standin) for argv in standin_layout.readme_commands(README)]
    assert [c[0] for c in commands] == ["check-data", "check-data", "stage1-data", "stage1", "stage2", "eval"]
    outputs: dict = {}
    for argv in commands:
        outputs.setdefault(argv[0], []).append(run(cpu_sized(argv, standin / "runs")))
        if argv[0] == "stage1-data":
            outputs["stage1.jsonl"] = (standin / "stage1.jsonl").read_bytes()
            outputs[argv[0]].append(run(cpu_sized(argv, standin / "runs")))
    outputs["argv"] = {argv[0]: argv for argv in commands}
    return outputs


def config(recipe, command: str):
    """The config a README command ran with (its --set values and the CPU-sized ones)."""
    argv = recipe["argv"][command]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return load_config(argv[argv.index("--preset") + 1], [*sets, *CPU_SIZED])


# ----------------------------------------------------------------------------- the README's commands


def test_check_data_lists_the_datasets_and_skips_cache_and_images(recipe, standin):
    expected = {"MMEB-train": ("train", sorted(standin_layout.TRAIN), standin_layout.TRAIN_SHARD),
                "MMEB-eval": ("eval", sorted([*standin_layout.EVAL, standin_layout.USER_DATASET[0]]),
                              standin_layout.EVAL_SHARD)}
    assert {p.name for p in (standin / "MMEB-train").iterdir()} >= {".cache", "images"}  # what is to be skipped
    for out, (folder, (kind, names, shard)) in zip(recipe["check-data"], expected.items()):
        table = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert [(r[0][2:], r[1], int(r[2])) for r in table] == \
            [(n, kind, rows(standin / folder / n / shard)) for n in names]
        assert f"{len(names)} datasets, 0 with a problem" in out
        assert dataset_folders(standin / folder, "original" if kind == "train" else "test") == names


def test_stage1_data_writes_dialogues_that_stage1_reads_and_a_rerun_adds_none(recipe, standin):
    path = standin / "stage1.jsonl"
    assert path.read_bytes() == recipe["stage1.jsonl"]  # the second run changed nothing
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == STAGE1_IMAGES == len({r["image"] for r in records})
    assert all(r["image"].startswith("images/") for r in records)  # relative to data.root, as stage 1 reads them
    dialogues = stage1_dialogues(config(recipe, "stage1"))
    assert [d.image for d in dialogues] == [str(standin / "MMEB-train" / r["image"]) for r in records]
    assert all(Path(d.image).is_file() and d.turns and all(t.answer.strip() for t in d.turns) for d in dialogues)


def test_stage1_trains_on_those_dialogues(recipe, standin):
    result = json.loads((standin / "runs" / "stage1" / "result.json").read_text())
    assert result["metrics"]["steps"] == 2 and result["run"]["settings"]["model"]["quantization"] == "nf4"
    assert result["run"]["inputs"]["data"] == files_fingerprint([standin / "stage1.jsonl"])


def test_stage2_reads_every_subset_under_the_presets_caps(recipe, standin):
    result = json.loads((standin / "runs" / "stage2" / "result.json").read_text())
    record = json.loads((standin / "runs" / "stage2" / "run.json").read_text())
    caps = {k.split(".", 1)[1]: v for k, v in record["settings"]["stage2"].items() if k.startswith("subset_caps.")}
    assert caps == load_config("qwen2-vl-2b").stage2.subset_caps and "stage1" in record["inputs"]
    total = sum(rows(standin / "MMEB-train" / n / standin_layout.TRAIN_SHARD) for n in standin_layout.TRAIN)
    metrics = result["metrics"]
    assert metrics["train_pairs"] + metrics["heldout_pairs"] == total  # caps above the rows keep every row
    assert metrics["steps"] == 2


def test_eval_scores_the_named_datasets(recipe, standin):
    names = next(a for a in recipe["argv"]["eval"] if a.startswith("eval.datasets=")).split("=")[1].split(",")
    results = json.loads((standin / "runs" / "eval" / "results.json").read_text())
    assert [d["name"] for d in results["datasets"]] == names
    for row in results["datasets"]:
        info = get_dataset_info(row["name"])
        assert (row["meta_task"], row["split"], row["source"]) == (info.meta_task, info.split, "mmeb")
        assert row["n_queries"] == rows(standin / "MMEB-eval" / row["name"] / standin_layout.EVAL_SHARD)
    assert set(results["scores"]) == {"base", "stage2"}
    assert all(0 <= s <= 1 for per in results["scores"].values() for s in per.values())
    assert all(len(per) == len(names) for per in results["scores"].values())
    assert (standin / "runs" / "eval" / "results.md").is_file()


# ----------------------------------------------------------------------------- a dataset of one's own


def eval_base(standin: Path, out_dir: Path, *sets: str) -> list[str]:
    return cpu_sized(["eval", "--preset", "qwen2-vl-2b", "--set", f"eval.root={standin / 'MMEB-eval'}",
                      *(a for s in sets for a in ("--set", s)), "--models", "base"], out_dir)


def test_a_dataset_of_ones_own_needs_its_meta_task_then_joins_the_table(standin, tiny_home, tmp_path, capsys,
                                                                         monkeypatch):
    name = standin_layout.USER_DATASET[0]
    with monkeypatch.context() as patch:  # the error comes before any model loads
        refuse_model_loads(patch)
        err = cli(capsys, *eval_base(standin, tmp_path, f"eval.datasets={name}"))[1]   # exit 2, no traceback
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"comalite eval: error: unknown evaluation dataset '{name}'")
    assert f"--set eval.meta_tasks={name}=classification" in err
    assert f"{standin / 'MMEB-eval' / name}/dataset.json" in err
    run(eval_base(standin, tmp_path, f"eval.datasets=ImageNet-1K,{name}", f"eval.meta_tasks={name}=vqa"))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    row = next(r for r in results["datasets"] if r["name"] == name)
    assert (row["meta_task"], row["split"], row["source"]) == ("vqa", "OOD", "user")
    assert 0 <= results["scores"]["base"][name] <= 1 and "vqa" in results["aggregates"]["base"]
    assert f"| {name} | VQA | OOD |" in (tmp_path / "eval" / "results.md").read_text()


@pytest.fixture
def own(standin, tmp_path) -> Path:
    """A copy of the stand-in's dataset of one's own, in an eval root of its own."""
    folder = tmp_path / "eval" / standin_layout.USER_DATASET[0]
    shutil.copytree(standin / "MMEB-eval" / standin_layout.USER_DATASET[0], folder)
    shutil.copytree(standin / "MMEB-eval" / "images", tmp_path / "eval" / "images")
    return folder


def test_dataset_json_describes_it_and_the_setting_wins(own):
    data = read_eval_dataset(own.parent, own.name)
    (own / "dataset.json").write_text('{"meta_task": "classification"}')
    info = dataset_info(data)
    # Defaults: OOD (nothing trained on it); an image query with a shared instruction, text labels as MMEB says.
    assert (info.meta_task, info.split, info.query, info.target, info.source) == \
        ("classification", "OOD", "image", "text", "user")
    (own / "dataset.json").write_text('{"meta_task": "classification", "split": "IND", "instruction": "Count"}')
    info = dataset_info(data, {own.name: "retrieval"})
    assert (info.meta_task, info.split, info.instruction) == ("retrieval", "IND", "Count")


@pytest.mark.parametrize("text, message", [
    ("{meta_task: vqa}", "not valid JSON"),
    ('["vqa"]', "holds a JSON list, not a JSON object"),
    ('{"meta_task": "vqa", "splitt": "IND"}', "unknown field(s) splitt"),
    ('{"meta_task": "ranking"}', "field 'meta_task' is 'ranking'; choose one of classification, vqa"),
    ("{}", "field 'meta_task' is None"),
], ids=["not-json", "not-an-object", "unknown-field", "unknown-meta-task", "no-meta-task"])
def test_a_bad_dataset_json_names_the_file(own, text, message):
    (own / "dataset.json").write_text(text)
    with pytest.raises(DataFormatError, match=r"^" + str(own / "dataset.json").replace(".", r"\.")) as err:
        dataset_info(read_eval_dataset(own.parent, own.name))
    assert message in str(err.value)


def test_the_setting_is_refused_for_a_registered_dataset(standin):
    data = read_eval_dataset(standin / "MMEB-eval", "ImageNet-1K")
    with pytest.raises(ConfigError, match="eval.meta_tasks.ImageNet-1K: ImageNet-1K is a registered dataset"):
        dataset_info(data, {"ImageNet-1K": "vqa"})


# ----------------------------------------------------------------------------- per-subset caps


def test_the_presets_cap_each_mmeb_train_subset_and_the_readme_passes_none():
    subsets = {info.name.replace("ImageNet-1K", "ImageNet_1K") for info in datasets(split="IND", source="mmeb")}
    for preset in ("qwen2-vl-2b", "qwen2.5-vl-3b"):
        caps = load_config(preset).stage2.subset_caps
        assert set(caps) == subsets and len(subsets) == 20 and set(subsets) <= {*MMEB_V1_NAMES, "ImageNet_1K"}
        assert min(caps.values()) == 10_000 and max(caps.values()) == 130_000
    assert not [a for argv in standin_layout.readme_commands(README) for a in argv if "cap" in a]


def test_caps_from_the_command_line_merge_and_are_checked():
    cfg = load_config("qwen2-vl-2b", ["stage2.subset_caps=ImageNet_1K=5,MSCOCO_i2t=7", "stage2.subset_caps.CIRR=9"])
    preset = load_config("qwen2-vl-2b").stage2.subset_caps
    assert cfg.stage2.subset_caps == {**preset, "ImageNet_1K": 5, "MSCOCO_i2t": 7, "CIRR": 9}
    assert load_config("qwen2-vl-2b", ["stage2.subset_caps="]).stage2.subset_caps == {}
    for setting, message in (("stage2.subset_caps=ImageNet_1K", "--set stage2.subset_caps: expected name=value"),
                             ("stage2.subset_caps=ImageNet_1K=many", "--set stage2.subset_caps.ImageNet_1K: expected"),
                             ("stage2.subset_caps=ImageNet_1K=-1", "stage2.subset_caps.ImageNet_1K=-1: must be at"),
                             ("eval.meta_tasks=Digits=ranking", "eval.meta_tasks.Digits='ranking': choose one of")):
        with pytest.raises(ConfigError) as err:
            load_config("qwen2-vl-2b", [setting])
        assert str(err.value).startswith(message)


def caps_config(standin: Path, *sets: str):
    return load_config("tiny-smoke", ["data.source=mmeb", f"data.root={standin / 'MMEB-train'}", *sets])


def test_a_cap_keeps_a_seeded_sample_of_its_subset(standin):
    cfg = caps_config(standin, "stage2.per_subset_cap=7", "stage2.subset_caps=ImageNet_1K=5")
    pairs = train_pairs(cfg)
    assert Counter(p.subset for p in pairs) == {n: 5 if n == "ImageNet_1K" else 7 for n in standin_layout.TRAIN}
    full = read_train_subset(standin / "MMEB-train" / "ImageNet_1K", standin / "MMEB-train")
    kept = [full.index(p) for p in pairs if p.subset == "ImageNet_1K"]
    assert kept == sorted(kept) and kept != list(range(5))  # in file order, not the first rows
    assert train_pairs(cfg) == pairs
    assert train_pairs(caps_config(standin, "stage2.per_subset_cap=7", "stage2.subset_caps=ImageNet_1K=5",
                                   "stage2.train.seed=1")) != pairs


def test_a_cap_spelled_like_the_eval_name_is_refused(standin):
    with pytest.raises(ConfigError, match="stage2.subset_caps.ImageNet-1K: no subset 'ImageNet-1K' .* 'ImageNet_1K'"):
        train_pairs(caps_config(standin, "stage2.subset_caps=ImageNet-1K=5"))


def test_a_changed_cap_changes_stage2s_run_record(standin, tiny_home):
    def record(caps: str):
        return stage_record(caps_config(standin, "stage2.init=backbone", f"stage2.subset_caps={caps}"), "stage2")

    first = record("ImageNet_1K=5,OK-VQA=3")
    assert record("OK-VQA=3,ImageNet_1K=5")["fingerprint"] == first["fingerprint"]  # order does not matter
    changed = record("ImageNet_1K=6,OK-VQA=3")
    assert changed["fingerprint"] != first["fingerprint"]
    assert differences(first["settings"], changed["settings"]) == ["stage2.subset_caps.ImageNet_1K: 5 -> 6"]
    assert first["inputs"] == changed["inputs"]
