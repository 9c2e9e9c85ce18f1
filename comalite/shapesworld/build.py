"""The built dataset: the registry entries, the image writer, one example builder per task and
``build_shapesworld``, which writes the stage-1, train and eval files."""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from comalite.data.writers import write_dialogues, write_eval_dataset, write_train_subset
from comalite.records import DatasetInfo, Dialogue, Turn

from .asking import heldout_vqa_questions, pick_question, qa_dialogue
from .language import (ANSWERS, CLASSIFY, COUNT, COUNT_LABELS, CROP_TARGET, DESCRIBE, GROUND, I2T, IMAGE_TARGET,
                       OBJECT_LABELS, T2I, VQA, scene_questions, refer, check_language, describe)
from .render import render_crop, render
from .scene import HELDOUT_COMBOS, MAX_OBJECTS, NUMBER_WORDS, Scene, perturb, with_heldout, sample_scene


def _info(name, meta_task, split, instruction, query, target) -> DatasetInfo:
    return DatasetInfo(name, meta_task, split, instruction, query, target, source="shapesworld")


SHAPESWORLD_DATASETS: tuple[DatasetInfo, ...] = (
    _info("SW-Count", "classification", "IND", COUNT, "image", "text"),
    _info("SW-Object", "classification", "IND", CLASSIFY, "image", "text"),
    _info("SW-Count-Outline", "classification", "OOD", COUNT, "image", "text"),
    _info("SW-Object-Heldout", "classification", "OOD", CLASSIFY, "image", "text"),
    _info("SW-VQA", "vqa", "IND", VQA, "image+text", "text"),
    _info("SW-VQA-Heldout", "vqa", "OOD", VQA, "image+text", "text"),
    _info("SW-T2I", "retrieval", "IND", T2I, "text", "image"),
    _info("SW-I2T", "retrieval", "IND", I2T, "image", "text"),
    _info("SW-T2I-Outline", "retrieval", "OOD", T2I, "text", "image"),
    _info("SW-Ground", "grounding", "IND", GROUND, "image+text", "image"),
    _info("SW-Ground-Heldout", "grounding", "OOD", GROUND, "image+text", "image"),
)
# name -> (task, style, built around a held-out combination). Training subsets: the IND datasets.
_VARIANTS = {
    "SW-Count": ("count", "flat", False), "SW-Object": ("object", "flat", False),
    "SW-Count-Outline": ("count", "outline", False), "SW-Object-Heldout": ("object", "flat", True),
    "SW-VQA": ("vqa", "flat", False), "SW-VQA-Heldout": ("vqa", "flat", True),
    "SW-T2I": ("t2i", "flat", False), "SW-I2T": ("i2t", "flat", False), "SW-T2I-Outline": ("t2i", "outline", False),
    "SW-Ground": ("ground", "flat", False), "SW-Ground-Heldout": ("ground", "flat", True),
}
TRAIN_SUBSETS = tuple(d.name for d in SHAPESWORLD_DATASETS if d.split == "IND")


@dataclass
class _Example:
    """One query, its positive and its negatives (hardest first) as (text, image path) pairs; the first
    ``n_hard`` negatives are near-copies of the positive (the same scene, one detail changed)."""

    query: tuple[str, str]
    positive: tuple[str, str]
    negatives: list[tuple[str, str]]
    full_label_set: bool = False  # classification: every label is a candidate, as in MMEB
    n_hard: int = 0


class _Writer:
    """Samples scenes that are new to the whole build, renders and saves them, and indexes every image."""

    def __init__(self, images_dir: Path, size: int):
        self.images_dir, self.size = images_dir, size
        self.seen: set[Scene] = set()
        self.index: list[dict] = []
        self._folders: set[Path] = set()

    def new_scene(self, rng, **kwargs) -> Scene:
        # Stage-1, train and eval images must be different scenes; a repeat is redrawn.
        while True:
            scene = sample_scene(rng, **kwargs)
            if scene not in self.seen:
                self.seen.add(scene)
                return scene

    def save(self, scene: Scene, rel: str, part: str, obj: int | None = None) -> str:
        """Write the scene (or the crop of its object ``obj``) to ``images/rel``; returns ``rel``."""
        path = self.images_dir / rel
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        image = render(scene, self.size) if obj is None else render_crop(scene, obj, self.size)
        image.save(path, format="PNG", compress_level=1)  # fast; PNG stores no timestamp, so bytes repeat
        self.index.append({"image": rel, "part": part, "object": obj, "scene": _scene_dict(scene)})
        return rel


