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

A dataset of your own, in the MMEB-eval layout under another name, is described where it is evaluated
(``dataset_info``): by the setting ``eval.meta_tasks`` or by a ``dataset.json`` beside its data, e.g.
``{"meta_task": "classification"}`` (optional: ``split``, default OOD, since nothing trained on it;
``query``/``target``, default what its first row holds; ``instruction``). Its ``source`` is ``"user"``.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

from comalite.atomic import read_json_object
from comalite.errors import ConfigError, DataFormatError, UnknownDatasetError
from comalite.records import META_TASKS, DatasetInfo, EmbedInput, EvalDataset

SPLITS = ("IND", "OOD")
MODALITIES = ("image", "text", "image+text")
USER_FILE = "dataset.json"
"""The file beside a dataset of your own that says what it measures (see the module docstring)."""

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


def _registered(name: str) -> DatasetInfo | None:
    """The registered entry called ``name`` (ShapesWorld's registered first if needed), or None."""
    if name not in REGISTRY:
        _ensure_shapesworld()
    return REGISTRY.get(name)


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered ``DatasetInfo`` called ``name``; a ``KeyError`` names the closest matches."""
    info = _registered(name)
    if info is not None:
        return info
    hint = _close_names(name) or "none; see comalite.eval.registry.REGISTRY"
    raise UnknownDatasetError(f"unknown evaluation dataset {name!r}; close names: {hint}. A dataset of your own "
                              "needs its meta-task: --set eval.meta_tasks=<name>=classification, or a dataset.json "
                              "beside its data (data/README.md)")


def _close_names(name: str) -> str:
    """Registered names close to ``name``, comma-separated ("" if none)."""
    # Near misses are common (ImageNet_1K is the train name of ImageNet-1K; case; '-' vs '_').
    by_lower = {n.lower().replace("_", "-"): n for n in REGISTRY}
    close = difflib.get_close_matches(name.lower().replace("_", "-"), list(by_lower), n=5, cutoff=0.6)
    return ", ".join(by_lower[c] for c in close)


def _holds(items: list[EmbedInput]) -> str:
    """What one side of a dataset holds, as a modality. A text that every item shares is an instruction,
    not content: MMEB calls ImageNet-1K's queries ``image`` although each carries the same instruction."""
    image = any(item.image for item in items)
    text = not image or len({item.text for item in items}) > 1
    return "image+text" if image and text else "image" if image else "text"


def _user_info(data: EvalDataset, fields: dict, where: str) -> DatasetInfo:
    """A ``source="user"`` entry from ``fields`` (meta_task, and optionally split, query, target,
    instruction); ``where`` names the file or setting they came from, for the message."""
    choices = {"meta_task": META_TASKS, "split": SPLITS, "query": MODALITIES, "target": MODALITIES}
    unknown = set(fields) - {*choices, "instruction"}
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: instruction, "
                              f"{', '.join(choices)}")
    values = {"split": "OOD", "instruction": "", "query": _holds([q.query for q in data.queries]),
              "target": _holds([q.candidates[0] for q in data.queries]), **fields}
    for field, allowed in choices.items():
        if values.get(field) not in allowed:
            raise DataFormatError(f"{where}: field '{field}' is {values.get(field)!r}; choose one of "
                                  f"{', '.join(allowed)}")
    if not isinstance(values["instruction"], str):
        raise DataFormatError(f"{where}: field 'instruction' must be a string")
    return DatasetInfo(data.name, values["meta_task"], values["split"], values["instruction"], values["query"],
                       values["target"], source="user")


def _user_file(path) -> dict:
    example = '{"meta_task": "classification"}'
    return read_json_object(path, f"a JSON object such as {example}", f"write e.g. {example}", DataFormatError)


def dataset_info(data: EvalDataset, meta_tasks: Mapping[str, str] | None = None) -> DatasetInfo:
    """The ``DatasetInfo`` of an evaluation dataset read from disk: the registry's entry for MMEB's (and
    ShapesWorld's) names; for a dataset of your own, its meta-task from ``meta_tasks`` (the setting
    ``eval.meta_tasks``) or from ``dataset.json`` in its folder (``data.source``), the setting winning.
    Anything else raises ``UnknownDatasetError`` saying how to describe it."""
    name, meta_tasks = data.name, meta_tasks or {}
    info = _registered(name)
    if info is not None:
        if name in meta_tasks:
            raise ConfigError(f"eval.meta_tasks.{name}: {name} is a registered dataset "
                              f"({info.meta_task}); the setting is for datasets of your own: drop it")
        return info
    file = data.source / USER_FILE if data.source is not None else None
    has_file = file is not None and file.is_file()
    fields = _user_file(file) if has_file else {}
    if name in meta_tasks:
        return _user_info(data, {**fields, "meta_task": meta_tasks[name]}, f"eval.meta_tasks.{name}")
    if has_file:
        return _user_info(data, fields, str(file))
    close = _close_names(name)
    raise UnknownDatasetError(
        f"unknown evaluation dataset {name!r}: not an MMEB or ShapesWorld name"
        + (f" (close names: {close})" if close else "") + ". To evaluate a dataset of your own, give "
        f"its meta-task ({', '.join(META_TASKS)}): --set eval.meta_tasks={name}=classification, or a file "
        f'{data.source or name}/{USER_FILE} holding {{"meta_task": "classification"}}')


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
