"""The registry of evaluation datasets: the 36 MMEB-V1 datasets, plus ShapesWorld's on demand.

Each entry is a ``DatasetInfo``: the name exactly as the ``TIGER-Lab/MMEB-eval`` config spells it, the
meta-task, IND (MMEB-train has data for it) or OOD, the query instruction, and what the query and the
target hold. ``instruction`` is the instruction text MMEB writes into ``qry_text``, without the
``<|image_1|>`` placeholder: in the eval files an image query reads ``"<|image_1|>\\n" + instruction``,
followed for most VQA/retrieval/grounding sets by a space and the row's own text (question, caption...).
Instructions ending in ``:`` take such a row text; the others stand alone. They were gathered from public
copies of the eval files and are informational: the evaluator embeds ``qry_text`` as the files give it.

ShapesWorld (``comalite.shapesworld``) is registered on the first lookup that needs it, so importing this
module stays light and does not pull in the generator.
"""
from __future__ import annotations

import difflib

from comalite.errors import UnknownDatasetError
from comalite.records import META_TASKS, DatasetInfo

SPLITS = ("IND", "OOD")
MODALITIES = ("image", "text", "image+text")

REGISTRY: dict[str, DatasetInfo] = {}
"""Every registered dataset by name, MMEB's first, in the order of the MMEB tables."""

_shapesworld_loaded = False