def _scene_dict(scene: Scene) -> dict:
    """The scene as plain JSON data (``dataclasses.asdict`` is ~10x slower on thousands of scenes)."""
    return {"objects": [vars(o).copy() for o in scene.objects], "style": scene.style,
            "background": {**vars(scene.background), "colors": list(scene.background.colors)}}


def _scene_for(w: _Writer, rng, style: str, heldout: bool, n_objects=None) -> tuple[Scene, int]:
    """A fresh scene and the index of its target object (a held-out combination when ``heldout``)."""
    while True:
        scene = w.new_scene(rng, n_objects=n_objects, style=style)
        if not heldout:
            return scene, int(rng.integers(len(scene.objects)))
        scene, k = with_heldout(scene, rng)
        if scene not in w.seen:
            w.seen.add(scene)
            return scene, k


def _classify_examples(w: _Writer, rng, task, pool, part, n, style, heldout) -> list[_Example]:
    """Count the objects (labels "one".."four") or name a lone object ("red circle"); every label is a
    candidate, as in MMEB classification. Negatives are ordered hardest first (for the training row)."""
    examples = []
    for i in range(n):
        if task == "count":
            scene, _ = _scene_for(w, rng, style, heldout, n_objects=i % MAX_OBJECTS + 1)  # balanced classes
            count = len(scene.objects)
            label = NUMBER_WORDS[count]
            others = sorted((word for word in COUNT_LABELS if word != label),
                            key=lambda word: (abs(NUMBER_WORDS.index(word) - count), rng.random()))
            instruction = COUNT
        else:
            scene, _ = _scene_for(w, rng, style, heldout, n_objects=1)
            obj = scene.objects[0]
            label = obj.label
            # Training never names a held-out combination, not even as a negative.
            labels = [name for name in OBJECT_LABELS if name != label and
                      (part == "eval" or tuple(name.split()) not in HELDOUT_COMBOS)]
            others = sorted(labels, key=lambda name: (obj.color not in name.split() and obj.shape not in name.split(),
                                                      rng.random()))
            instruction = CLASSIFY
        image = w.save(scene, f"{pool}/{i:05d}.png", part)
        negatives = [(other, "") for other in others]
        examples.append(_Example((instruction, image), (label, ""), negatives, full_label_set=True))
    return examples


def _vqa_examples(w: _Writer, rng, pool, part, n, style, heldout, language: int = 1) -> list[_Example]:
    """One question per image; the candidates are the other answers of the same kind (colors, counts...).
    Language 2 balances the answers (``asking._pick_balanced``), held-out VQA's too (``heldout_vqa_questions``)."""
    examples = []
    for i in range(n):
        scene, k = _scene_for(w, rng, style, heldout)
        questions = heldout_vqa_questions(scene, k, language) if heldout else scene_questions(scene)
        q = pick_question(rng, questions, language)
        others = [a for a in ANSWERS[q.answers] if a != q.turn.answer]
        others = [others[int(j)] for j in rng.permutation(len(others))]
        image = w.save(scene, f"{pool}/{i:05d}.png", part)
        examples.append(_Example((VQA + q.turn.question, image), (q.turn.answer, ""), [(a, "") for a in others]))
    return examples


