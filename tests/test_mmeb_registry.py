"""The MMEB-V1 registry matches the benchmark's table, and ShapesWorld joins it lazily."""
import subprocess
import sys
import types

import pytest

from comalite.eval import registry as mmeb
from comalite.records import IMAGE_PLACEHOLDER, DatasetInfo

# The MMEB-V1 table (recipe notes, section 5): meta-task -> (IND names, OOD names).
TABLE = {
    "classification": (
        ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"],
        ["Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"],
    ),
    "vqa": (
        ["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"],
        ["ScienceQA", "VizWiz", "GQA", "TextVQA"],
    ),
    "retrieval": (
        ["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA"],
        ["OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ"],
    ),
    "grounding": (["MSCOCO"], ["RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"]),
}


@pytest.fixture
def fake_shapesworld(monkeypatch):
    """A stand-in ``comalite.shapesworld`` with two datasets; the registry is restored afterwards."""
    module = types.ModuleType("comalite.shapesworld")
    module.SHAPESWORLD_DATASETS = (
        DatasetInfo("SW-Color", "classification", "IND", "Identify the color", "image", "text", source="shapesworld"),
        DatasetInfo("SW-Count", "vqa", "OOD", "Answer the question:", "image+text", "text", source="shapesworld"),
    )
    monkeypatch.setitem(sys.modules, "comalite.shapesworld", module)
    # The MMEB entries only: an earlier test of the session may have registered the real ShapesWorld.
    monkeypatch.setattr(mmeb, "REGISTRY", {k: v for k, v in mmeb.REGISTRY.items() if v.source == "mmeb"})
    monkeypatch.setattr(mmeb, "_shapesworld_loaded", False)
    return module


def test_36_datasets_with_the_table_counts():
    infos = mmeb.datasets(source="mmeb")
    assert len(infos) == 36 == len(mmeb.MMEB_V1_NAMES)
    counts = {task: len(mmeb.datasets(meta_task=task, source="mmeb")) for task in TABLE}
    assert counts == {"classification": 10, "vqa": 10, "retrieval": 12, "grounding": 4}
    assert len(mmeb.datasets(split="IND", source="mmeb")) == 20
    assert len(mmeb.datasets(split="OOD", source="mmeb")) == 16


@pytest.mark.parametrize("task", list(TABLE))
def test_names_and_splits_match_the_table(task):
    ind, ood = TABLE[task]
    assert [i.name for i in mmeb.datasets(meta_task=task, split="IND", source="mmeb")] == ind
    assert [i.name for i in mmeb.datasets(meta_task=task, split="OOD", source="mmeb")] == ood


def test_entries_are_well_formed():
    for info in mmeb.datasets(source="mmeb"):
        assert info.source == "mmeb"
        assert info.instruction == info.instruction.strip() != ""
        assert IMAGE_PLACEHOLDER not in info.instruction  # the files put it before the instruction
        assert {info.query, info.target} <= set(mmeb.MODALITIES)
    assert mmeb.get_dataset_info("ImageNet-1K").instruction == "Represent the given image for classification"
    assert mmeb.get_dataset_info("MSCOCO_t2i").query == "text"
    assert mmeb.get_dataset_info("MSCOCO_t2i").target == "image"


def test_unknown_name_lists_close_names(fake_shapesworld):
    with pytest.raises(KeyError, match="ImageNet-1K"):
        mmeb.get_dataset_info("ImageNet_1K")  # the train spelling
    with pytest.raises(KeyError, match="close names: none"):
        mmeb.get_dataset_info("zzzzzz")


def test_register_is_idempotent_but_refuses_conflicts(monkeypatch):
    monkeypatch.setattr(mmeb, "REGISTRY", dict(mmeb.REGISTRY))
    same = mmeb.get_dataset_info("VOC2007")
    assert mmeb.register(same) is same
    with pytest.raises(ValueError, match="already registered"):
        mmeb.register(DatasetInfo("VOC2007", "classification", "OOD", "x", "image", "text"))
    with pytest.raises(ValueError, match="meta_task"):
        mmeb.register(DatasetInfo("New", "captioning", "IND", "x", "image", "text"))
    with pytest.raises(ValueError, match="split"):
        mmeb.register(DatasetInfo("New", "vqa", "train", "x", "image", "text"))
    with pytest.raises(ValueError, match="modality"):
        mmeb.register(DatasetInfo("New", "vqa", "IND", "x", "video", "text"))


def test_shapesworld_is_registered_on_first_lookup(fake_shapesworld):
    assert "SW-Color" not in mmeb.REGISTRY
    assert len(mmeb.datasets(source="mmeb")) == 36  # MMEB-only queries do not load ShapesWorld
    assert not mmeb._shapesworld_loaded
    assert mmeb.get_dataset_info("SW-Count").meta_task == "vqa"
    assert [i.name for i in mmeb.datasets(source="shapesworld")] == ["SW-Color", "SW-Count"]
    assert len(mmeb.datasets()) == 38
    assert [i.name for i in mmeb.datasets(meta_task="vqa", split="OOD", source="shapesworld")] == ["SW-Count"]


def test_importing_the_registry_does_not_import_shapesworld():
    code = "import sys, comalite.eval.registry; print('comalite.shapesworld' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_filters_are_rejected():
    with pytest.raises(ValueError):
        mmeb.datasets(meta_task="Classification", source="mmeb")
    with pytest.raises(ValueError):
        mmeb.datasets(split="ind", source="mmeb")
