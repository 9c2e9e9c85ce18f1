"""Random-weight Qwen2-VL checkpoints built offline, above all the real 2B's architecture from its public config.

Used by ``tests/test_full_size.py`` (the 2B's layout through the real loader), ``bench_real_recipe.py`` (the
recipe's speed and memory at full size) and ``tests/test_mask.py`` (a toy-sized random model). No hub
access: ``build_checkpoint`` writes a folder laid out like a real checkpoint (bf16 safetensors,
``config.json``, a small byte-level BPE tokenizer with Qwen's special tokens, the Qwen2-VL image processor)
that ``comalite.backbone.load_backbone`` loads like any other. The 2B's folder takes ~4.5 GB of disk and
~60 s to write on 2 CPU cores; ``scratch()`` gives a folder that is removed afterwards.
"""
from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Qwen2-VL-2B-Instruct's public config.json, in transformers 5 field names.
TEXT = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
            rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536, in_channels=3,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
N_PARAMETERS = 2_208_985_600      # the real checkpoint's count (lm_head tied to the embedding)
N_VISION_PARAMETERS = 665_271_296

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# The tokenizer's training text, and what the benchmark's dialogues, targets and queries say.
QA = (("How many objects are there in the picture?", "There are three objects."),
      ("What colour is the large circle on the left?", "The large circle is red."),
      ("Which shape is closest to the top right corner?", "A small blue triangle is closest to it."),
      ("Is the square above or below the circle?", "The square is below the circle."),
      ("Describe the background of the image.", "The background is plain grey with no texture."))
CAPTIONS = ("a photo of a red circle beside a blue square", "three shapes on a grey background",
            "a small triangle in the top right corner")
QUERY = "<|image_1|> Represent the given image for classification."  # an MMEB-style image query


def make_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (like Qwen's) with Qwen's special tokens, trained on this module's few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text for pair in QA for text in pair] + [*CAPTIONS, QUERY], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def make_config(text: dict = TEXT, vision: dict = VISION, tokenizer=None):
    """The ``Qwen2VLConfig`` of the given text and vision settings (default: the 2B's), with the special-token
    ids of ``tokenizer`` (default: ``make_tokenizer()``)."""
    from transformers import Qwen2VLConfig

    tokenizer = tokenizer or make_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(text, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_checkpoint(folder: str | Path, text: dict = TEXT, vision: dict = VISION, *, seed: int = 0) -> dict:
    """Write a random-weight Qwen2-VL checkpoint of the given text and vision config (default: the 2B's)
    into ``folder``, in bf16 safetensors with tokenizer and image processor; return its parameter counts.
    ``text["vocab_size"]`` must leave room for the tokenizer's ~400 ids plus the compression tokens."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    tokenizer = make_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration._from_config(make_config(text, vision, tokenizer),
                                                             dtype=torch.bfloat16)
    model.tie_weights()  # else lm_head may count twice
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "vision": sum(p.numel() for p in model.model.visual.parameters()),
              "tied": model.lm_head.weight is model.get_input_embeddings().weight}
    model.save_pretrained(str(folder))  # safetensors, bf16
    del model
    gc.collect()
    tokenizer.save_pretrained(str(folder))
    Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056).save_pretrained(str(folder))  # the 2B's budget
    return counts


@contextmanager
def scratch(prefix: str = "comalite-full-size-") -> Iterator[Path]:
    """A temporary folder, removed afterwards (a 2B checkpoint must not be left in pytest's tmp dirs)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def random_image(path: str | Path, size: int, seed: int = 0) -> str:
    """Write a ``size`` x ``size`` PNG of uniform random pixels to ``path``; return the path as a string."""
    from PIL import Image

    rng = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return str(path)