def _retrieval_examples(w: _Writer, rng, task, pool, part, n, style, heldout, n_candidates) -> list[_Example]:
    """Description -> image (``t2i``) or image -> description (``i2t``). Negatives: perturbed copies of the
    scene (one change each, hard), then other scenes of the pool (eval only)."""
    scenes = [_scene_for(w, rng, style, heldout)[0] for _ in range(n)]
    images = [w.save(s, f"{pool}/{i:05d}.png", part) for i, s in enumerate(scenes)]
    texts = [describe(s) for s in scenes]
    n_hard = 1 if part == "train" else (n_candidates - 1) // 2
    examples = []
    for i, scene in enumerate(scenes):
        hard: list[Scene] = []
        while len(hard) < n_hard:
            other = perturb(scene, rng, allow_heldout=heldout)
            if other not in w.seen and describe(other) not in {describe(h) for h in hard}:
                w.seen.add(other)
                hard.append(other)
        easy: list[int] = []
        if part == "eval":  # other scenes, none described like the truth, a near-copy or each other
            taken = {texts[i]} | {describe(h) for h in hard}
            for j in rng.permutation(n):
                if len(easy) < n_candidates - 1 - n_hard and texts[j] not in taken:
                    taken.add(texts[j])
                    easy.append(int(j))
        if task == "t2i":
            negs = [(IMAGE_TARGET, w.save(h, f"{pool}/{i:05d}_neg{m}.png", part)) for m, h in enumerate(hard)]
            negs += [(IMAGE_TARGET, images[j]) for j in easy]
            examples.append(_Example((T2I + texts[i], ""), (IMAGE_TARGET, images[i]), negs, n_hard=n_hard))
        else:
            negs = [(describe(h), "") for h in hard] + [(texts[j], "") for j in easy]
            examples.append(_Example((I2T, images[i]), (texts[i], ""), negs, n_hard=n_hard))
    return examples


def _ground_examples(w: _Writer, rng, pool, part, n, style, heldout, n_candidates) -> list[_Example]:
    """Image + referring expression -> the crop of that object. Negatives: crops of the image's other
    objects (near-copies: the same scene and background, another object), then (eval only) crops of other
    images' objects that do not look like the target."""
    picks = []
    while len(picks) < n:
        scene, k = _scene_for(w, rng, style, heldout, n_objects=int(rng.integers(2, MAX_OBJECTS + 1)))
        look = (scene.objects[k].color, scene.objects[k].shape, scene.objects[k].size)
        # A twin in the same image would give two indistinguishable crops (and no name): draw again.
        if sum((o.color, o.shape, o.size) == look for o in scene.objects) == 1:
            picks.append((scene, k))
    images = [w.save(s, f"{pool}/{i:05d}.png", part) for i, (s, _) in enumerate(picks)]
    crops: dict[tuple[int, int], str] = {}

    def crop(i: int, m: int) -> tuple[str, str]:
        if (i, m) not in crops:
            crops[i, m] = w.save(picks[i][0], f"{pool}/{i:05d}_obj{m}.png", part, obj=m)
        return CROP_TARGET, crops[i, m]

    examples = []
    for i, (scene, k) in enumerate(picks):
        target = scene.objects[k]
        same = [int(m) for m in rng.permutation(len(scene.objects)) if m != k]
        negs = [crop(i, m) for m in (same[:1] if part == "train" else same)]
        if part == "eval":
            for j in rng.permutation(n):
                if len(negs) >= n_candidates - 1:
                    break
                m = int(rng.integers(len(picks[j][0].objects)))
                o = picks[j][0].objects[m]
                if j != i and (o.color, o.shape, o.size) != (target.color, target.shape, target.size):
                    negs.append(crop(int(j), m))
        query = (f'{GROUND} "{refer(scene, target)}"', images[i])
        examples.append(_Example(query, crop(i, k), negs, n_hard=min(len(same), len(negs))))
    return examples


def _build_task(w: _Writer, rng, name: str, part: str, n: int, n_candidates: int,
                language: int = 1) -> list[_Example]:
    """``n`` examples of the dataset/subset ``name``, images saved under ``<part>/<name>/``."""
    task, style, heldout = _VARIANTS[name]
    pool = f"{part}/{name}"
    if task in ("count", "object"):
        return _classify_examples(w, rng, task, pool, part, n, style, heldout)
    if task == "vqa":
        return _vqa_examples(w, rng, pool, part, n, style, heldout, language)
    if task in ("t2i", "i2t"):
        return _retrieval_examples(w, rng, task, pool, part, n, style, heldout, n_candidates)
    return _ground_examples(w, rng, pool, part, n, style, heldout, n_candidates)


