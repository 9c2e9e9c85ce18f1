"""One call turns a checkpoint into a trainable model: ``load_backbone(ModelConfig(...))``.

What it does, in order (each step is a flag in ``ModelConfig``):
1. resolve the checkpoint: ``"tiny"`` (built in code on first use), a local folder, or a hub id;
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
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .compression import CompressionTokens
from .config import ModelConfig
from .mask import additive_mask
from .processor import VLProcessor

log = logging.getLogger(__name__)

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def resolve_device(name: str = "auto") -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it; fp32 elsewhere (fp16 Qwen2-VL has a NaN history, and CPUs gain little)."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"model.dtype must be auto, {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def resolve_checkpoint(backbone: str) -> Path | str:
    """``tiny`` (``tiny-smoke``) -> the cached tiny VLM (built if missing); a folder -> itself; else a hub id."""
    if backbone in ("tiny", "tiny-smoke"):
        from .tiny import ensure_tiny_vlm

        return ensure_tiny_vlm(smoke=backbone == "tiny-smoke")
    path = Path(backbone).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers checkpoint folder")
        return path
    if backbone.startswith((".", "/", "~")):
        raise FileNotFoundError(f"checkpoint folder {backbone} does not exist")
    return backbone


def _offline_error(backbone: str, err: Exception) -> OSError:
    return OSError(
        f"could not load checkpoint '{backbone}': it is not a local folder and could not be fetched from the "
        f"Hugging Face hub ({type(err).__name__}: {err}). Offline? Download it once where there is network "
        f"(`huggingface-cli download {backbone} --local-dir /some/folder`) and pass the folder instead: "
        f"`--set model.backbone=/some/folder`."
    )


def lora_config(cfg: ModelConfig) -> LoraConfig:
    """LoRA on the language model's projections only (regex: the ViT's qkv/proj/fc1/fc2 never match)."""
    targets = "|".join(cfg.lora_targets)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      use_dora=cfg.use_dora, target_modules=rf".*language_model.*\.({targets})", bias="none")


def _keep_4bit_trainable_on_cpu(model: nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for a faster CPU kernel the first time a layer runs in eval mode,
    and a layer with a bias then fails in training mode (an in-place add on a leaf). Stages evaluate
    between training steps, so comalite keeps the trainable layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@dataclass
class Backbone:
    """A loaded VLM with its processor, adapters and compression rows. ``hf`` is the transformers model
    (adapters are injected into it in place); ``model`` is the PEFT wrapper when adapters exist."""

    model: nn.Module
    hf: nn.Module
    processor: VLProcessor
    compression: CompressionTokens
    config: ModelConfig
    adapters: tuple[str, ...]
    trainable_adapter: str | None

    @property
    def core(self) -> nn.Module:
        """The decoder with the vision tower, without ``lm_head`` (returns hidden states)."""
        return self.hf.model

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    @property
    def device(self) -> torch.device:
        return self.compression.rows.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def train(self, mode: bool = True) -> "Backbone":
        self.model.train(mode)
        return self

    def eval(self) -> "Backbone":
        return self.train(False)

    def hidden_states(self, batch: dict[str, torch.Tensor], allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, L, H) of a collated batch, never computing the LM head.

        ``allowed`` is an optional (B, L, L) boolean attention matrix (``comalite.mask``); without it the
        model uses its ordinary causal mask with the batch's padding. Position ids always come from the
        model's own rope-index function (3D M-RoPE for images).
        """
        dev = self.device
        ids = batch["input_ids"].to(dev)
        pad_mask = batch["attention_mask"].to(dev)
        mm_types = (ids == self.processor.image_pad_id).int()
        grid = batch.get("image_grid_thw")
        grid = grid.to(dev) if grid is not None else None
        position_ids, _ = self.core.get_rope_index(ids, mm_token_type_ids=mm_types, image_grid_thw=grid,
                                                   attention_mask=pad_mask)
        mask = pad_mask if allowed is None else additive_mask(allowed.to(dev), self.dtype)
        pixels = batch.get("pixel_values")
        out = self.core(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                        pixel_values=pixels.to(dev, self.dtype) if pixels is not None else None,
                        image_grid_thw=grid, mm_token_type_ids=mm_types, use_cache=False)
        return out.last_hidden_state

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by name (the trainable adapter and the compression rows)."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.compression.rows.requires_grad:
            params["compression.rows"] = self.compression.rows
        return params

    def summary(self) -> dict:
        """Trainable and total parameter counts, which modules carry adapters, how many are 4-bit."""
        import bitsandbytes as bnb

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
            self.model.save_pretrained(str(folder / "adapters"), selected_adapters=[self.trainable_adapter])
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
    if device.type == "cpu" and cfg.cpu_threads:
        # Tiny matrices gain little from threads, and on a shared CPU a parallel region waits for
        # descheduled threads: 10-100x slower steps (benchmarks/README.md).
        torch.set_num_threads(cfg.cpu_threads)
    dtype = resolve_dtype(cfg.dtype, device)
    saved_rows = CompressionTokens.load(compression_from) if compression_from else None
    n_compress = len(saved_rows.token_ids) if saved_rows is not None else cfg.n_compress
    try:
        processor = VLProcessor.from_pretrained(checkpoint, n_compress=n_compress,
                                                min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        hf_config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    except OSError as err:
        raise _offline_error(cfg.backbone, err) from err
    if hf_config.model_type not in MODEL_CLASSES:
        raise ValueError(f"{cfg.backbone} is a '{hf_config.model_type}' model; comalite supports "
                         f"{', '.join(MODEL_CLASSES)} (Qwen2-VL and Qwen2.5-VL)")
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
        _keep_4bit_trainable_on_cpu(hf)
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
    backbone = Backbone(model, hf, processor, compression, cfg, tuple(names), train_adapter)
    log.info("loaded %s: %s", cfg.backbone, backbone.summary())
    return backbone

