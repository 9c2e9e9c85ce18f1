"""Use a trained comalite model anywhere: a result folder exported for plain transformers + peft.

``export_model(result_dir, out_dir)`` writes a folder that loads without comalite:

- ``adapter_config.json`` + ``adapter_model.safetensors``: ONE peft LoRA adapter. A result's adapter stack
  (stage 2: the frozen stage-1 LoRA under the stage-2 LoRA, both active) adds its updates up,
  s1 B1 A1 + s2 B2 A2, which is exactly one LoRA of rank r1 + r2 with A = [A1; A2] (rows stacked),
  B = [s1 B1, s2 B2] (columns side by side) and scaling 1 (``lora_alpha = r``, no rsLoRA). The K
  compression rows travel in the same adapter as peft trainable tokens (``trainable_token_indices``): peft
  stores only those rows of the input embedding and writes them over the table's rows when it loads.
- the tokenizer with the K compression tokens and the image processor with the pixel budget of training;
- ``comalite_embedding.json``: how an input is built and pooled, and the quantization of training;
- ``README.md``: a model card whose snippet (transformers + peft + torch only) loads the folder and embeds.

Nothing is merged into the base weights: on a 4-bit base that would re-quantise every adapted layer
(``comalite.backbone``), so the export runs on the same nf4 base the model was trained on, and gives the
embeddings comalite gives (``tests/test_export.py``: to 1e-5 on the tiny model).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from .atomic import atomic_write_json, atomic_write_text
from .backbone import MODEL_CLASSES
from .checkpoints import NAMED_CHECKPOINTS, resolve_checkpoint
from .compression import CompressionTokens
from .embedding import IMAGE_INSTRUCTION
from .errors import ComaliteError
from .pooling import get_pooling
from .processor import IMAGE_PAD, VISION_END, VISION_START, VLProcessor, compression_token
from .records import IMAGE_PLACEHOLDER
from .result import model_config_of, pooling_of, read_result, verify_weights

EXPORT_INFO = "comalite_embedding.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LORA_KEYS = (".lora_A.weight", ".lora_B.weight")

SNIPPET = '''\
import torch
from PIL import Image
from peft import PeftModel
from transformers import AutoImageProcessor, AutoTokenizer, BitsAndBytesConfig, {model_class}

EXPORT, BASE = {export}, {base}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = {dtype}
{nf4}vlm = {model_class}.from_pretrained(BASE, dtype=DTYPE, device_map=DEVICE{quantization})
vlm = PeftModel.from_pretrained(vlm, EXPORT).get_base_model().eval()  # the adapter and the K rows, put in place
{fp32_4bit}tokenizer = AutoTokenizer.from_pretrained(EXPORT, padding_side="left")
pixels = AutoImageProcessor.from_pretrained(EXPORT, backend="pil")  # the PIL resizing of training
K = {k}  # compression tokens: they end every input; {pooling_comment}
COMPRESS = "".join(f"<|cmp_{{i}}|>" for i in range(K))


@torch.no_grad()
def embed(texts, images=None):
    """One unit vector per text; images[i] (a PIL image or None) goes where texts[i] says {placeholder}, else first."""
    images = images or [None] * len(texts)
    shown = [image for image in images if image is not None]
    vision = dict(pixels(images=shown, return_tensors="pt")) if shown else {{}}
    spans = iter("{vision_start}" + "{image_pad}" * (int(g.prod()) // pixels.merge_size**2) + "{vision_end}"
                 for g in vision.get("image_grid_thw", []))
    prompts = []
    for text, image in zip(texts, images):
        if image is not None:
            text = (text if "{placeholder}" in text else "{placeholder}" + text).replace("{placeholder}", next(spans))
        prompts.append(text + COMPRESS)
    batch = dict(tokenizer(prompts, padding=True, return_tensors="pt"), **vision)
    batch["mm_token_type_ids"] = (batch["input_ids"] == vlm.config.image_token_id).int()
    hidden = vlm.model(**{{k: v.to(DEVICE) for k, v in batch.items()}}).last_hidden_state  # no LM head
    return torch.nn.functional.normalize({pooled}.float(), dim=-1)


text_vectors = embed(["A red circle above a blue square."])
image_vectors = embed([{image_text}], [Image.open("photo.png").convert("RGB")])  # as comalite embeds a bare image
'''
"""The model card's snippet, filled in per export (``usage_snippet``); the tests run it as written."""


