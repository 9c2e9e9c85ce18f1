"""The compression mask: its matrix for a hand-built sequence, and what it hides from the answers.

The model-level checks run on a toy Qwen2-VL with random weights (``benchmarks/full_size.py`` builds it in
about a second): what the mask hides does not depend on the weights, and the GPU run needs no tiny-VLM build.
They run in fp32 on CPU (eager and sdpa), in bf16 with sdpa on CPU, and in bf16 with sdpa on CUDA when a GPU is
there (marked ``gpu``; skipped otherwise): ``pytest -m gpu tests/test_mask.py``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from comalite.mask import additive_mask, attention_allowed, turn_ids
from comalite.records import Dialogue, Turn
from comalite.sequence import ANSWER, COMPRESS, CONTEXT, PAD, QUESTION, collate, dialogue_example

C, K, Q, A = CONTEXT, COMPRESS, QUESTION, ANSWER
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# A toy of the 2B's layout: M-RoPE sections 1/4, 3/8, 3/8 of head_dim/2; ViT output = text hidden size.
TOY_TEXT = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
TOY_VISION = dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=128, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the bf16/sdpa GPU case runs where one is")
ON_CPU_FP32 = pytest.param("cpu", torch.float32, id="cpu-fp32")
ON_CPU_BF16 = pytest.param("cpu", torch.bfloat16, id="cpu-bf16")
ON_CUDA_BF16 = pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[pytest.mark.gpu, CUDA])


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """The largest difference allowed between two computations that should agree up to rounding, for values
    whose largest magnitude is ``scale``.

    fp32: 1e-5 of ``scale`` (another BLAS blocking or attention kernel moves the toy's values by ~4e-7 of it).
    bf16: 2**-5 of ``scale``, i.e. 4 units in the last place at that magnitude (bf16 keeps 8 significant bits:
    one ulp is 2**-7 of the top binade). Another padded length or another attention kernel re-rounds every
    operation of every layer; measured on CPU the toy then moves by 1 ulp (padding, eager vs sdpa); GPU kernels
    (flash / memory-efficient attention, cuBLAS) round in other orders, hence the margin. What these tests
    guard against is much larger: a leak or a padding bug moves values by tens of percent (the image seen
    through the compression tokens moves the toy's QA logits by ~25% of the largest).
    """
    return (2**-5 if dtype == torch.bfloat16 else 1e-5) * scale


@pytest.fixture(scope="module")
def random_vlm(tmp_path_factory) -> Path:
    """A toy Qwen2-VL checkpoint with random weights (seeded), built once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        full_size = importlib.import_module("full_size")
    folder = tmp_path_factory.mktemp("random-vlm")
    full_size.build_checkpoint(folder, TOY_TEXT, TOY_VISION)
    return folder


def _load(folder: Path, device: str, dtype: torch.dtype, attn: str = "sdpa"):
    from comalite.backbone import load_backbone
    from comalite.config import ModelConfig

    cfg = ModelConfig(backbone=str(folder), quantization="none", n_compress=4, attn_implementation=attn,
                      device=device, dtype={torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype],
                      gradient_checkpointing=False, max_pixels=12544, min_pixels=3136)
    return load_backbone(cfg, train_adapter=None).eval()


def _images(folder: Path) -> list[str]:
    """Two 112x112 noise images that differ only in a red vs a blue square."""
    torch.manual_seed(0)
    paths = []
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        pixels = (torch.rand(112, 112, 3) * 255).to(torch.uint8).numpy()
        pixels[30:80, 30:80] = colour
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return [str(p) for p in paths]


def _dialogue(backbone, image: str, n_turns: int = 2):
    turns = (Turn("What colour is the square?", "red"), Turn("How many?", "one"),
             Turn("Describe the background of the image.", "grey"))[:n_turns]
    return dialogue_example(backbone.processor, Dialogue(turns=turns, image=image), prompt="Summarize above image.",
                            text_prompt="")


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


def test_separate_turns_hide_each_turn_from_the_others():
    # C K Q A Q A A PAD: two turns; each sees the context, the compression token and itself only.
    roles = torch.tensor([[C, K, Q, A, Q, A, A, PAD]])
    assert turn_ids(roles).tolist() == [[0, 0, 1, 1, 2, 2, 2, 0]]
    got = attention_allowed(roles, (roles != PAD).long(), compression_mask=False, separate_turns=True).int()[0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],   # turn 1's question
        [1, 1, 1, 1, 0, 0, 0, 0],   # turn 1's answer
        [1, 1, 0, 0, 1, 0, 0, 0],   # turn 2's question: not turn 1
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],   # padding: its diagonal only
    ])
    assert torch.equal(got, expected)
    with_compression = attention_allowed(roles, (roles != PAD).long(), separate_turns=True).int()[0]
    expected[2:7, 0] = 0  # the compression mask also hides the context from every turn
    assert torch.equal(with_compression, expected)