def register(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to ``REGISTRY`` and return it.

    Registering the very same entry again is a no-op (so module reloads are harmless); a different entry
    under a name already taken is an error, because results are keyed by name.
    """
    if info.meta_task not in META_TASKS:
        raise ValueError(f"{info.name}: meta_task {info.meta_task!r} is not one of {META_TASKS}")
    if info.split not in SPLITS:
        raise ValueError(f"{info.name}: split {info.split!r} is not one of {SPLITS}")
    for side in (info.query, info.target):
        if side not in MODALITIES:
            raise ValueError(f"{info.name}: modality {side!r} is not one of {MODALITIES}")
    known = REGISTRY.get(info.name)
    if known is not None and known != info:
        raise ValueError(f"dataset {info.name!r} is already registered with different settings: {known}")
    REGISTRY[info.name] = info
    return info


def _ensure_shapesworld() -> None:
    """Register ShapesWorld's datasets once, on the first lookup that may need them."""
    global _shapesworld_loaded
    if _shapesworld_loaded:
        return
    from comalite.shapesworld import SHAPESWORLD_DATASETS  # deferred: keeps importing the registry light

    for info in SHAPESWORLD_DATASETS:
        register(info)
    _shapesworld_loaded = True


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered ``DatasetInfo`` called ``name``; a ``KeyError`` names the closest matches."""
    if name not in REGISTRY:
        _ensure_shapesworld()
    if name in REGISTRY:
        return REGISTRY[name]
    # Near misses are common (ImageNet_1K is the train name of ImageNet-1K; case; '-' vs '_').
    by_lower = {n.lower().replace("_", "-"): n for n in REGISTRY}
    close = difflib.get_close_matches(name.lower().replace("_", "-"), list(by_lower), n=5, cutoff=0.6)
    hint = ", ".join(by_lower[c] for c in close) if close else "none; see comalite.eval.registry.REGISTRY"
    raise UnknownDatasetError(f"unknown evaluation dataset {name!r}; close names: {hint}. A dataset of your own "
                              "needs an entry: comalite.eval.registry.register(DatasetInfo(...))")


def datasets(meta_task: str | None = None, split: str | None = None, source: str | None = None) -> list[DatasetInfo]:
    """Registered datasets, in registry order, filtered by meta-task, IND/OOD split and source.

    ``source="mmeb"`` never touches ShapesWorld; any other source (or ``None``, meaning all) loads it.
    """
    if meta_task is not None and meta_task not in META_TASKS:
        raise ValueError(f"meta_task {meta_task!r} is not one of {META_TASKS}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if source != "mmeb":
        _ensure_shapesworld()
    return [
        info
        for info in REGISTRY.values()
        if (meta_task is None or info.meta_task == meta_task)
        and (split is None or info.split == split)
        and (source is None or info.source == source)
    ]


# The 36 MMEB-V1 datasets: (name, meta_task, split, instruction, query, target).
_VQA = "Represent the given image with the following question:"
_MMEB_V1 = (
    # Classification: the query is an image, the candidates are the class names (the label set).
    ("ImageNet-1K", "classification", "IND", "Represent the given image for classification", "image", "text"),
    ("N24News", "classification", "IND",
     "Represent the given news image with the following caption for domain classification:", "image+text", "text"),
    ("HatefulMemes", "classification", "IND",
     "Represent the given image for binary classification to determine whether it constitutes hateful speech or not",
     "image", "text"),
    ("VOC2007", "classification", "IND", "Identify the object shown in the image", "image", "text"),
    ("SUN397", "classification", "IND", "Identify the scene shown in the image", "image", "text"),
    ("Place365", "classification", "OOD", "Identify the scene shown in the image", "image", "text"),
    ("ImageNet-A", "classification", "OOD", "Represent the given image for classification", "image", "text"),
    ("ImageNet-R", "classification", "OOD", "Represent the given image for classification", "image", "text"),
    ("ObjectNet", "classification", "OOD", "Identify the object shown in the image", "image", "text"),
    ("Country211", "classification", "OOD", "Identify the country depicted in the image", "image", "text"),
    # VQA: image + question -> the answer among 1000 answers.
    ("OK-VQA", "vqa", "IND", _VQA, "image+text", "text"),
    ("A-OKVQA", "vqa", "IND", _VQA, "image+text", "text"),
    ("DocVQA", "vqa", "IND", _VQA, "image+text", "text"),
    ("InfographicsVQA", "vqa", "IND", _VQA, "image+text", "text"),
    ("ChartQA", "vqa", "IND", _VQA, "image+text", "text"),
    ("Visual7W", "vqa", "IND", _VQA, "image+text", "text"),
    ("ScienceQA", "vqa", "OOD", _VQA, "image+text", "text"),
    ("VizWiz", "vqa", "OOD", _VQA, "image+text", "text"),
    ("GQA", "vqa", "OOD", _VQA, "image+text", "text"),
    ("TextVQA", "vqa", "OOD", _VQA, "image+text", "text"),
    # Retrieval.
    ("VisDial", "retrieval", "IND",
     "Represent the given dialogue about an image, which is used for image retrieval:", "text", "image"),
    ("CIRR", "retrieval", "IND",
     "Given an image, find a similar everyday image with the described changes:", "image+text", "image"),
    ("VisualNews_t2i", "retrieval", "IND", "Retrieve an image of this news caption.", "text", "image"),
    ("VisualNews_i2t", "retrieval", "IND", "Find a caption for the news in the given photo.", "image", "text"),
    ("MSCOCO_t2i", "retrieval", "IND", "Find me an everyday image that matches the given caption:", "text", "image"),
    ("MSCOCO_i2t", "retrieval", "IND", "Find an image caption describing the given everyday image.", "image", "text"),
    ("NIGHTS", "retrieval", "IND", "Find a day-to-day image that looks similar to the provided image.", "image", "image"),
    ("WebQA", "retrieval", "IND", "Find a Wikipedia image that answers this question:", "text", "image+text"),
    ("OVEN", "retrieval", "OOD",
     "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image:",
     "image+text", "image+text"),
    ("FashionIQ", "retrieval", "OOD", "Find an image to match the fashion image and style note:", "image+text", "image"),
    ("EDIS", "retrieval", "OOD", "Find a news image that matches the provided caption:", "text", "image+text"),
    ("Wiki-SS-NQ", "retrieval", "OOD", "Find the document image that can answer the given query:", "text", "image"),
    # Grounding: image + a description of a region -> the crop (RefCOCO-Matching: crop + its description).
    ("MSCOCO", "grounding", "IND", "Select the portion of the image that isolates the object labeled as",
     "image+text", "image"),
    ("RefCOCO", "grounding", "OOD", "Select the portion of the image that follows the language expressions.",
     "image+text", "image"),
    ("RefCOCO-Matching", "grounding", "OOD", "Select the portion of the image that follows the language expressions:",
     "image+text", "image+text"),
    ("Visual7W-Pointing", "grounding", "OOD", "Select the portion of the image that answers the question",
     "image+text", "image"),
)
MMEB_V1_NAMES: tuple[str, ...] = tuple(row[0] for row in _MMEB_V1)
"""The 36 MMEB-V1 dataset names, in the order of the MMEB tables."""

for _row in _MMEB_V1:
    register(DatasetInfo(*_row, source="mmeb"))
