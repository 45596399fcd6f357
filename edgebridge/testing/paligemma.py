"""A seeded tiny PaliGemma 2 (``PaliGemmaForConditionalGeneration``): SigLIP tower, one linear projection,
a gemma2 text model; Gemma's SentencePiece tokenizer with PaliGemma's ``<loc....>``/``<seg...>`` tokens
(``PaliGemmaProcessor`` adds them), offline files."""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.llava import SIZES, llm_config
from edgebridge.testing.spm_tokenizer import hf_spm_tokenizer
from edgebridge.testing.weights import save_seeded

IMAGE = "<image>"
IMAGE_SIZE, PATCH = 64, 8  # 64 image tokens, all of them before the prompt


def build_paligemma(seed: int = 0):
    """``(model, processor, tokenizer)``, nothing written."""
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    tokenizer = hf_spm_tokenizer([IMAGE], chat_template=None)
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds loc/seg tokens
    vocab_size = len(tokenizer) + (-len(tokenizer)) % 16
    text = llm_config("gemma2", SIZES["tiny"], vocab_size, tokenizer)
    text.final_logit_softcapping = None  # PaliGemma's own lm_head applies none (transformers 4.57)
    # transformers' PaliGemma hands its text model a ready 4-D mask, which the sliding-window layers use
    # as is (no window); llama.cpp keeps the window. Equal while prompts fit in it (4096 in PaliGemma 2)
    text.sliding_window = 512
    text.attn_logit_softcapping = 50.0  # the real value (the tiny LLaVA's 3.0 makes this model repeat one token)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="gelu_pytorch_tanh",
                                projection_dim=text.hidden_size, vision_use_head=False)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
                             projection_dim=text.hidden_size, hidden_size=text.hidden_size)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    return model, processor, tokenizer


def make_paligemma(out_dir: Path, seed: int = 0) -> Path:
    model, processor, tokenizer = build_paligemma(seed)
    return save_seeded(model, processor, tokenizer, out_dir, seed, stop_token="<eos>")
