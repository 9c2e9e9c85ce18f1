"""The embedding function on the tiny Qwen2-VL: padding-invariance, pooling by hand, no LM head, the model API.

One batch mixes the three input kinds (image only, text only, image + text with the placeholder at the
start or in the middle) and images of different sizes, so the rows have different lengths and padding
really happens on either side.
"""
from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bitsandbytes.functional import has_avx512bf16
from PIL import Image

from comalite.backbone import load_backbone
from comalite.config import ModelConfig
from comalite.embedding import EmbeddingModel, encode, pool
from comalite.records import EmbedInput
from comalite.sequence import COMPRESS, collate, embed_example

K = 4


def _load(checkpoint, quantization):
    cfg = ModelConfig(backbone=str(checkpoint), n_compress=K, max_pixels=12544, min_pixels=3136,
                      quantization=quantization)
    return load_backbone(cfg, train_adapter=None).eval()


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint):
    return _load(tiny_checkpoint, "none")


@pytest.fixture(scope="module")
def inputs(data_root, tmp_path_factory) -> list[EmbedInput]:
    full = sorted(p for p in (data_root / "images").rglob("*.png") if "_" not in p.stem)
    assert len(full) >= 4
    # A 168 x 56 strip of a ShapesWorld scene: another image grid (4 x 12 patches), so fewer image tokens.
    strip = tmp_path_factory.mktemp("images") / "strip.png"
    with Image.open(full[3]) as scene:
        scene.convert("RGB").resize((168, 56)).save(strip)
    return [
        EmbedInput(text="", image=str(full[0])),                                           # image only
        EmbedInput(text="a small red square at the top left and a large blue circle"),     # text only
        EmbedInput(text="<|image_1|>\nRepresent the given image.", image=str(full[1])),    # image + text
        EmbedInput(text="two"),                                                            # short text
        EmbedInput(text="Find the object <|image_1|> in the scene", image=str(strip)),      # placeholder inside
        EmbedInput(text="", image=str(full[2])),                                           # image only, again
    ]


def _batch(backbone, items, pad_side):
    examples = [embed_example(backbone.processor, item) for item in items]
    return collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side=pad_side)


def _alone(backbone, items, pooling="mean"):
    with torch.no_grad():
        return torch.cat([encode(backbone, [item], pooling) for item in items])


def test_the_batch_really_is_mixed_and_padded(backbone, inputs):
    batch = _batch(backbone, inputs, "left")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 4                      # padding on most rows
    has_image = (batch["input_ids"] == backbone.processor.image_pad_id).any(1)
    assert has_image.tolist() == [True, False, True, False, True, True]
    grids = {tuple(g.tolist()) for g in batch["image_grid_thw"]}
    assert len(grids) >= 2                                      # images of different sizes in one batch


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_same_vector_alone_or_in_a_left_or_right_padded_batch(backbone, inputs, pooling):
    alone = _alone(backbone, inputs, pooling)
    with torch.no_grad():
        left = encode(backbone, inputs, pooling)               # encode pads on the left
        right_batch = _batch(backbone, inputs, "right")
        right = pool(backbone.hidden_states(right_batch), right_batch["roles"], pooling)
    print(f"\n[fp32 {pooling}] max |alone - batch|: left {float((left - alone).abs().max()):.2g}, "
          f"right {float((right - alone).abs().max()):.2g}")
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    # The tolerance is meaningful: any two different inputs are 100x further apart than it.
    gaps = (alone[:, None] - alone[None]).abs().amax(-1)
    assert gaps[~torch.eye(len(inputs), dtype=torch.bool)].min() > 1e-3


