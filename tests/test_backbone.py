"""The backbone loader on the tiny model: 4-bit layout, adapters, trainable rows, save/reload, errors."""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.errors import CheckpointError
from comalite.objective import lm_loss
from comalite.records import Dialogue, Turn
from comalite.sequence import collate, dialogue_example


def _cfg(checkpoint, **kw):
    base = dict(backbone=str(checkpoint), n_compress=4, max_pixels=12544, min_pixels=3136)
    return ModelConfig(**{**base, **kw})


def _batch(backbone, data_root):
    images = sorted((data_root / "images").rglob("*.png"))[:2]
    examples = [dialogue_example(backbone.processor, Dialogue(turns=(Turn("How many objects?", "two"),), image=str(p)),
                                 prompt="Summarize above image.", text_prompt="") for p in images]
    return collate(examples, backbone.processor.tokenizer.pad_token_id)


def test_nf4_quantises_the_language_model_only(tiny_checkpoint):
    backbone = load_backbone(_cfg(tiny_checkpoint, quantization="nf4"))
    layers = backbone.hf.config.text_config.num_hidden_layers
    quantised = [n for n, m in backbone.hf.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == layers * 7  # q, k, v, o, gate, up, down in every decoder layer
    assert not any("visual" in n for n in quantised)
    assert backbone.summary()["linear4bit_modules"] == layers * 7
    visual = backbone.visual
    assert all(not p.requires_grad for p in visual.parameters())
    assert all(p.dtype.is_floating_point for p in visual.parameters())


def test_lora_targets_language_model_attention_only(tiny_checkpoint):
    backbone = load_backbone(_cfg(tiny_checkpoint, quantization="none"))
    trainable = backbone.trainable_parameters()
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(trainable) == set(lora) | {"compression.rows"}
    summary = backbone.summary()
    assert summary["adapted_modules"] == backbone.hf.config.text_config.num_hidden_layers * 4
    assert summary["trainable_params"] == sum(p.numel() for p in trainable.values())


def test_only_the_compression_rows_of_the_embedding_change(tiny_checkpoint, data_root):
    backbone = load_backbone(_cfg(tiny_checkpoint, quantization="nf4"))
    table = backbone.hf.get_input_embeddings().weight.detach().clone()
    rows = backbone.compression.rows.detach().clone()
    params = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2)
    backbone.train()
    lm_loss(backbone, _batch(backbone, data_root)).backward()
    optimizer.step()
    assert torch.equal(backbone.hf.get_input_embeddings().weight, table)
    assert not torch.equal(backbone.compression.rows, rows)
    assert (backbone.compression.rows - rows).abs().amax(dim=1).gt(0).all()  # every one of the K rows moved


def test_adapters_and_rows_save_and_reload_to_identical_outputs(tiny_checkpoint, data_root, tmp_path):
    cfg = _cfg(tiny_checkpoint, quantization="nf4")
    backbone = load_backbone(cfg, train_adapter="stage1")
    with torch.no_grad():  # make the adapter non-trivial (LoRA B starts at zero)
        for name, param in backbone.trainable_parameters().items():
            param.add_(torch.randn_like(param) * 0.05)
    batch = _batch(backbone, data_root)
    backbone.eval()
    with torch.no_grad():
        before = backbone.hidden_states(batch)
    backbone.save(tmp_path)
    reloaded = load_backbone(cfg, adapters=[("stage1", tmp_path / "adapters" / "stage1")], train_adapter=None,
                             compression_from=tmp_path, train_compression=False).eval()
    with torch.no_grad():
        after = reloaded.hidden_states(batch)
    assert torch.equal(before, after)
    assert reloaded.trainable_parameters() == {}


def test_missing_hub_checkpoint_offline_names_it_and_the_fix():
    with pytest.raises(CheckpointError, match=r"(?s)no-such-org/no-such-model.*--set model.backbone=/some/folder"):
        load_backbone(ModelConfig(backbone="no-such-org/no-such-model"))


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(ModelConfig(backbone=str(tmp_path / "nowhere")))
