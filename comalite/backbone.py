"""One call turns a checkpoint into a trainable model: ``load_backbone(ModelConfig(...))``.

What it does, in order (each step is a flag in ``ModelConfig``):
1. resolve the checkpoint: ``"tiny"`` (shipped in ``data/``), a local folder, or a hub id;
2. load tokenizer + image processor without torchvision and add the K compression tokens;
3. load the VLM, optionally in bitsandbytes nf4 (double quant) with the vision tower and ``lm_head`` kept
   unquantised; everything frozen;
4. stack adapters: earlier stages' LoRA adapters frozen, plus one fresh trainable LoRA on the language
   model's projections only (the ViT's linears are named differently and stay frozen);
5. install the K trainable compression rows (``comalite.compression``), gradient checkpointing.

Stacking a frozen stage-1 adapter under a fresh stage-2 one is how comalite hands stage 1 to stage 2.
The paper merges the stage-1 LoRA into the weights instead; on a 4-bit base that merge would have to
re-quantise the merged weights (a lossy rounding of every layer), while the stack computes exactly what
stage 1 computed, for the price of one extra low-rank product per adapted layer.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import bitsandbytes as bnb
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .compression import CompressionTokens
from .config import ModelConfig
from .data.images import load_image
from .checkpoints import checkpoint_fingerprint, offline_error, resolve_checkpoint
from .errors import CheckpointError
from .mask import additive_mask
from .processor import VLProcessor
from .vision_cache import shared_cache

log = logging.getLogger(__name__)

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU (under ``torchrun``, the one of its local rank) if there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    return torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it; fp32 elsewhere (fp16 Qwen2-VL has a NaN history, and CPUs gain little)."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"model.dtype must be auto, {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def use_cpu_threads(n: int) -> None:
    """Torch's CPU threads: ``n``, else ``$COMALITE_CPU_THREADS``, else every core (the one place they are set).

    Several processes sharing a few cores each with a thread per core slow each other 10-100x (a parallel
    region waits for descheduled threads): give each one thread then (``COMALITE_CPU_THREADS=1``)."""
    n = n or int(os.environ.get("COMALITE_CPU_THREADS", 0)) or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def lora_config(cfg: ModelConfig) -> LoraConfig:
    """LoRA on the language model's projections only (regex: the ViT's qkv/proj/fc1/fc2 never match)."""
    targets = "|".join(cfg.lora_targets)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      use_dora=cfg.use_dora, target_modules=rf".*language_model.*\.({targets})", bias="none")


def keep_4bit_in_fp32(model: nn.Module) -> None:
    """Pin bitsandbytes' 4-bit layers to one CPU path: dequantise, then multiply in the compute dtype.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight the first time its layer runs in eval mode
    without gradients and from then on multiplies in bf16 (its ``gemv_4bit`` kernel casts the input and
    rounds the output to bf16): embeddings then move by ~1e-3 and depend on the CPU and on what shares the
    batch, and a repacked layer with a bias fails in training mode (an in-place add on a leaf). Elsewhere
    it never repacks. Keeping every CPU on the dequantise path gives the same numbers everywhere, in
    training and in evaluation (``tests/test_embedding.py`` pins it; the export's snippet does the same)."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@dataclass
class Backbone:
    """A loaded VLM with its processor, adapters and compression rows.

    ``hf`` is the transformers model; LoRA layers are injected into it in place. ``peft`` is the PEFT wrapper
    that manages them (None when the model carries no adapter).
    """

    hf: nn.Module
    peft: PeftModel | None
    processor: VLProcessor
    compression: CompressionTokens
    config: ModelConfig
    adapters: tuple[str, ...]
    trainable_adapter: str | None

    @property
    def visual(self) -> nn.Module:
        """The vision tower with its patch merger (frozen in stages 1 and 2)."""
        return self.hf.model.visual

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    @property
    def device(self) -> torch.device:
        return self.compression.rows.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    @property
    def training(self) -> bool:
        return self.hf.training

    def train(self, mode: bool = True) -> "Backbone":
        """Training mode, except the frozen adapters' dropout: a frozen stage-1 adapter must compute in stage 2
        exactly what stage 1 handed over (a merged adapter, as in the paper, has no dropout either)."""
        self.hf.train(mode)
        frozen = [name for name in self.adapters if name != self.trainable_adapter]
        for module in self.hf.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if isinstance(dropouts, nn.ModuleDict):
                for name in frozen:
                    if name in dropouts:
                        dropouts[name].eval()
        return self

    def eval(self) -> "Backbone":
        return self.train(False)

    def hidden_states(self, batch: dict[str, torch.Tensor], allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, L, H) of a collated batch, never computing the LM head.

        ``allowed`` is an optional (B, L, L) boolean attention matrix (``comalite.mask``); without it the
        model uses its ordinary causal mask with the batch's padding. Position ids always come from the
        model's own rope-index function (3D M-RoPE for images). A frozen vision tower runs without autograd:
        no backward pass ever goes through it (on the 2B that is 675M parameters of needless backward).
        """
        dev = self.device
        ids = batch["input_ids"].to(dev)
        pad_mask = batch["attention_mask"].to(dev)
        mm_types = (ids == self.processor.image_pad_id).int()
        grid = batch.get("image_grid_thw")
        grid = grid.to(dev) if grid is not None else None
        position_ids, _ = self.hf.model.get_rope_index(ids, mm_token_type_ids=mm_types, image_grid_thw=grid,
                                                       attention_mask=pad_mask)
        mask = pad_mask if allowed is None else additive_mask(allowed.to(dev), self.dtype)
        encoded = {}
        if "images" in batch:
            encoded["image"] = BaseModelOutputWithPooling(pooler_output=self.image_tokens(batch))
        out = self.hf.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, image_grid_thw=grid,
                            mm_token_type_ids=mm_types, mm_encoder_outputs=encoded, use_cache=False)
        return out.last_hidden_state

    def image_tokens(self, batch: dict) -> list[torch.Tensor]:
        """The merged image tokens the language model reads, (n_tokens, H) per image of a collated batch.

        A frozen vision tower runs without autograd (no backward ever goes through it) and, when the processor
        has a ``VisionCache``, once per image: cached images are looked up, the others encoded and cached.
        """
        grids, paths, pixels = batch["image_grid_thw"], batch["images"], batch["image_pixels"]
        trains = any(p.requires_grad for p in self.visual.parameters())
        cache = None if trains else self.processor.vision_cache
        tokens: list[torch.Tensor | None] = [None] * len(paths)
        if cache is not None:
            # An in-memory image (path None) has no file identity to cache it by.
            tokens = [hit[1] if path is not None and (hit := cache.get(path)) is not None else None for path in paths]
        todo = [i for i, t in enumerate(tokens) if t is None]
        if todo:
            # An image cached when its example was built may have been evicted since: encode it again.
            patches = [pixels[i] if pixels[i] is not None else self.processor.encode_image(load_image(paths[i]))[0]
                       for i in todo]
            with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
                out = self.hf.model.get_image_features(torch.cat(patches).to(self.device, self.dtype),
                                                       grids[todo].to(self.device), return_dict=True)
            for i, t in zip(todo, out.pooler_output):
                tokens[i] = t
                if cache is not None and paths[i] is not None:
                    cache.put(paths[i], grids[i], t)
        return tokens

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by name (the trainable adapter and the compression rows)."""
        params = {n: p for n, p in self.hf.named_parameters() if p.requires_grad}
        if self.compression.rows.requires_grad:
            params["compression.rows"] = self.compression.rows
        return params

    def summary(self) -> dict:
        """Trainable and total parameter counts, which modules carry adapters, how many are 4-bit."""
        total = sum(p.numel() for p in self.hf.parameters()) + self.compression.rows.numel()
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        adapted = sorted({n.rsplit(".", 1)[-1] for n, m in self.hf.named_modules() if hasattr(m, "lora_A")})
        n_adapted = sum(1 for _, m in self.hf.named_modules() if hasattr(m, "lora_A"))
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in self.hf.modules())
        return {"trainable_params": trainable, "total_params": total, "adapters": list(self.adapters),
                "trainable_adapter": self.trainable_adapter, "adapted_module_kinds": adapted,
                "adapted_modules": n_adapted, "linear4bit_modules": n4,
                "compression_tokens": len(self.compression.token_ids)}

    def save(self, folder: str | Path) -> None:
        """Write the trainable adapter (``adapters/<name>``) and the compression rows into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.trainable_adapter:
            self.peft.save_pretrained(str(folder / "adapters"), selected_adapters=[self.trainable_adapter])
        self.compression.save(folder)


def load_backbone(cfg: ModelConfig, *, adapters: list[tuple[str, str | Path]] = (),
                  train_adapter: str | None = "default", compression_from: str | Path | None = None,
                  train_compression: bool = True, seed: int = 0) -> Backbone:
    """Load ``cfg.backbone`` ready to train or embed.

    ``adapters`` are ``(name, folder)`` pairs of saved LoRA adapters, stacked frozen in that order;
    ``train_adapter`` names a fresh trainable LoRA added on top (None: no new adapter, e.g. to embed);
    ``compression_from`` is a result folder whose compression rows to start from (else they are
    initialised from the embedding table, seeded).
    """
    checkpoint = resolve_checkpoint(cfg.backbone)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        use_cpu_threads(cfg.cpu_threads)
    dtype = resolve_dtype(cfg.dtype, device)
    saved_rows = CompressionTokens.load(compression_from) if compression_from else None
    n_compress = len(saved_rows.token_ids) if saved_rows is not None else cfg.n_compress
    try:
        processor = VLProcessor.for_model(checkpoint, cfg, n_compress)
        hf_config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    except OSError as err:
        raise offline_error(cfg.backbone, err) from err
    if hf_config.model_type not in MODEL_CLASSES:
        raise CheckpointError(f"{cfg.backbone} is a '{hf_config.model_type}' model; comalite supports "
                              f"{', '.join(MODEL_CLASSES)} (Qwen2-VL and Qwen2.5-VL)")
    vision_identity = f"{checkpoint_fingerprint(cfg.backbone)}|{cfg.min_pixels}|{cfg.max_pixels}|{dtype}|{device}"
    processor.vision_cache = shared_cache(vision_identity, cfg.vision_cache_mb)
    model_class = getattr(transformers, MODEL_CLASSES[hf_config.model_type])
    kwargs = {"dtype": dtype, "attn_implementation": cfg.attn_implementation, "device_map": {"": str(device)}}
    if cfg.quantization == "nf4":
        # "model.visual", not "visual": names match from the start of the full module name.
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=["model.visual", "lm_head"])
    elif cfg.quantization != "none":
        raise ValueError(f"model.quantization must be 'nf4' or 'none', not {cfg.quantization!r}")
    hf = model_class.from_pretrained(str(checkpoint), **kwargs)
    if cfg.quantization == "nf4":
        keep_4bit_in_fp32(hf)
    if max(processor.compress_ids, default=0) >= hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(len(processor.tokenizer))
    hf.requires_grad_(False)
    if cfg.gradient_checkpointing:
        hf.activation_checkpointing_enable({"use_reentrant": False})

    model: nn.Module = hf
    names = []
    for name, folder in adapters:
        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(hf, str(folder), adapter_name=name, is_trainable=False)
        names.append(name)
    if train_adapter:
        with torch.random.fork_rng():  # LoRA A's init draws from torch's RNG: seed it, leave the caller's alone
            torch.manual_seed(seed)
            if isinstance(model, PeftModel):
                model.add_adapter(train_adapter, lora_config(cfg))
            else:
                model = get_peft_model(hf, lora_config(cfg), adapter_name=train_adapter)
        names.append(train_adapter)
    if isinstance(model, PeftModel):
        model.base_model.set_adapter(names)  # all active: their low-rank updates add up
        for pname, param in model.named_parameters():
            param.requires_grad = bool(train_adapter) and f".{train_adapter}." in pname and "lora_" in pname

    if saved_rows is not None:
        if saved_rows.token_ids != processor.compress_ids:
            raise ValueError(f"compression token ids in {compression_from} ({saved_rows.token_ids[:3]}...) differ "
                             f"from this tokenizer's ({processor.compress_ids[:3]}...): a different backbone?")
        compression = saved_rows
    else:
        compression = CompressionTokens.initialise(hf.get_input_embeddings(), processor.compress_ids, seed)
    compression.to(device)
    compression.rows.requires_grad_(train_compression)
    compression.attach(hf.get_input_embeddings())
    peft = model if isinstance(model, PeftModel) else None
    backbone = Backbone(hf, peft, processor, compression, cfg, tuple(names), train_adapter)
    log.info("loaded %s: %s", cfg.backbone, backbone.summary())
    return backbone