def _train_row(e: _Example) -> dict:
    neg = e.negatives[0] if e.negatives else ("", "")
    return {"qry": e.query[0], "qry_image_path": e.query[1], "pos_text": e.positive[0],
            "pos_image_path": e.positive[1], "neg_text": neg[0], "neg_image_path": neg[1]}


def _eval_row(e: _Example, rng, n_candidates: int) -> dict:
    """The MMEB-eval row: the truth, then the near-copies, then the other negatives, each group shuffled;
    ``n_hard`` says how many near-copies follow the truth."""
    negs = e.negatives if e.full_label_set else e.negatives[: n_candidates - 1]
    n_hard = min(e.n_hard, len(negs))
    order = [int(j) for j in rng.permutation(len(negs))]
    candidates = [e.positive] + [negs[j] for j in order if j < n_hard] + [negs[j] for j in order if j >= n_hard]
    return {"qry_text": e.query[0], "qry_img_path": e.query[1],
            "tgt_text": [t for t, _ in candidates], "tgt_img_path": [p for _, p in candidates], "n_hard": n_hard}


FORMAT = 4
"""The layout of a built folder. 2: eval rows say how many near-copies follow the truth (``n_hard``); 3: no
retrieval row holds two candidates with the same description; 4: language 2's held-out VQA asks no question whose
answer the held-out object gives away (``asking.GIVEN_AWAY``), so its questions, and its scenes after the first,
differ from 3's. A folder of another format is rebuilt, never read as if it had the new fields."""