def test_same_vector_alone_or_in_a_batch_nf4_on_any_cpu(tiny_checkpoint, inputs):
    """On AVX512-BF16 CPUs bitsandbytes would repack each 4-bit weight at its first eval-mode call and
    multiply in bf16 from then on (~1e-3 off, batch-dependent); ``keep_4bit_in_fp32`` keeps every CPU on the
    fp32 path, so an nf4 embedding holds to fp32's tolerance whatever shares its batch."""
    backbone = _load(tiny_checkpoint, "nf4")
    alone = _alone(backbone, inputs)
    with torch.no_grad():
        left = encode(backbone, inputs)
        mixed = encode(backbone, [inputs[4], inputs[0], inputs[1]])   # other neighbours, another order
        right_batch = _batch(backbone, inputs, "right")
        right = pool(backbone.hidden_states(right_batch), right_batch["roles"])
    print(f"\n[nf4 mean, bitsandbytes sees avx512_bf16: {has_avx512bf16()}] max |alone - batch|: "
          f"left {float((left - alone).abs().max()):.2g}, right {float((right - alone).abs().max()):.2g}")
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed, alone[[4, 0, 1]], atol=1e-5, rtol=0)
    layers = [m for m in backbone.hf.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not [m for m in layers if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_mean_pooling_by_hand(backbone, inputs, pad_side):
    batch = _batch(backbone, inputs, pad_side)
    with torch.no_grad():
        hidden = backbone.hidden_states(batch)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    compress_ids = torch.tensor(backbone.processor.compress_ids)
    expected = []
    for b in range(len(inputs)):
        real = mask[b].nonzero().squeeze(1)
        # Layout: the K compression tokens, in order, are the last K real tokens of every input.
        assert ids[b, real[-K:]].tolist() == compress_ids.tolist()
        where = torch.isin(ids[b], compress_ids).nonzero().squeeze(1)
        assert where.tolist() == real[-K:].tolist()
        mean = hidden[b, where].double().mean(0)
        expected.append(mean / mean.norm())
    expected = torch.stack(expected).float()
    pooled = pool(hidden, batch["roles"])
    assert pooled.dtype == torch.float32 and pooled.shape == (len(inputs), hidden.shape[-1])
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(len(inputs)), atol=1e-6, rtol=0)
    # The mean over K positions is not the last token's state (so "mean" and "last" are distinct).
    assert (pooled - pool(hidden, batch["roles"], "last")).abs().max() > 1e-3


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_last_pooling_takes_the_last_real_token(backbone, inputs, pad_side):
    batch = _batch(backbone, inputs, pad_side)
    with torch.no_grad():
        hidden = backbone.hidden_states(batch)
    lengths = batch["attention_mask"].sum(1)
    length = batch["input_ids"].shape[1]
    last = torch.full_like(lengths, length - 1) if pad_side == "left" else lengths - 1
    assert len(set(last.tolist())) == (1 if pad_side == "left" else len(set(lengths.tolist())))
    expected = F.normalize(hidden[torch.arange(len(inputs)), last], dim=-1)
    torch.testing.assert_close(pool(hidden, batch["roles"], "last"), expected, atol=1e-6, rtol=0)
    # ... which is the last compression token.
    assert (batch["input_ids"][torch.arange(len(inputs)), last] == backbone.processor.compress_ids[-1]).all()


def test_the_lm_head_is_never_computed(backbone, inputs):
    calls = []
    handle = backbone.lm_head.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    try:
        with torch.no_grad():
            encode(backbone, inputs)
            encode(backbone, inputs, "last")
        EmbeddingModel(backbone, "tiny", batch_size=4).embed(inputs)
        # The training path too: with grad, through the trainable compression rows.
        assert backbone.compression.rows.requires_grad
        encode(backbone, inputs[:3]).sum().backward()
        assert backbone.compression.rows.grad.abs().sum() > 0
        backbone.compression.rows.grad = None
        assert calls == []
        # Positive control: the hook does fire on an ordinary LM forward.
        batch = _batch(backbone, [inputs[1]], "left")
        with torch.no_grad():
            backbone.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert len(calls) == 1
    finally:
        handle.remove()


def test_embedding_model_returns_float32_unit_rows(backbone, inputs):
    model = EmbeddingModel(backbone, "tiny", batch_size=4)     # 6 inputs: a full chunk and a partial one
    out = model.embed(inputs)
    hidden_size = backbone.hf.get_input_embeddings().embedding_dim
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (len(inputs), hidden_size)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, _alone(backbone, inputs).numpy(), atol=1e-5, rtol=0)
    # "last" pooling is honoured and gives other vectors.
    last = EmbeddingModel(backbone, "tiny", pooling="last", batch_size=4).embed(inputs)
    np.testing.assert_allclose(last, _alone(backbone, inputs, "last").numpy(), atol=1e-5, rtol=0)
    assert np.abs(last - out).max() > 1e-3


def test_encode_texts_images_and_mixed_inputs(backbone, inputs):
    """``encode`` builds the EmbedInput each kind of item stands for, by the documented defaults."""
    model = EmbeddingModel(backbone, "tiny", batch_size=2)
    paths = [inputs[0].image, inputs[4].image, inputs[5].image]
    texts = [inputs[1].text, inputs[3].text, "a large green triangle"]
    instruction = "<|image_1|>\nRepresent the given image."
    out = model.encode(texts + [Path(p) for p in paths])
    expected = _alone(backbone, [EmbedInput(text=t) for t in texts]
                      + [EmbedInput(text=instruction, image=p) for p in paths]).numpy()
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # Mixed inputs: a pair and a dict get the placeholder in front, an EmbedInput is taken as it is.
    mixed = model.encode([("Count the objects", Path(paths[0])), {"image": paths[1]}, {"text": "two"},
                          EmbedInput(text="Find the object <|image_1|> here", image=paths[2])])
    expected = _alone(backbone, [EmbedInput("<|image_1|>\nCount the objects", paths[0]),
                                 EmbedInput("<|image_1|>", paths[1]), EmbedInput("two"),
                                 EmbedInput("Find the object <|image_1|> here", paths[2])]).numpy()
    np.testing.assert_allclose(mixed, expected, atol=1e-5, rtol=0)
    # An instruction goes before every bare text, and with every bare image (placeholder added).
    other = model.encode([Path(p) for p in paths], instruction="Count the objects")
    np.testing.assert_allclose(other, model.encode([("Count the objects", p) for p in paths]), atol=1e-5, rtol=0)
    assert np.abs(other - out[3:]).max() > 1e-3
    caption = "Find me an image that matches the given caption: "
    prefixed = model.encode(texts, instruction=caption)
    np.testing.assert_allclose(prefixed, model.encode([EmbedInput(caption + t) for t in texts]), atol=1e-5, rtol=0)
    assert np.abs(prefixed - out[:3]).max() > 1e-3
    assert model.encode([]).shape == (0, out.shape[1])