DTYPES = {"auto": 'torch.bfloat16 if DEVICE == "cuda" and torch.cuda.is_bf16_supported() else torch.float32',
          "bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}
"""``model.dtype`` of training -> the snippet's dtype (``auto``: comalite's choice, ``backbone.resolve_dtype``)."""

NF4 = ('nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,\n'
       '                         bnb_4bit_compute_dtype=DTYPE, llm_int8_skip_modules=["model.visual", "lm_head"])\n')
"""The nf4 setting ``comalite.backbone`` loads the base with: the same 4-bit weights give the same numbers."""

FP32_4BIT = ('for layer in vlm.modules():  # bitsandbytes\' bf16 CPU kernel (AVX512-BF16 CPUs) rounds: keep fp32, as trained\n'
             '    if hasattr(layer, "support_avx512bf16_for_cpu"):\n'
             '        layer.support_avx512bf16_for_cpu = False\n')
"""What ``comalite.backbone.keep_4bit_in_fp32`` does, for the snippet: the same numbers on every CPU."""

CARD = """\
# {name}: a comalite embedding model

A {stage} result of comalite (CoMa: compression pre-training, then contrastive tuning)
on `{base}`, exported from `{source}` to load with plain transformers + peft: no comalite needed.

- **Input**: the text as is (no chat template), the image's tokens where the text says `{placeholder}` (first
  if it says nothing), then the {k} compression tokens `<|cmp_0|>` .. `<|cmp_{last}|>`; padding on the left.
- **Embedding**: {pooling_words} of the last layer, L2-normalised.
- **Weights**: one LoRA adapter (rank {rank}, scaling 1: the adapter stack {stack} summed exactly) and the {k}
  compression-token rows of the input embedding (peft `trainable_token_indices`), on the base loaded
  {quantization_words} as in training.

```python
{snippet}```

`embed(texts, images)` returns one unit vector per text; compare them with a dot product. Notes:

- `BASE` is the checkpoint trained on; a local copy of it works the same (pass its folder).
- `photo.png` stands for any image. Images are resized within {min_pixels}..{max_pixels} pixels, as in training
  (`preprocessor_config.json`); `backend="pil"` keeps the PIL resizing even where torchvision is installed.
- transformers' `AutoProcessor` for Qwen2-VL needs torchvision (its video processor); the snippet needs only
  the tokenizer and the PIL image processor, so it runs without it.
- `comalite_embedding.json` holds the same recipe as data: K, the token string, pooling, the image span.
"""


def lora_scaling(config: dict) -> float:
    """peft's factor on ``B @ A`` for a saved adapter config: ``lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``)."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ComaliteError("the adapter has per-module ranks or alphas (rank_pattern/alpha_pattern): "
                            "comalite export handles one rank and alpha per adapter")
    r = config["r"]
    return config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)


def merge_lora_stack(stack: list[tuple[dict, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """One LoRA of scaling 1 computing the sum of a stack's updates: per module A = [A1; A2; ...] and
    B = [s1 B1, s2 B2, ...]. ``stack`` holds (adapter_config, adapter weights) pairs as peft saves them."""
    modules = None
    for config, weights in stack:
        if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("bias", "none") != "none":
            raise ComaliteError("comalite export merges plain LoRA adapters (no DoRA, no bias): this result's "
                                "adapters are not; use it through comalite (EmbeddingModel.load)")
        other = sorted(k for k in weights if not k.endswith(LORA_KEYS))
        names = {k.rsplit(".lora_", 1)[0] for k in weights if k.endswith(LORA_KEYS)}
        if other or (modules is not None and names != modules):
            raise ComaliteError(f"the adapters of this result adapt different modules or hold other weights "
                                f"({other[:2] or sorted(names ^ modules)[:2]}): comalite export needs one set")
        modules = names
    merged = {}
    for name in sorted(modules):
        merged[f"{name}.lora_A.weight"] = torch.cat([w[f"{name}.lora_A.weight"].float() for _, w in stack])
        merged[f"{name}.lora_B.weight"] = torch.cat([lora_scaling(c) * w[f"{name}.lora_B.weight"].float()
                                                     for c, w in stack], dim=1)
    return merged


def input_embedding(checkpoint: Path | str) -> tuple[str, int, str]:
    """The input embedding's module name and row count, and the model class, of a checkpoint: read from its
    config alone (the model is built on the meta device, no weights loaded)."""
    config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    model_class = MODEL_CLASSES[config.model_type]
    with torch.device("meta"):
        model = getattr(transformers, model_class)._from_config(config)
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding)
    return name, embedding.num_embeddings, model_class


def usage_snippet(export: str, base: str, *, model_class: str, k: int, pooling: str, quantization: str,
                  dtype: str) -> str:
    """The model card's code: loads the export with transformers + peft and embeds a text and an image."""
    nf4 = quantization == "nf4"
    return SNIPPET.format(
        export=json.dumps(export), base=json.dumps(base), model_class=model_class, k=k, dtype=DTYPES[dtype],
        nf4=NF4 if nf4 else "", fp32_4bit=FP32_4BIT if nf4 else "", pooled=get_pooling(pooling).snippet,
        quantization=", quantization_config=nf4" if nf4 else "",
        pooling_comment=f"the embedding is {get_pooling(pooling).words}", placeholder=IMAGE_PLACEHOLDER, image_text=repr(IMAGE_INSTRUCTION),
        vision_start=VISION_START, image_pad=IMAGE_PAD, vision_end=VISION_END)


def _replaceable(out_dir: Path) -> None:
    """An existing ``out_dir`` is replaced only when it is an earlier export or empty."""
    earlier_or_empty = out_dir.is_dir() and ((out_dir / EXPORT_INFO).exists() or not any(out_dir.iterdir()))
    if out_dir.exists() and not earlier_or_empty:
        raise ComaliteError(f"the output folder {out_dir} exists and is not a comalite export: choose another "
                            "folder or remove it")


def _check_base(base: str | None) -> None:
    """A ``base`` written as a local path (absolute, ``./``, ``~``, or more than one ``/``: a hub id is
    ``org/name``) must be a checkpoint folder: the export would name a base no one can load."""
    if not base:
        return
    looks_local = os.path.isabs(base) or base.startswith((".", "~")) or base.count("/") > 1 or os.path.exists(base)
    if not looks_local:
        return
    folder = Path(base).expanduser()
    if not folder.is_dir():
        raise ComaliteError(f"--base {folder}: no such folder. Give the checkpoint folder the model was trained on, "
                            "or a hub id (org/name), or leave --base out to name the one it was trained on")
    if not (folder / "config.json").is_file():
        raise ComaliteError(f"--base {folder}: not a checkpoint folder (no config.json in it). Give the folder "
                            "that holds the base model, or a hub id (org/name)")


def export_model(result_dir: str | Path, out_dir: str | Path, *, base: str | None = None) -> Path:
    """Write ``result_dir`` (a stage-1 or stage-2 result) into ``out_dir`` as a transformers + peft model (see
    the module doc). ``base`` is the checkpoint the export names (default: the one trained on; a named tiny
    checkpoint becomes its folder)."""
    result_dir, out_dir = Path(result_dir), Path(out_dir)
    _check_base(base)
    info = read_result(result_dir)
    verify_weights(result_dir, info)  # a damaged adapter must not be merged into an export silently
    cfg = model_config_of(result_dir)
    pooling = pooling_of(result_dir, info)
    _replaceable(out_dir)
    checkpoint = resolve_checkpoint(cfg.backbone)
    base = base or (str(checkpoint) if cfg.backbone in NAMED_CHECKPOINTS else cfg.backbone)
    rows = CompressionTokens.load(result_dir)
    k = len(rows.token_ids)
    processor = VLProcessor.for_model(checkpoint, cfg, k)
    embed_name, n_rows, model_class = input_embedding(checkpoint)
    if max(rows.token_ids) >= n_rows:  # comalite grew the table for them; peft cannot load rows past its end
        raise ComaliteError(f"{cfg.backbone}'s input embedding has {n_rows} rows, too few for the compression "
                            f"token ids up to {max(rows.token_ids)}: comalite export needs room for them")

    stack = [(json.loads((result_dir / rel / ADAPTER_CONFIG).read_text()),
              load_file(str(result_dir / rel / ADAPTER_WEIGHTS))) for _, rel in info["adapters"]]
    weights = merge_lora_stack(stack)
    weights[f"base_model.model.{embed_name}.token_adapter.trainable_tokens_delta"] = rows.rows.detach().float()
    rank = sum(c["r"] for c, _ in stack)
    adapter_config = {**stack[-1][0], "r": rank, "lora_alpha": rank, "use_rslora": False, "lora_dropout": 0.0,
                      "inference_mode": True, "base_model_name_or_path": base,
                      "trainable_token_indices": {embed_name.rsplit(".", 1)[-1]: rows.token_ids}}
    snippet = usage_snippet(str(out_dir), base, model_class=model_class, k=k, pooling=pooling,
                            quantization=cfg.quantization, dtype=cfg.dtype)
    card = CARD.format(
        name=out_dir.name, stage=info["stage"], base=base, source=result_dir, placeholder=IMAGE_PLACEHOLDER, k=k,
        last=k - 1, rank=rank, stack=" + ".join(name for name, _ in info["adapters"]), snippet=snippet,
        pooling_words=get_pooling(pooling).words,
        quantization_words="in 4-bit nf4 (double quant, vision tower and LM head unquantised)"
        if cfg.quantization == "nf4" else "unquantised", min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    embedding_info = {
        "source": str(result_dir), "stage": info["stage"], "base_model": base, "model_class": model_class,
        "n_compress": k, "compression_tokens": "".join(compression_token(i) for i in range(k)),
        "compression_token_ids": rows.token_ids, "pooling": pooling, "normalize": True, "padding_side": "left",
        "chat_template": False, "image_placeholder": IMAGE_PLACEHOLDER,
        "image_span": f"{VISION_START} + {IMAGE_PAD} x (t*h*w of image_grid_thw / merge_size**2) + {VISION_END}, "
                      f"at the placeholder (first when the text has none)",
        "quantization": cfg.quantization, "dtype": cfg.dtype, "min_pixels": cfg.min_pixels,
        "max_pixels": cfg.max_pixels, "adapter_stack": [name for name, _ in info["adapters"]], "lora_rank": rank}

    # Written beside the target, then swapped in: an interrupted export never leaves a half folder behind.
    out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        processor.tokenizer.padding_side = "left"
        processor.save_pretrained(tmp)
        save_file(weights, str(tmp / ADAPTER_WEIGHTS))
        atomic_write_json(adapter_config, tmp / ADAPTER_CONFIG)
        atomic_write_json(embedding_info, tmp / EXPORT_INFO)
        atomic_write_text(tmp / "README.md", card)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
