"""The tiny preset's backbone: a real Qwen2-VL at toy size, built in code (``build``) with a pre-trained ViT
(``vision``). Only ``comalite.pipeline`` and the ``build-tiny`` command import it: loading never builds."""