def test_the_default_image_instruction_is_the_one_stage_2_trained_image_targets_with():
    from comalite.embedding import IMAGE_INSTRUCTION
    from comalite.shapesworld.language import IMAGE_TARGET

    assert IMAGE_INSTRUCTION == IMAGE_TARGET


def test_a_pil_image_embeds_like_its_file_and_never_enters_the_vision_cache(tiny_checkpoint, inputs):
    cfg = ModelConfig(backbone=str(tiny_checkpoint), n_compress=K, max_pixels=12544, min_pixels=3136,
                      quantization="none", vision_cache_mb=8)
    backbone = load_backbone(cfg, train_adapter=None).eval()
    cache = backbone.processor.vision_cache
    cache.entries.clear()
    cache.used = 0
    model = EmbeddingModel(backbone, "tiny", batch_size=4)
    paths = [inputs[0].image, inputs[4].image]
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        pil = model.encode([a, ("Find the object <|image_1|> in the scene", b)])
    assert not cache.entries                                     # nothing keyed by a file that is not there
    from_files = model.encode([Path(paths[0]), ("Find the object <|image_1|> in the scene", paths[1])])
    assert len(cache.entries) == 2                               # ... while the files are cached
    np.testing.assert_allclose(pil, from_files, atol=1e-6, rtol=0)
    again = model.encode([Path(paths[0])])                       # served from the cache: the same vector
    np.testing.assert_allclose(again[0], from_files[0], atol=1e-6, rtol=0)
    # A different image in memory gives a different vector (the pixels are really read).
    with Image.open(paths[0]) as a:
        flipped = model.encode([a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert np.abs(flipped[0] - pil[0]).max() > 1e-3


def test_bad_items_are_named_by_their_index(backbone, inputs, tmp_path):
    from comalite.errors import ComaliteError, InputError

    model = EmbeddingModel(backbone, "tiny", batch_size=4)
    good = Path(inputs[0].image)
    missing = tmp_path / "nowhere.png"
    cases = [
        ([good, missing], r"^item 1: image file .*nowhere\.png not found"),
        (["a text", 3], r"^item 1: cannot embed a int\. Give a text \(str\)"),
        ([("text", missing)], r"^item 0: image file .*nowhere\.png not found"),
        ([{"text": "t", "picture": good}], r"^item 0: cannot embed a dict"),
        ([(3, good)], r"^item 0: the text of a \(text, image\) input must be a str"),
        ([EmbedInput("x <|image_1|>", str(missing))], r"^item 0: image file .*nowhere\.png not found"),
        (["ok", str(good)], r"^item 1 is the text .* which names an image file: pass pathlib\.Path"),
        (good, r"^encode takes a list of items, not one"),
        (("a caption", good), r"^encode takes a list of items, not one tuple"),   # a bare pair, not two items
        (["a text", "<|image_1|> where is it?"], r"^item 1: its text holds <\|image_1\|> 1 time\(s\) for no image"),
        ([("<|image_1|> and <|image_1|>", good)], r"^item 0: its text holds <\|image_1\|> 2 time\(s\) for one image"),
    ]
    for items, message in cases:
        with pytest.raises(InputError, match=message) as caught:
            model.encode(items)
        assert isinstance(caught.value, ComaliteError)
    with pytest.raises(InputError, match=r"^item 0 is a text, but the instruction '<\|image_1\|> Represent it\.'"):
        model.encode(["a text"], instruction="<|image_1|> Represent it.")


def test_pool_refuses_inputs_without_compression_tokens(backbone, inputs):
    plain = [embed_example(backbone.processor, item, with_compression=False) for item in inputs[:2]]
    assert not any(COMPRESS in ex.roles for ex in plain)
    full = embed_example(backbone.processor, inputs[2])
    pad = backbone.processor.tokenizer.pad_token_id
    for examples in (plain, [full, plain[0]]):                  # all missing, or just one row of the batch
        batch = collate(examples, pad, pad_side="left")
        hidden = torch.zeros(*batch["input_ids"].shape, 8)
        with pytest.raises(ValueError, match="compression"):
            pool(hidden, batch["roles"])
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 5, 8), _batch(backbone, [inputs[3]], "left")["roles"], "max")
