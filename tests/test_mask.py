"""The compression mask: its matrix for a hand-built sequence, and what it hides from the answers."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from comalite.mask import additive_mask, attention_allowed
from comalite.sequence import ANSWER, COMPRESS, CONTEXT, PAD, QUESTION

C, K, Q, A = CONTEXT, COMPRESS, QUESTION, ANSWER


def test_mask_matrix_for_hand_built_sequences_with_padding_on_both_sides():
    # Row 0 right-padded: C C K Q A PAD ; row 1 left-padded: PAD C K Q A A
    roles = torch.tensor([[C, C, K, Q, A, PAD], [PAD, C, K, Q, A, A]])
    pad = (roles != PAD).long()
    got = attention_allowed(roles, pad).int()
    expected_right = torch.tensor([
        [1, 0, 0, 0, 0, 0],   # context sees itself
        [1, 1, 0, 0, 0, 0],   # context, causal
        [1, 1, 1, 0, 0, 0],   # compression token sees image + prompt
        [0, 0, 1, 1, 0, 0],   # question: compression tokens only, never the context
        [0, 0, 1, 1, 1, 0],   # answer: compression + question + itself
        [0, 0, 0, 0, 0, 1],   # padding row: only its diagonal (never a fully masked row)
    ])
    expected_left = torch.tensor([
        [1, 0, 0, 0, 0, 0],   # padding row: diagonal only
        [0, 1, 0, 0, 0, 0],   # context ignores the left padding
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(got[0], expected_right)
    assert torch.equal(got[1], expected_left)


def test_mask_off_is_plain_causal_with_padding():
    roles = torch.tensor([[C, C, K, Q, A, PAD]])
    got = attention_allowed(roles, (roles != PAD).long(), compression_mask=False).int()[0]
    expected = torch.tril(torch.ones(6, 6, dtype=torch.int))
    expected[5, :5] = 0   # the padding key is never attended, its own row keeps the diagonal
    expected[:5, 5] = 0
    assert torch.equal(got, expected)


def test_additive_mask_is_float_zero_or_dtype_min():
    allowed = torch.tensor([[[True, False], [True, True]]])
    mask = additive_mask(allowed, torch.float32)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.float32
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min


def _qa_logits(backbone, example, cut_compression: bool, mask_on: bool):
    from comalite.sequence import collate

    batch = collate([example], backbone.processor.tokenizer.pad_token_id)
    allowed = attention_allowed(batch["roles"], batch["attention_mask"], compression_mask=mask_on)
    if cut_compression:  # the test's extra cut: compression tokens may not see the image either
        roles = batch["roles"]
        allowed &= ~((roles == COMPRESS)[:, :, None] & (roles == CONTEXT)[:, None, :])
    hidden = backbone.hidden_states(batch, allowed)
    qa = ((batch["roles"] == QUESTION) | (batch["roles"] == ANSWER))[0]
    return backbone.lm_head(hidden[0, qa])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_answers_see_the_image_only_through_the_compression_tokens(tiny_checkpoint, tmp_path, attn):
    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig
    from comalite.records import Dialogue, Turn
    from comalite.sequence import dialogue_example

    cfg = ModelConfig(backbone=str(tiny_checkpoint), quantization="none", n_compress=4, attn_implementation=attn,
                      gradient_checkpointing=False, max_pixels=12544, min_pixels=3136)
    backbone = load_backbone(cfg, train_adapter=None).eval()
    torch.manual_seed(0)
    examples = []
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        pixels = (torch.rand(112, 112, 3) * 255).to(torch.uint8).numpy()
        pixels[30:80, 30:80] = colour
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        dialogue = Dialogue(turns=(Turn("What colour is the square?", "red"), Turn("How many?", "one")), image=str(path))
        examples.append(dialogue_example(backbone.processor, dialogue, prompt="Summarize above image.", text_prompt=""))
    assert examples[0].input_ids == examples[1].input_ids  # same layout, only the pixels differ

    with torch.no_grad():
        cut = [_qa_logits(backbone, ex, cut_compression=True, mask_on=True) for ex in examples]
        open_ = [_qa_logits(backbone, ex, cut_compression=False, mask_on=True) for ex in examples]
        no_mask = [_qa_logits(backbone, ex, cut_compression=True, mask_on=False) for ex in examples]
    assert torch.equal(cut[0], cut[1]), "with every path to the image cut, the QA logits must not change at all"
    assert (open_[0] - open_[1]).abs().max() > 1e-4, "through the compression tokens the image must matter"
    assert (no_mask[0] - no_mask[1]).abs().max() > 1e-4, "without the mask the QA part sees the image directly"


def test_eager_and_sdpa_agree_under_the_compression_mask(tiny_checkpoint, tiny_config):
    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig
    from comalite.datasets import stage1_dialogues
    from comalite.sequence import collate, dialogue_example

    dialogues = stage1_dialogues(tiny_config())[:3]
    outs = []
    for attn in ("eager", "sdpa"):
        cfg = ModelConfig(backbone=str(tiny_checkpoint), quantization="none", n_compress=4, attn_implementation=attn,
                          gradient_checkpointing=False, max_pixels=12544, min_pixels=3136)
        backbone = load_backbone(cfg, train_adapter=None).eval()
        examples = [dialogue_example(backbone.processor, d, prompt="Summarize.", text_prompt="") for d in dialogues]
        batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
        with torch.no_grad():
            hidden = backbone.hidden_states(batch, attention_allowed(batch["roles"], batch["attention_mask"]))
        outs.append(hidden[batch["roles"] != PAD])
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