def test_a_separate_turn_does_not_depend_on_the_turns_before_it(random_vlm, tmp_path):
    """Packed turns: the last turn's logits are bitwise the same whatever the earlier turns say, and change
    when the earlier turns may be read (plain causal)."""
    backbone = _load(random_vlm, "cpu", torch.float32)
    image = _images(tmp_path)[0]
    last = Turn("Describe the background of the image.", "grey")
    firsts = [(Turn("What colour is the square?", "red"), Turn("How many?", "one")),
              (Turn("What colour is the square?", "one"), Turn("How many?", "red"))]  # same tokens, swapped
    examples = [dialogue_example(backbone.processor, Dialogue(turns=(*first, last), image=image),
                                 prompt="Summarize above image.", text_prompt="") for first in firsts]
    assert len(examples[0].input_ids) == len(examples[1].input_ids)

    def last_turn_logits(example, separate):
        batch = collate([example], backbone.processor.tokenizer.pad_token_id)
        allowed = attention_allowed(batch["roles"], batch["attention_mask"], compression_mask=False,
                                    separate_turns=separate)
        with torch.no_grad():
            hidden = backbone.hidden_states(batch, allowed)
        return backbone.lm_head(hidden[0, turn_ids(batch["roles"])[0] == 3]).float()

    separate = [last_turn_logits(ex, True) for ex in examples]
    causal = [last_turn_logits(ex, False) for ex in examples]
    assert torch.equal(separate[0], separate[1])
    assert (causal[0] - causal[1]).abs().max() > 4 * tolerance(torch.float32, float(causal[0].abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_mask_is_float_zero_or_dtype_min(dtype):
    allowed = torch.tensor([[[True, False], [True, True]]])
    mask = additive_mask(allowed, dtype)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == dtype
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(dtype).min


def _qa_logits(backbone, example, cut_compression: bool, mask_on: bool):
    batch = collate([example], backbone.processor.tokenizer.pad_token_id)
    allowed = attention_allowed(batch["roles"], batch["attention_mask"], compression_mask=mask_on)
    if cut_compression:  # the test's extra cut: compression tokens may not see the image either
        roles = batch["roles"]
        allowed &= ~((roles == COMPRESS)[:, :, None] & (roles == CONTEXT)[:, None, :])
    hidden = backbone.hidden_states(batch, allowed)
    qa = ((batch["roles"] == QUESTION) | (batch["roles"] == ANSWER))[0]
    return backbone.lm_head(hidden[0, qa]).float()


@pytest.mark.parametrize("device,dtype,attn", [
    pytest.param("cpu", torch.float32, "eager", id="cpu-fp32-eager"),
    pytest.param("cpu", torch.float32, "sdpa", id="cpu-fp32-sdpa"),
    pytest.param("cpu", torch.bfloat16, "sdpa", id="cpu-bf16-sdpa"),
    pytest.param("cuda", torch.bfloat16, "sdpa", id="cuda-bf16-sdpa", marks=[pytest.mark.gpu, CUDA]),
])
def test_answers_see_the_image_only_through_the_compression_tokens(random_vlm, tmp_path, device, dtype, attn):
    backbone = _load(random_vlm, device, dtype, attn)
    examples = [_dialogue(backbone, image) for image in _images(tmp_path)]
    assert examples[0].input_ids == examples[1].input_ids  # same layout, only the pixels differ

    with torch.no_grad():
        cut = [_qa_logits(backbone, ex, cut_compression=True, mask_on=True) for ex in examples]
        open_ = [_qa_logits(backbone, ex, cut_compression=False, mask_on=True) for ex in examples]
        no_mask = [_qa_logits(backbone, ex, cut_compression=True, mask_on=False) for ex in examples]
    tol = tolerance(dtype, float(cut[0].abs().max()))
    if device == "cpu":
        assert torch.equal(cut[0], cut[1]), "with every path to the image cut, the QA logits must not change at all"
    else:
        # Blocked keys get weight exactly 0, so bitwise equality is expected here too, but CUDA does not
        # promise bitwise-reproducible kernels from call to call: rounding-level differences are allowed.
        assert (cut[0] - cut[1]).abs().max() <= tol, "with every path to the image cut, the QA logits must not change"
    assert (open_[0] - open_[1]).abs().max() > 4 * tol, "through the compression tokens the image must matter"
    assert (no_mask[0] - no_mask[1]).abs().max() > 4 * tol, "without the mask the QA part sees the image directly"


@pytest.mark.parametrize("device,dtype", [ON_CPU_FP32, ON_CPU_BF16, ON_CUDA_BF16])
def test_eager_and_sdpa_agree_under_the_compression_mask(random_vlm, tmp_path, device, dtype):
    images = _images(tmp_path)
    outs = []
    for attn in ("eager", "sdpa"):
        backbone = _load(random_vlm, device, dtype, attn)
        examples = [_dialogue(backbone, image, n_turns) for image, n_turns in zip(images, (1, 3))]
        batch = collate(examples, backbone.processor.tokenizer.pad_token_id, pad_side="left")
        with torch.no_grad():
            hidden = backbone.hidden_states(batch, attention_allowed(batch["roles"], batch["attention_mask"]))
        outs.append(hidden[batch["roles"] != PAD].float())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=tolerance(dtype, float(outs[0].abs().max())))


@pytest.mark.parametrize("device,dtype", [ON_CPU_FP32, ON_CPU_BF16, ON_CUDA_BF16])
def test_padding_does_not_change_a_sequence(random_vlm, tmp_path, device, dtype):
    """A dialogue alone, and padded next to a longer one (left or right), gets the same hidden states."""
    backbone = _load(random_vlm, device, dtype)
    short, long = (_dialogue(backbone, image, n_turns) for image, n_turns in zip(_images(tmp_path), (1, 3)))
    pad_id = backbone.processor.tokenizer.pad_token_id
    with torch.no_grad():
        alone_batch = collate([short], pad_id)
        alone = backbone.hidden_states(alone_batch, attention_allowed(alone_batch["roles"],
                                                                      alone_batch["attention_mask"]))[0].float()
        tol = tolerance(dtype, float(alone.abs().max()))
        for side in ("left", "right"):
            batch = collate([short, long], pad_id, pad_side=side)
            assert batch["input_ids"].shape[1] > len(short.input_ids)  # it really is padded
            hidden = backbone.hidden_states(batch, attention_allowed(batch["roles"], batch["attention_mask"]))
            mine = hidden[0][batch["attention_mask"][0].bool().to(hidden.device)].float()
            torch.testing.assert_close(mine, alone, rtol=0, atol=tol, msg=f"{side} padding changed the sequence")