def _rng(seed: int, part: str) -> np.random.Generator:
    # One stream per part, so e.g. a bigger stage-1 set does not change the eval sets.
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def build_shapesworld(out_dir, *, seed: int = 0, n_stage1_images: int = 2000, n_train_per_subset: int = 1000,
                      n_eval_queries: int = 100, n_candidates: int = 10, image_size: int = 112,
                      n_turns: tuple[int, int] = (3, 5), language: int = 1) -> dict:
    """Write the ShapesWorld data under ``out_dir`` and return its manifest.

    Layout (every image path in the files is relative to ``out_dir/images``)::

        images/...png                    stage-1, train and eval images: all different scenes
        scenes.jsonl                     what each image shows (scene, and the object for a crop)
        stage1/dialogues.jsonl           one image and 3-5 QA turns per line (half open with a description;
                                         language 2: close with it)
        train/<Subset>/original.parquet  MMEB-train schema, the IND tasks, one hard negative per row
        eval/<Dataset>/test.parquet      MMEB-eval schema, candidate 0 is the truth, then ``n_hard``
                                         near-copies of it (retrieval: perturbed scenes; grounding: the
                                         image's other objects), then other scenes'
        manifest.json                    parameters, counts, file sizes, datasets

    Deterministic in ``seed``. The whole folder is built aside and renamed into place; if ``manifest.json``
    already holds the same parameters and ``FORMAT``, nothing is rebuilt. ``language`` (``DataConfig.language``): 1 = the
    questions the shipped tiny VLM was built on; 2 = balanced answers and leak-free stage-1 dialogues (the
    description, if any, is the last turn). It is in the manifest's parameters unless 1 (so a folder built
    before it existed still counts as language 1), so switching it rebuilds the folder.
    """
    check_language(language)
    if image_size % 28 or image_size <= 0:
        raise ValueError(f"image_size must be a positive multiple of 28 (Qwen2-VL's merged patch), got {image_size}")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be at least 2, got {n_candidates}")
    if not 1 <= n_turns[0] <= n_turns[1]:
        raise ValueError(f"n_turns must be (low, high) with 1 <= low <= high, got {n_turns}")
    if min(n_stage1_images, n_train_per_subset) < 1 or n_eval_queries < n_candidates:
        raise ValueError("need at least one stage-1 image and training row, and n_eval_queries >= n_candidates "
                         "(retrieval candidates come from the other queries)")
    out_dir = Path(out_dir)
    params = {"seed": seed, "n_stage1_images": n_stage1_images, "n_train_per_subset": n_train_per_subset,
              "n_eval_queries": n_eval_queries, "n_candidates": n_candidates, "image_size": image_size,
              "n_turns": list(n_turns), **({"language": language} if language != 1 else {})}
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params and manifest.get("format") == FORMAT:
            return manifest
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists, is not empty and holds no ShapesWorld manifest: not replacing it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _build(tmp, params)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build(root: Path, params: dict) -> dict:
    images_dir = root / "images"
    w = _Writer(images_dir, params["image_size"])
    counts = _write_data(w, root, params)
    with open(root / "scenes.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in w.index)

    files = sorted(p for p in root.rglob("*") if p.is_file() and images_dir not in p.parents)
    counts["images"] = {part: sum(e["part"] == part for e in w.index) for part in ("stage1", "train", "eval")}
    manifest = {
        "format": FORMAT,
        "params": params,
        "heldout_combos": [list(c) for c in HELDOUT_COMBOS],
        "heldout_style": "outline",
        "images": "images",
        "stage1": "stage1/dialogues.jsonl",
        "train": {name: f"train/{name}/original.parquet" for name in TRAIN_SUBSETS},
        "eval": {d.name: f"eval/{d.name}/test.parquet" for d in SHAPESWORLD_DATASETS},
        "datasets": [asdict(d) for d in SHAPESWORLD_DATASETS],
        "counts": counts,
        "bytes": {**{p.relative_to(root).as_posix(): p.stat().st_size for p in files},
                  "images": sum(p.stat().st_size for p in images_dir.rglob("*.png"))},
    }
    # Written last: its presence marks a complete build.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_data(w: _Writer, root: Path, params: dict) -> dict:
    """Sample every scene and write the stage-1, train and eval files; returns the row counts."""
    seed, n_cand = params["seed"], params["n_candidates"]
    images_dir = w.images_dir

    rng = _rng(seed, "stage1")
    dialogues = []
    low, high = params["n_turns"]
    for i in range(params["n_stage1_images"]):
        scene = w.new_scene(rng)
        image = images_dir / w.save(scene, f"stage1/{i:05d}.png", "stage1")
        n = int(rng.integers(low, high + 1))
        lead = (Turn(DESCRIBE, describe(scene)),) if rng.random() < 0.5 else ()
        language = params.get("language", 1)
        if language == 1:
            turns = lead + qa_dialogue(scene, rng, n - len(lead))
        else:  # the description last: no later answer can be read off it
            turns = qa_dialogue(scene, rng, n - len(lead), language) + lead
        dialogues.append(Dialogue(turns=turns, image=str(image)))
    write_dialogues(dialogues, root / "stage1" / "dialogues.jsonl", images_dir)

    train_rows, eval_queries = {}, {}
    for name in TRAIN_SUBSETS:
        rng = _rng(seed, f"train/{name}")
        examples = _build_task(w, rng, name, "train", params["n_train_per_subset"], n_cand,
                               params.get("language", 1))
        write_train_subset([_train_row(e) for e in examples], root / "train" / name / "original.parquet")
        train_rows[name] = len(examples)
    for info in SHAPESWORLD_DATASETS:
        rng = _rng(seed, f"eval/{info.name}")
        examples = _build_task(w, rng, info.name, "eval", params["n_eval_queries"], n_cand,
                               params.get("language", 1))
        write_eval_dataset([_eval_row(e, rng, n_cand) for e in examples], root / "eval" / info.name / "test.parquet")
        eval_queries[info.name] = len(examples)

    return {"stage1_dialogues": len(dialogues), "train_rows": train_rows, "eval_queries": eval_queries}
